"""`ppl.exact`: a program's posterior by enumerating every execution, for finite choices.

When every choice of a program has finitely many values, its posterior is a finite sum: each
execution (the program run with one value at each choice) has the probability of its choices
times its likelihood terms (`observe`, `factor`, `condition`). `exact` walks all of them and
returns a `Posterior` whose values, weights and `log_evidence` are exact, up to floating point.
It answers the question every approximate run raises on a small model ("what should SMC have
given?") and is the reference the course's lessons and the tests compare inference against.

What counts as finite:

* a token choice, `sample(ctx.next_token(...))`: every token the model gives positive
  probability; with a constraint or `where`, the tokens it allows (the others have probability
  zero under the program's target). Use it with a `FunctionLM` or any model with a small
  vocabulary and a bounded length: each execution branches once per token.
* a distribution with `enumerate_support()` (`Bernoulli`, `Categorical`, `UniformChoice`, the
  scalar NumPyro distributions with finite support). A proposal (`ppl.proposed`) enumerates its
  target: it changes how a choice is drawn, not its values.

`observe` on tokens and continuations is scored as in any run; `twist` changes no target and is
ignored. A choice with infinitely many values (`Geometric`, a `Normal`) is an error naming the
statement and the distribution; more than `max_executions` executions is an error naming the
count and the choice that passed it.

The executions run as particles of the engine (`ppl.inference.engine`): at each step every
execution waiting at a choice is forked once per value, and those waiting at a token choice
share one batched model call, as SMC's particles do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from ppl.compiler import Program
from ppl.inference.builders import exact_posterior
from ppl.inference.engine import Engine, Frame, Particle, _Trace
from ppl.inference.posterior import Posterior
from ppl.next_token import Continuation, NextToken
from ppl.trace import Choice, Site

#: the default bound on the executions (finished or not) that `exact` walks
MAX_EXECUTIONS = 100_000


class NotEnumerable(ValueError):
    """A choice `ppl.exact` cannot enumerate: infinitely many values, or too many executions."""


class _Enumerating(Engine):
    """The engine, stopping at every choice (not only at token choices) to be forked."""

    def _sample(
        self, p: Particle, frame: Frame, site: Site, target: str, name: str | None, address: str,
        dist: Any,
    ) -> bool:  # fmt: skip
        if isinstance(dist, (NextToken, Continuation)):  # a continuation: its own error
            return super()._sample(p, frame, site, target, name, address, dist)
        enumerate_support = getattr(dist, "enumerate_support", None)
        values = enumerate_support() if enumerate_support is not None else None
        # the driver raises for a choice without finite support, outside the program, where
        # no `try` of the program's can catch it
        p.pending = ("enumerate", dist, target, site, name, values, address)
        return True

    def _twist(self, p: Particle, frame: Frame, site: Site, target: str, log_w: Any) -> bool:
        frame.L[target] = None  # a twist steers resampling; the target is unchanged
        return False


def exact(
    program: Program, *args: Any, max_executions: int = MAX_EXECUTIONS, **kwargs: Any
) -> Posterior:
    """The exact posterior of `program(*args, **kwargs)`, by enumerating its executions.

    Every choice must have finitely many values (token choices, and distributions with
    `enumerate_support()`: see `ppl.inference.exact`). Returns a `Posterior` with one value per
    execution of positive weight (equal values are not merged: `distribution()` sums them),
    its exact normalised weights and the exact `log_evidence`. Raises `NotEnumerable` for a
    choice with infinitely many values, or past `max_executions` executions (finished or not).
    """
    if (
        isinstance(max_executions, bool)
        or not isinstance(max_executions, int)
        or max_executions < 1
    ):
        raise ValueError(f"max_executions must be a whole number >= 1, got {max_executions!r}")
    start = time.perf_counter()
    engine = _Enumerating(program, args, kwargs, seed=0)
    frontier = engine.new_particles(1)
    finished: list[Particle] = []
    made = 1
    while frontier:
        engine.advance(frontier)
        engine.steps += 1
        waiting: list[Particle] = []
        observing: list[Particle] = []
        for p in frontier:
            if not p.alive:
                if p.done and p.log_weight > -math.inf:
                    finished.append(p)
            elif p.pending[0] == "observe":
                observing.append(p)
            else:
                waiting.append(p)
        if observing:  # scored in one batched call, as a step of any run scores them
            engine.resolve(observing)
        branches = _branches(engine, waiting)
        made += sum(len(b) for _, b in branches)
        if made > max_executions:
            raise NotEnumerable(
                f"ppl.exact: more than max_executions={max_executions} executions (at "
                f"{branches[-1][0].pending[3]}, {made} so far): the program has too many to "
                "enumerate; pass a larger max_executions, or make the choices fewer (a shorter "
                "text, a smaller vocabulary)"
            )
        frontier = [p for p in observing if p.alive]
        for p, values in branches:
            for value, log_p in values:
                frontier.append(_take(engine, p, value, log_p))
    return exact_posterior(engine, finished, made, start)


def _branches(
    engine: Engine, waiting: Sequence[Particle]
) -> list[tuple[Particle, list[tuple[Any, float]]]]:
    """Each waiting execution with the values of its choice and their log probabilities (the
    values of probability zero left out); token choices share one model call per model."""
    engine.compute([p.pending[1] for p in waiting if p.pending[0] == "sample"])
    out = []
    for p in waiting:
        kind, dist, _, site, _, values, _ = p.pending
        if kind == "sample":  # a token: each one the model gives positive probability
            lm = dist.context.lm
            row = dist.context._logprobs
            candidates = (row > -math.inf).nonzero()[:, 0].tolist()
            scored = [(lm.token(t), float(dist.log_prob(t))) for t in candidates]
        else:
            if values is None:
                raise NotEnumerable(
                    f"ppl.exact: sample() at {site}: {dist!r} has infinitely many values (or "
                    "none it can list: no enumerate_support()); exact enumeration needs every "
                    "choice to be finite, e.g. a Categorical, a Bernoulli or a token"
                )
            scored = [(v, float(dist.log_prob(v))) for v in values]
        out.append((p, [(v, lp) for v, lp in scored if lp > -math.inf]))
    return out


def _take(engine: Engine, p: Particle, value: Any, log_p: float) -> Particle:
    """A fork of `p` that took `value` (of log probability `log_p`) at its waiting choice."""
    _, _, target, site, name, _, address = p.pending
    q = p.fork()
    q.pending = None
    q.trace = _Trace(q.trace, Choice(site, name, value, log_p, address))
    q.frames[-1].L[target] = value
    q.log_weight += log_p  # the execution's probability, not a proposal's correction
    return q
