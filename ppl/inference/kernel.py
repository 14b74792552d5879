"""The SMC kernel: one step over a particle population, shared by every particle method.

In the manner of BlackJAX, `init` runs a population to its first model calls and weighs it into
an `SMCState`; `step` takes that state to the next model calls and returns the new state with an
`SMCInfo` saying what happened. In Feynman-Kac terms, a step is

1. R_t, *resample*: when the driver's rule `ancestors(rng, state)` gives indices, the log
   evidence grows by the log mean weight, log (1/N) sum_i w_i, and the chosen particles are
   copied (every copy after the first a fork) with their weights reset to 1; each one's
   cumulative log weight so far is kept in `carried`, so that a particle's whole weight is
   always `carried + log_weights`;
2. the driver's `update` (MCMC rejuvenation, snapshots for particle MCMC, the reference of
   conditional SMC);
3. M_t, *move*: every waiting particle's pending model call resolved, one batched call per
   model, its twist terms taken out (`untwist`), its program run to its next model call;
4. G_t, *weigh*: the log weights since the last resampling, their ESS and their log sum.

The evidence estimate is the product of the mean weights at the resamplings and at the end,
`final_log_evidence(state)`, unbiased (in Z) for every unbiased resampling scheme. The kernel
keeps nothing between steps: all it knows is in the state. Its drivers are `smc` and
`importance` (`ppl.inference.smc`: resampling when the ESS falls below a threshold) and the
sweeps of `pimh`, `pgibbs` and `mh(init="smc")` (`ppl.inference.particle_mcmc`: multinomial
resampling at every step, conditional SMC holding particle 0 on its reference). `smc_steer`
(`ppl.inference.steer`) steps differently, children per particle and survivors without
replacement, and shares the rest: `weigh`, `Monitor` (what a run keeps of each step) and
`particle_posterior` (`ppl.inference.builders`: the `Posterior` of a particle run).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ppl.inference.builders import particle_posterior
from ppl.inference.engine import Engine, Particle
from ppl.inference.execution import Snapshot, is_waiting, settle, untwist
from ppl.inference.posterior import Posterior
from ppl.inference.progress import Bar, particles_status
from ppl.inference.weights import ess_of, log_sum_exp

if TYPE_CHECKING:
    from ppl.inference.record import Recorder


class SMCState(NamedTuple):
    """A particle population between two steps: each particle finished, dead or suspended
    before a model call."""

    particles: list[Particle]
    log_weights: np.ndarray  # each particle's log weight since the last resampling
    ess: float  # effective sample size of `log_weights`
    log_total: float  # log sum_i exp(log_weights[i])
    carried: np.ndarray  # each particle's cumulative log weight at the last resampling
    log_evidence: float  # sum over the resamplings so far of the log mean weight
    step: int  # steps taken

    @property
    def waiting(self) -> bool:
        """Whether a particle is still suspended before a model call."""
        return any(is_waiting(p) for p in self.particles)

    @property
    def running_log_evidence(self) -> float:
        """The evidence estimate if the run stopped here."""
        return self.log_evidence + self.log_total - math.log(len(self.particles))


class SMCInfo(NamedTuple):
    """What a step did."""

    log_weights: np.ndarray  # the weights the step started from (those it resampled by)
    ess: float  # their effective sample size
    log_evidence_increment: float  # their log mean weight, added to the evidence if resampled
    ancestors: np.ndarray | None  # the resampled indices; None when the step did not resample


Ancestors = Callable[[np.random.Generator, SMCState], "np.ndarray | None"]
"""A resampling rule: the ancestors of the next population, or None to keep it."""
Update = Callable[
    [list[Particle], np.ndarray, "np.ndarray | None", int], tuple[list[Particle], np.ndarray]
]
"""`(particles, carried, ancestors, step) -> (particles, carried)`, after resampling."""


def weigh(particles: Sequence[Particle]) -> tuple[np.ndarray, float, float]:
    """The particles' log weights, their ESS and their log sum."""
    lw = np.array([p.log_weight for p in particles])
    return lw, ess_of(lw), log_sum_exp(lw)


def init(
    engine: Engine,
    particles: list[Particle],
    hold: int = 0,
    where: str | None = None,
) -> SMCState:
    """The population run to its first model calls and weighed; the first `hold` particles
    (conditional SMC's reference) are not run."""
    moving = particles[hold:]
    advance(engine, moving, where, 0)
    settle(moving)
    lw, ess, total = weigh(particles)
    return SMCState(particles, lw, ess, total, np.zeros(len(particles)), 0.0, 0)


def step(
    engine: Engine,
    state: SMCState,
    ancestors: Ancestors,
    update: Update | None = None,
    hold: int = 0,
    where: str | None = None,
) -> tuple[SMCState, SMCInfo]:
    """Resample (when `ancestors` says so), update, move every waiting particle but the first
    `hold`, weigh. `where` names the run in a note on an exception the program raises."""
    n = len(state.particles)
    increment = state.log_total - math.log(n)
    idx = ancestors(engine.rng, state)
    particles, carried, log_z = state.particles, state.carried, state.log_evidence
    if idx is not None:
        log_z += increment
        carried = carried[idx] + state.log_weights[idx]
        particles = resample(particles, idx)
    if update is not None:
        particles, carried = update(particles, carried, idx, state.step)
    running = [p for p in particles[hold:] if is_waiting(p)]
    engine.resolve(running)
    for p in running:
        untwist(p)
    advance(engine, running, where, state.step + 1)
    settle(running)
    lw, ess, total = weigh(particles)
    info = SMCInfo(state.log_weights, state.ess, increment, idx)
    return SMCState(particles, lw, ess, total, carried, log_z, state.step + 1), info


def final_log_evidence(state: SMCState) -> float:
    """The run's evidence estimate: the resamplings' log mean weights and the final one."""
    return state.log_evidence + (state.log_total - math.log(len(state.particles)))


def advance(engine: Engine, particles: list[Particle], where: str | None, step: int) -> None:
    """`engine.advance`, noting on a program's exception the run and the step it was at."""
    try:
        engine.advance(particles)
    except Exception as e:
        if where is not None and hasattr(e, "add_note"):
            e.add_note(f"{where} at step {step}")
        raise


def resample(particles: list[Particle], idx: np.ndarray) -> list[Particle]:
    """The particles at `idx`, each copy after the first a fork; weights reset to 1."""
    out = []
    taken: set[int] = set()
    for i in idx.tolist():
        p = particles[i]
        if i in taken:
            p = p.fork()
        else:
            taken.add(i)
        out.append(p)
    for p in out:
        p.log_weight = 0.0
    return out


def snapshot(p: Particle, carried: float, step: int) -> Snapshot:
    """A snapshot of a waiting particle, at its cumulative log weight (what MCMC targets)."""
    snap = p.fork()
    snap.log_weight += carried
    return Snapshot(step, snap, p.pending[0] == "sample")


class Monitor:
    """What a particle run keeps of each step: its ESS, its running log evidence, its
    resamplings and their ancestors; it drives the progress bar and the per-step record."""

    def __init__(self, n: int, bar: Bar, recorder: Recorder | None) -> None:
        self.n = n
        self.bar = bar
        self.recorder = recorder
        self.ess: list[float] = []
        self.log_evidence: list[float] = []
        self.resampled: list[int] = []
        self.ancestors: list[np.ndarray] = []

    def weighed(
        self, step: int, particles: list[Particle], lw: np.ndarray, ess: float, log_z: float
    ) -> None:
        self.ess.append(ess)
        self.log_evidence.append(log_z)
        if self.bar.due():
            self.bar.show(*particles_status(step, particles, ess, self.n, log_z))
        if self.recorder is not None:
            self.recorder.step(particles, lw)

    def saw(self, state: SMCState) -> None:
        """The kernel's state after a step (or `init`): its weights, ESS, running evidence."""
        self.weighed(
            state.step, state.particles, state.log_weights, state.ess, state.running_log_evidence
        )

    def resampled_after(self, step: int, ancestors: np.ndarray) -> None:
        self.resampled.append(step)
        self.ancestors.append(ancestors)
        if self.recorder is not None:
            self.recorder.resampled(ancestors)

    def done(self, step: int, particles: list[Particle]) -> None:
        """The last view of the progress bar."""
        self.bar.show(
            *particles_status(step, particles, self.ess[-1], self.n, self.log_evidence[-1])
        )

    def posterior(
        self,
        method: str,
        engine: Engine,
        particles: list[Particle],
        lw: np.ndarray,
        log_z: float,
        start: float,
        steps: int,
        **stats: float,
    ) -> Posterior:
        """The run's `Posterior`, with its per-step record and its evidence at every step."""
        post = particle_posterior(
            method, engine, particles, lw, log_z, self.ess, self.resampled, self.ancestors, start
        )
        post.stats["steps"] = steps
        post.stats.update(stats)
        post.log_evidence_steps = np.asarray(self.log_evidence)
        return post

    def finish(self, post: Posterior) -> None:
        if self.recorder is not None:
            self.recorder.finish(post)
