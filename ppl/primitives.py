"""The four primitives: `sample`, `observe`, `factor`, `condition`.

Each primitive builds a plain message and hands it to the handler stack (`ppl.handlers`). With
no handler installed it simply samples from the distribution and ignores weights: running a
program directly is ancestral simulation.

Inside inference, compiled programs never call these functions: the compiler turns each call
into a suspension that the scheduler interprets (`ppl.inference.engine`). Both paths parse
arguments with `parse_args` and address choices with `ppl.trace.address_of`, so that they agree
on what a call means and where its choice lives.
"""

from __future__ import annotations

import linecache
import math
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from ppl.distributions import as_distribution, check_value, proposed
from ppl.handlers import condition as _condition_handler
from ppl.next_token import NextToken
from ppl.runtime import _IN_COMPILED, _SCOPE, _STACK, Message, as_log_weight
from ppl.trace import Site, address_of

_COMPREHENSIONS = frozenset({"<listcomp>", "<setcomp>", "<dictcomp>", "<genexpr>"})


def direct_address(name: str | None, depth: int) -> tuple[str, Site]:
    """The address and statement of a site reached directly, `depth` frames above this call.

    Counts the site on its line in the innermost program call, exactly as the engine does for
    compiled code, so both give a choice the same address.
    """
    frame = sys._getframe(depth + 1)
    line = frame.f_lineno
    code = frame.f_code
    function = code.co_name
    while function in _COMPREHENSIONS and frame.f_back is not None:
        # a comprehension's own frame (before Python 3.12): its function is the one around it,
        # as for the compiled comprehension
        frame = frame.f_back
        function = frame.f_code.co_name
    site = Site(code.co_filename, line, function, linecache.getline(code.co_filename, line).strip())
    scope = _SCOPE.get()
    if scope is None:  # outside any program or handler: nothing to count against
        return address_of("", name, function, line, 0), site
    k = scope.counts.get(line, 0)
    scope.counts[line] = k + 1
    return address_of(scope.prefix, name, function, line, k), site


def caller_location(depth: int) -> str:
    """`file:line` of the statement `depth` frames above this call."""
    frame = sys._getframe(depth + 1)
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _message(
    kind: str, name: str | None, where: tuple[str, Site], fn: Any, value: Any, w: Any
) -> Message:
    return Message(
        type=kind,
        name=name,
        address=where[0],
        site=where[1],
        fn=fn,
        value=value,
        log_weight=w,
        scale=1.0,
        observed=kind == "observe",
        stop=False,
        infer={},
    )


def parse_args(kind: str, args: tuple, kwargs: dict) -> tuple[str | None, Any, Any]:
    """Normalise a primitive call into (name, distribution-or-weight, value).

    sample(dist) | sample(name, dist)                 -> (name, dist, None)
    sample(dist, proposal=q) | sample(name, dist, proposal=q)
                                                      -> (name, proposed(dist, q), None)
    observe(dist, value) | observe(name, dist, value) -> (name, dist, value)
    factor(log_w) | factor(name, log_w)               -> (name, log_w, None)
    condition(ok) | condition(name, ok)               -> (name, ok, None)

    Distributions come back adapted to the protocol of `ppl.distributions` (NumPyro
    distributions wrapped); anything else raises a `TypeError` that says what was given, as
    does an observed value that the distribution could not give (`check_value`), such as the
    string "False" for a Bernoulli. Callers add the user's line to the message.
    """
    n = len(args)
    if kind == "sample" and kwargs.keys() <= {"proposal"}:
        if n == 1:
            name, dist = None, args[0]
        elif n == 2 and isinstance(args[0], str):
            name, dist = args
        else:
            raise TypeError("sample() takes (dist) or (name, dist), and optionally proposal=q")
        dist = as_distribution("sample", dist)
        if "proposal" in kwargs:
            dist = proposed(dist, as_distribution("sample(proposal=...)", kwargs["proposal"]))
        return name, dist, None
    if kwargs:
        raise TypeError(f"{kind}() takes positional arguments only, got {sorted(kwargs)}")
    if kind == "observe":
        if n == 2:
            name, dist, value = None, as_distribution("observe", args[0]), args[1]
        elif n == 3 and isinstance(args[0], str):
            name, dist, value = args[0], as_distribution("observe", args[1]), args[2]
        else:
            raise TypeError("observe() takes (dist, value) or (name, dist, value)")
        if not is_traced(value):  # a value no choice of dist could be: a TypeError, not a weight
            check_value("observe", dist, value)
        return name, dist, value
    if n == 1:
        name, obj = None, args[0]
    elif n == 2 and isinstance(args[0], str):
        name, obj = args
    else:
        usage = {
            "factor": "(log_weight) or (name, log_weight)",
            "twist": "(log_weight) or (name, log_weight)",
        }
        raise TypeError(f"{kind}() takes {usage.get(kind, '(ok) or (name, ok)')}")
    if kind == "condition" and isinstance(obj, Mapping):
        raise TypeError(
            "condition() with a dict is the handler that fixes named choices: "
            "condition(program, {name: value}) or `with condition({name: value}): ...`"
        )
    return name, obj, None


def is_traced(value: Any) -> bool:
    """Is `value` a JAX tracer (a program run under `ppl.nuts`), not a concrete value?"""
    jax_core = sys.modules.get("jax.core")
    return jax_core is not None and isinstance(value, jax_core.Tracer)


def _apply(msg: Message) -> Any:
    if _IN_COMPILED.get():
        raise RuntimeError(
            f"{msg['type']}() was called from a plain function inside a program under inference. "
            "Decorate that function with @ppl.program so the compiler can suspend it."
        )
    stack = _STACK.get()
    visited = 0
    for handler in reversed(stack):
        visited += 1
        handler.process_message(msg)
        if msg["stop"]:
            break
    if msg["value"] is None and msg["type"] == "sample":
        fn = msg["fn"]
        infer = msg["infer"]
        torch_gen = infer.get("torch_gen")
        if torch_gen is not None and isinstance(fn, NextToken):
            msg["value"] = fn.draw(torch_gen)  # as the engine draws a lone particle's token
        else:
            rng = infer.get("rng")
            msg["value"] = fn.sample(rng if rng is not None else np.random.default_rng())
    # a handler that stopped the message hides it from the handlers outside it, both ways
    for handler in stack[len(stack) - visited :]:
        handler.postprocess_message(msg)
    return msg["value"]


def _parse_direct(kind: str, args: tuple, kwargs: dict) -> tuple[str | None, Any, Any]:
    try:
        return parse_args(kind, args, kwargs)
    except TypeError as e:
        raise TypeError(f"{caller_location(2)}: {e}") from None


def sample(*args: Any, **kwargs: Any) -> Any:
    """Draw a value: `sample(dist)`, `sample("name", dist)`, optionally `proposal=q`.

    `dist` is a `ppl.distributions` distribution, a NumPyro distribution, or a language-model
    distribution such as `ctx.next_token()`. With `proposal=q` the value is drawn from `q` and
    the run's weight gains log p(value) - log q(value): the target is unchanged.
    """
    name, dist, _ = _parse_direct("sample", args, kwargs)
    where = direct_address(name, 1)
    return _apply(_message("sample", name, where, dist, None, 0.0))


def observe(*args: Any, **kwargs: Any) -> Any:
    """Condition on `value` having been drawn from `dist`: the weight gains log p(value)."""
    name, dist, value = _parse_direct("observe", args, kwargs)
    where = direct_address(name, 1)
    return _apply(_message("observe", name, where, dist, value, 0.0))


def factor(*args: Any, **kwargs: Any) -> None:
    """Add a log-weight to the current execution: `factor(log_w)` or `factor("name", log_w)`."""
    name, log_w, _ = _parse_direct("factor", args, kwargs)
    w = log_w if is_traced(log_w) else as_log_weight(log_w, f"factor() at {caller_location(1)}")
    where = direct_address(name, 1)
    _apply(_message("factor", name, where, None, None, w))


def condition(*args: Any, **kwargs: Any) -> Any:
    """Keep only executions where `ok` holds: `factor(0)` if true, `factor(-inf)` if false.

    Two forms, told apart by a dict as the last argument:

    * `condition(ok)` / `condition("name", ok)`: the primitive, inside a program.
    * `condition(program, {address: value})` / `condition({address: value})`: the handler that
      fixes named choices (see `ppl.handlers.condition`), outside a program.
    """
    if (args and isinstance(args[-1], Mapping)) or "data" in kwargs:
        return _condition_handler(*args, **kwargs)
    name, ok, _ = _parse_direct("condition", args, kwargs)
    where = direct_address(name, 1)
    w = ok if is_traced(ok) else (0.0 if ok else -math.inf)
    msg = _message("factor", name, where, None, None, w)
    msg["infer"]["condition"] = True
    _apply(msg)
    return None


def twist(*args: Any, **kwargs: Any) -> None:
    """A heuristic log-weight that guides resampling without changing the target.

    `twist(log_psi)` or `twist("name", log_psi)`. Under SMC the term is added to the particle's
    weight for the resampling decisions of this step and taken out again at the particle's next
    step (or when its program returns), so it cancels from the final weights and from the
    evidence estimate. A direct run ignores it.
    """
    name, log_w, _ = _parse_direct("twist", args, kwargs)
    as_log_weight(log_w, f"twist() at {caller_location(1)}")


PRIMITIVES = {
    sample: "sample",
    observe: "observe",
    factor: "factor",
    condition: "condition",
    twist: "twist",
}
