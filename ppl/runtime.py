"""The state a direct run shares: the handler stack, address scopes, messages, generators.

The language core imports one way: this module, then `ppl.handlers` (the handlers on the
stack), then `ppl.primitives` (which send messages through it), then `ppl.compiler` (programs,
which open address scopes and apply the `condition` handler). Everything more than one of them
reads or changes lives here.

The state of a run (`_STACK`, `_SCOPE`, `_IN_COMPILED`) is context-local: each is a
`contextvars.ContextVar` holding an immutable value, so every thread, asyncio task and greenlet
sees its own, and whoever changes one restores what it found (`ContextVar.reset`, or the stack
popped back to the tuple it extended). A nested run (a helper that calls `ppl.smc` from inside
a program) leaves its caller's state as it was.

`BaseProgram` is the base class of `ppl.compiler.Program`: the handlers tell a program from a
plain function by it without importing the compiler, which sits above them.
"""

from __future__ import annotations

import math
import os
from contextvars import ContextVar
from typing import Any

import numpy as np

#: The handler stack for direct runs, innermost last: a tuple, replaced (never changed in place)
#: when a handler enters or leaves.
_STACK: ContextVar[tuple[Any, ...]] = ContextVar("ppl_handler_stack", default=())

#: True while the inference engine executes compiled code (`Engine.advance` sets it and resets
#: it to what it was). A primitive reached then was called from a plain function that a program
#: called, which the compiler could not see.
_IN_COMPILED: ContextVar[bool] = ContextVar("ppl_in_compiled", default=False)


class Scope:
    """One direct call of a program: the address prefix of its choices and its line counters."""

    __slots__ = ("prefix", "counts")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.counts: dict[int, int] = {}


#: The address scope of the innermost program running directly (None outside any): each
#: program call sets its own and resets the one it found when it returns.
_SCOPE: ContextVar[Scope | None] = ContextVar("ppl_scope", default=None)


class Message(dict):
    """A primitive call on its way through the handler stack.

    Keys: `type` ("sample", "observe", "factor"), `name` (the user's name or None), `address`,
    `site` (the statement),
    `fn` (the distribution), `value`, `log_weight` (for factor), `scale` (multiplies every log
    density of the site), `observed` (a sample whose value a handler fixed), `stop`, `infer`
    (handler notes, such as the random generator).
    """


class BaseProgram:
    """What the handlers know of a `@program` (`ppl.compiler.Program`, its only subclass).

    Calling it opens its own address scope, and `conditioned(data)` is the program with the
    choices at the addresses in `data` fixed (what `condition(program, data)` returns).
    """

    def conditioned(self, data: dict[str, Any]) -> Any:
        raise NotImplementedError


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


def generators(seed: int | None) -> tuple[int, np.random.Generator, Any]:
    """The run's seed entropy, NumPy generator and torch generator, all derived from `seed`.

    Inference runs and `ppl.handlers.seed` both use it, so a program run directly under
    `seed(program, s)` makes the same choices as the one particle of `importance(...,
    particles=1, seed=s)`: values of distributions from the NumPy generator (NumPyro keys too),
    language-model tokens from the torch generator, drawn as the engine draws them
    (`NextToken.draw`). That holds for `particles=1` only: with more, the engine draws from the
    same generators for every particle, a step at a time, so particle 0 soon differs.
    """
    import torch

    seq = np.random.SeedSequence(seed)
    np_seq, torch_seq = seq.spawn(2)
    torch_gen = torch.Generator().manual_seed(
        int(torch_seq.generate_state(1, np.uint64)[0] >> np.uint64(1))
    )
    return seq.entropy, np.random.default_rng(np_seq), torch_gen


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep

# Code of ppl's that raises Python's own errors on the user's behalf (a compiled program's
# unbound local, a dict changed size during its loop): such an error is the user's.
_AS_PYTHON: set[Any] = set()


def raises_for_python(fn: Any) -> Any:
    """Mark `fn` as raising Python's errors for the user's code (see `raised_by_ppl`)."""
    _AS_PYTHON.add(fn.__code__)
    return fn


def raised_by_ppl(error: BaseException) -> bool:
    """Did ppl's own code raise `error` (a misuse of ppl, or a fault of ppl's), not the user's?

    Told by the frame that raised it (the innermost of its traceback): a frame of ppl's source
    is ppl's; the user's program (compiled code keeps the user's file), the plain functions it
    calls, the libraries they call and the user's own callbacks are the user's. A user's
    exception that ppl passes on keeps the frame that raised it.
    `errors="drop"` drops the user's exceptions only.
    """
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    if code in _AS_PYTHON:
        return False
    return os.path.abspath(code.co_filename).startswith(_PACKAGE)
