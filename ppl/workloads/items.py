"""One item of a mapped run: the call it is, and what it becomes when that call raises.

`ppl.workloads.run` (`map`, `imap`), `ppl.workloads.checkpoint` and `ppl.workloads.cluster`
(Ray workers) all read these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ppl.compiler import Program
    from ppl.inference.posterior import Posterior


@dataclass
class ItemError:
    """An item whose run raised: what it was, and the traceback of the run."""

    index: int
    error: str  # "ValueError: the message"
    traceback: str
    input_hash: str = ""

    def __str__(self) -> str:
        return f"item {self.index}: {self.error}"


def _item_job(
    method: Callable[..., Posterior],
    program: Program,
    args: tuple,
    kwargs: dict[str, Any],
    seed: int | None,
    index: int,
    options: dict[str, Any],
) -> Callable[[], Posterior]:
    """The call that item `index` is: the same as calling it by hand with seed `(seed, index)`."""
    item_seed = (
        None if seed is None else (*seed, index) if isinstance(seed, tuple) else (seed, index)
    )

    def job() -> Posterior:
        return method(program, *args, seed=item_seed, **options, **kwargs)

    return job
