"""The state a direct run shares: the handler stack, address scopes, messages, generators.

The language core imports one way: this module, then `ppl.handlers` (the handlers on the
stack), then `ppl.primitives` (which send messages through it), then `ppl.compiler` (programs,
which open address scopes and apply the `condition` handler). Everything more than one of them
reads or changes lives here, and `ppl.primitives` re-exports it (its old home).

`BaseProgram` is the base class of `ppl.compiler.Program`: the handlers tell a program from a
plain function by it without importing the compiler, which sits above them.
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


class Scope:
    """One direct call of a program: the address prefix of its choices and its line counters."""

    __slots__ = ("prefix", "counts")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.counts: dict[int, int] = {}


# Address scopes of the programs running directly, innermost last.
_SCOPES: list[Scope] = []


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
    `seed(program, s)` makes the same choices as its first particle under `importance(...,
    seed=s)`. NumPyro keys are drawn from the NumPy generator.
    """
    import torch

    seq = np.random.SeedSequence(seed)
    np_seq, torch_seq = seq.spawn(2)
    torch_gen = torch.Generator().manual_seed(
        int(torch_seq.generate_state(1, np.uint64)[0] >> np.uint64(1))
    )
    return seq.entropy, np.random.default_rng(np_seq), torch_gen
