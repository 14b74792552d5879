"""The text of a particle's token choices, as the views of a run show it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ppl.models.base import Token

if TYPE_CHECKING:
    from ppl.inference.engine import _Trace


def token_text(trace: _Trace | None, cache: dict[int, str]) -> str:
    """The text of a trace's token choices (other choices shown as [value]), memoised by node."""
    if trace is None:
        return ""
    key = id(trace)
    hit = cache.get(key)
    if hit is not None and hit[0] is trace:
        return hit[1]
    value = trace.choice.value
    if isinstance(value, Token):
        piece = "" if value.is_eos else value.text
    else:
        piece = f"[{value!r}]"
    text = token_text(trace.prev, cache) + piece
    cache[key] = (trace, text)  # type: ignore[assignment]
    return text
