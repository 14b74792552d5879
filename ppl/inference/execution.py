"""Executions: runs of a program that keep a snapshot of themselves before every model call.

An `Execution` is one particle with the `Snapshot`s it passed through: forks of the suspended
particle made just before each language-model call (frames copied, contexts and their KV caches
shared). Metropolis-Hastings regenerates an execution from one of its snapshots
(`ppl.inference.metropolis`), particle MCMC sweeps over them (`ppl.inference.particle_mcmc`),
and resample-move SMC keeps them for its rejuvenation moves (`ppl.inference.smc`). The helpers
below run executions forward together, one batched model call per step, and take twist terms
out of a particle's weight as SMC does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ppl.inference.engine import Choice, Engine, Particle, _Trace


class Snapshot(NamedTuple):
    """A particle suspended before a model call; it is never run itself, only forked."""

    step: int  # scheduler steps the execution had taken when the snapshot was made
    particle: Particle  # its log_weight is the cumulative log weight of the execution so far
    is_choice: bool  # pending a token `sample` (a regeneration point), not an `observe`


@dataclass
class Execution:
    """A run of the program with its snapshots: the state of an MCMC chain."""

    particle: Particle
    history: list[Snapshot] = field(default_factory=list)
    step: int = 0
    # the particle sits at the state of history[-1]: do not snapshot it a second time
    at_snapshot: bool = False

    @property
    def log_weight(self) -> float:
        return self.particle.log_weight

    def tokens(self) -> list[Choice]:
        """The token choices made at the regeneration points 1..K, in order."""
        trace = _trace_list(self.particle.trace)
        out = []
        for snap in self.history:
            if snap.is_choice:
                i = _trace_len(snap.particle.trace)
                if i < len(trace):
                    out.append(trace[i])
        return out

    def regeneration_points(self) -> list[int]:
        """Indices in `history` of the snapshots that are token choices."""
        return [i for i, s in enumerate(self.history) if s.is_choice]


def _trace_list(trace: _Trace | None) -> list[Choice]:
    return trace.to_list() if trace is not None else []


def _trace_len(trace: _Trace | None) -> int:
    n = 0
    while trace is not None:
        n += 1
        trace = trace.prev
    return n


# -- running executions, batched -----------------------------------------------------------------


def untwist(p: Particle) -> None:
    """Take the particle's twist terms out of its weight (see `ppl.twist`)."""
    if p.twist != 0.0:
        p.log_weight -= p.twist
        p.twist = 0.0


def settle(particles: Sequence[Particle]) -> None:
    """After a run to the next suspension: a finished program keeps no twist."""
    for p in particles:
        if p.done:
            untwist(p)


def is_waiting(p: Particle) -> bool:
    return p.pending is not None and p.log_weight > -math.inf


def run_forward(engine: Engine, runs: Sequence[Execution], until: int | None = None) -> None:
    """Run the executions together, one batched model call per step, snapshotting each one
    before every model call, until each has finished, died or taken `until` steps."""
    live = list(runs)
    engine.advance([r.particle for r in live])
    settle([r.particle for r in live])
    while True:
        live = [r for r in live if is_waiting(r.particle) and (until is None or r.step < until)]
        if not live:
            return
        for r in live:
            if r.at_snapshot:
                r.at_snapshot = False
            else:
                p = r.particle
                r.history.append(Snapshot(r.step, p.fork(), p.pending[0] == "sample"))
        ps = [r.particle for r in live]
        engine.resolve(ps)
        for r in live:
            untwist(r.particle)
            r.step += 1
        engine.advance(ps)
        settle(ps)
