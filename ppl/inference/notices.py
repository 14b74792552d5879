"""`InferenceWarning`, and warnings that point at the user's line rather than at ppl's own."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import numpy as np

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


class InferenceWarning(RuntimeWarning):
    """A run finished but something about it needs the user's attention."""


def warn(message: str, category: type[Warning] = InferenceWarning) -> None:
    """`warnings.warn` attributed to the first caller outside the ppl package.

    Entry points reach their warnings through different depths of ppl's own calls (`smc` ->
    `_run` -> ..., `ppl.map` -> a greenlet -> `smc` ...): counting frames would point some of
    them into ppl; walking out of the package points every one at the line that called ppl.
    """
    level = 2  # 1 would be this function, 2 its caller
    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


# bytes a particle holds after its first step, before any text or model state (measured on a
# small program: about 0.9 KB); a floor for what a run of n particles needs
PARTICLE_BYTES = 1024


def count(name: str, n: Any, minimum: int = 1) -> int:
    """`n` as an int, checked: an integer (not a bool) of at least `minimum`."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {n!r} ({type(n).__name__})")
    if n < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {n!r}")
    return int(n)


def fits(what: str, n: int, each: int = PARTICLE_BYTES) -> None:
    """Refuse at once a run whose `n` particles (or kept states) cannot fit in this machine's
    memory even at `each` bytes apiece, rather than start one that can never finish."""
    total = _physical_memory()
    if total is not None and n * each > total:
        raise ValueError(
            f"{what} would need at least {_bytes(n * each)} of memory (about {_bytes(each)} "
            f"each before any text or model state), more than the {_bytes(total)} this machine "
            "has: use fewer"
        )


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PB"
