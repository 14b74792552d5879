"""The four primitives: `sample`, `observe`, `factor`, `condition`.

Each primitive builds a plain message and hands it to the handler stack (`ppl.handlers`). With
no handler installed it simply samples from the distribution and ignores weights: running a
program directly is ancestral simulation.

Inside inference, compiled programs never call these functions: the compiler turns each call
into a suspension that the scheduler interprets (`ppl.inference.engine`). Both paths parse
arguments with `parse_args` so that they agree on what a call means.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# The handler stack for direct runs, innermost last.
_STACK: list[Any] = []

# Set by the inference engine while it executes compiled code. A primitive reached then was
# called from a plain function that a program called, which the compiler could not see.
_IN_COMPILED: list[bool] = [False]


class Message(dict):
    """A primitive call on its way through the handler stack.

    Keys: `type` ("sample", "observe", "factor"), `name` (address or None), `fn` (the
    distribution), `value`, `log_weight` (for observe/factor), `stop`, `infer` (handler notes).
    """


def parse_args(kind: str, args: tuple, kwargs: dict) -> tuple[str | None, Any, Any]:
    """Normalise a primitive call into (name, distribution-or-weight, value).

    sample(dist) | sample(name, dist)              -> (name, dist, None)
    observe(dist, value) | observe(name, dist, value) -> (name, dist, value)
    factor(log_w) | factor(name, log_w)            -> (name, log_w, None)
    condition(ok) | condition(name, ok)            -> (name, ok, None)
    """
    if kwargs:
        raise TypeError(f"{kind}() takes positional arguments only, got {sorted(kwargs)}")
    n = len(args)
    if kind == "observe":
        if n == 2:
            return None, args[0], args[1]
        if n == 3 and isinstance(args[0], str):
            return args[0], args[1], args[2]
        raise TypeError("observe() takes (dist, value) or (name, dist, value)")
    if n == 1:
        return None, args[0], None
    if n == 2 and isinstance(args[0], str):
        return args[0], args[1], None
    usage = {"sample": "(dist) or (name, dist)", "factor": "(log_weight) or (name, log_weight)"}
    raise TypeError(f"{kind}() takes {usage.get(kind, '(ok) or (name, ok)')}")


def check_distribution(kind: str, dist: Any) -> None:
    if not (hasattr(dist, "sample") and hasattr(dist, "log_prob")):
        raise TypeError(
            f"{kind}() needs a distribution (an object with sample and log_prob), "
            f"got {type(dist).__name__}: {dist!r:.80}"
        )


def as_log_weight(value: Any, where: str) -> float:
    """A float log-weight; NaN is an error, never a silent weight."""
    try:
        w = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"{where}: the log-weight must be a number, got {type(value).__name__}"
        ) from None
    if math.isnan(w):
        raise ValueError(f"{where}: the log-weight is NaN")
    if w == math.inf:
        raise ValueError(f"{where}: the log-weight is +inf")
    return w


def _apply(msg: Message) -> Any:
    if _IN_COMPILED[0]:
        raise RuntimeError(
            f"{msg['type']}() was called from a plain function inside a program under inference. "
            "Decorate that function with @ppl.program so the compiler can suspend it."
        )
    for handler in reversed(_STACK):
        handler.process_message(msg)
        if msg["stop"]:
            break
    if msg["value"] is None and msg["type"] == "sample":
        rng = msg["infer"].get("rng")
        msg["value"] = msg["fn"].sample(rng if rng is not None else np.random.default_rng())
    for handler in _STACK:
        handler.postprocess_message(msg)
    return msg["value"]


def sample(*args: Any, **kwargs: Any) -> Any:
    """Draw a value from a distribution: `sample(dist)` or `sample("name", dist)`."""
    name, dist, _ = parse_args("sample", args, kwargs)
    check_distribution("sample", dist)
    return _apply(
        Message(type="sample", name=name, fn=dist, value=None, log_weight=0.0, stop=False, infer={})
    )


def observe(*args: Any, **kwargs: Any) -> Any:
    """Condition on `value` having been drawn from `dist`: the weight gains log p(value)."""
    name, dist, value = parse_args("observe", args, kwargs)
    check_distribution("observe", dist)
    msg = Message(
        type="observe", name=name, fn=dist, value=value, log_weight=0.0, stop=False, infer={}
    )
    return _apply(msg)


def factor(*args: Any, **kwargs: Any) -> None:
    """Add a log-weight to the current execution: `factor(log_w)` or `factor("name", log_w)`."""
    name, log_w, _ = parse_args("factor", args, kwargs)
    w = as_log_weight(log_w, "factor()")
    _apply(
        Message(type="factor", name=name, fn=None, value=None, log_weight=w, stop=False, infer={})
    )


def condition(*args: Any, **kwargs: Any) -> None:
    """Keep only executions where `ok` holds: `factor(0)` if true, `factor(-inf)` if false."""
    name, ok, _ = parse_args("condition", args, kwargs)
    _apply(
        Message(
            type="factor",
            name=name,
            fn=None,
            value=None,
            log_weight=0.0 if ok else -math.inf,
            stop=False,
            infer={"condition": True},
        )
    )


PRIMITIVES = {sample: "sample", observe: "observe", factor: "factor", condition: "condition"}
