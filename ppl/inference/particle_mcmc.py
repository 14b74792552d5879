"""Particle MCMC over program traces: particle independent Metropolis-Hastings and particle
Gibbs, on SMC sweeps that snapshot every particle.

**PIMH** runs an independent SMC sweep as the proposal and accepts it with probability
min(1, Z'/Z), the ratio of the sweeps' evidence estimates; the stationary law of the kept
samples is the exact posterior for any number of particles (Andrieu, Doucet & Holenstein 2010).
**Particle Gibbs** runs conditional SMC: particle 0 follows the current reference execution, the
other N-1 are resampled from all N at every step (multinomially), and the next reference is
drawn from the final weights. A sweep is the SMC kernel (`ppl.inference.kernel`) with
multinomial resampling at every step (`ppl.inference.resampling.multinomial`).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from ppl.compiler import Program
from ppl.inference import kernel
from ppl.inference import resampling as _resampling
from ppl.inference.builders import chain_posterior, failed_posterior, rejections
from ppl.inference.engine import Engine, Particle
from ppl.inference.execution import Execution, is_waiting
from ppl.inference.notices import count, fits
from ppl.inference.options import checks_options
from ppl.inference.posterior import Posterior, counts_mask_leaks
from ppl.inference.progress import chains_bar, chains_status
from ppl.inference.weights import log_sum_exp, normalise


def smc_sweep(
    engine: Engine, n: int, reference: Execution | None = None
) -> tuple[list[Execution], np.ndarray, float]:
    """One SMC sweep that resamples multinomially at every step, snapshotting every particle.

    With a `reference`, it is conditional SMC: particle 0 follows the reference execution and
    keeps ancestor 0. Returns the final executions (at their cumulative log weights), their log
    weights since the last resampling and the log evidence estimate.
    """
    sweep = _Sweep(engine.new_particles(n), reference)
    state = kernel.init(engine, [r.particle for r in sweep.runs], sweep.hold)
    while state.waiting:
        state, _ = kernel.step(engine, state, sweep.ancestors, sweep.update, sweep.hold)
    for r, c in zip(sweep.runs, state.carried):
        r.particle.log_weight += c  # the whole weight, as an MCMC state holds it
    return sweep.runs, state.log_weights, kernel.final_log_evidence(state)


class _Sweep:
    """The executions of one sweep, kept beside the kernel's particles: resampled with them,
    each snapshotted before its model calls; under conditional SMC, particle 0 is the
    reference as it was after the same number of steps."""

    def __init__(self, particles: list[Particle], reference: Execution | None) -> None:
        self.reference = reference
        self.hold = 0 if reference is None else 1
        self.runs = [Execution(p) for p in particles]
        if reference is not None:
            self.states = [s.particle for s in reference.history] + [reference.particle]
            self.runs[0] = self.follow(0, 0.0)

    def follow(self, t: int, carried: float) -> Execution:
        """The reference as it was after t steps (a fork: it may be resampled from), its log
        weight counted from the last resampling."""
        assert self.reference is not None
        j = min(t, len(self.states) - 1)
        p = self.states[j].fork()
        p.log_weight -= carried
        return Execution(p, list(self.reference.history[:j]), t)

    def ancestors(self, rng: np.random.Generator, state: kernel.SMCState) -> np.ndarray:
        n = len(state.particles)
        w = normalise(state.log_weights)
        drawn = _resampling.multinomial(rng, w, n - self.hold)
        return np.concatenate([[0], drawn]) if self.hold else drawn

    def update(
        self, ps: list[Particle], carried: np.ndarray, idx: np.ndarray | None, step: int
    ) -> tuple[list[Particle], np.ndarray]:
        assert idx is not None  # a sweep resamples at every step
        runs = self.runs
        self.runs = [
            Execution(p, list(runs[i].history), runs[i].step, runs[i].at_snapshot)
            for p, i in zip(ps, idx.tolist())
        ]
        if self.hold:
            self.runs[0] = self.follow(step + 1, carried[0])
            ps = [self.runs[0].particle] + ps[1:]
        # one step for every particle but the reference: snapshot it before its model call
        for r, c in zip(self.runs[self.hold :], carried[self.hold :]):
            if is_waiting(r.particle):
                r.history.append(kernel.snapshot(r.particle, c, r.step))
                r.step += 1
        return ps, carried


@counts_mask_leaks
@checks_options
def pimh(
    program: Program,
    *args: Any,
    particles: int = 16,
    steps: int = 20,
    seed: int | None = None,
    errors: str = "raise",
    progress: bool | None = None,
    **kwargs: Any,
) -> Posterior:
    """Particle independent Metropolis-Hastings: SMC sweeps as independent proposals.

    Each step runs an SMC sweep of `particles` particles, draws one execution x' from its final
    weights and accepts it with probability min(1, Z'/Z), Z' and Z the evidence estimates of
    the new and the current sweep. `log_evidence` is the log of the mean of all sweeps'
    estimates, an unbiased estimate of Z.

    `progress` is a progress bar (steps done out of `steps`, with the acceptance rate and the
    running log evidence estimate): True shows it, False hides it, None (the default) shows it
    when stderr is a terminal or in a Jupyter notebook.
    """
    particles = count("particles", particles)
    steps = count("steps", steps)
    fits(f"pimh with particles={particles}", particles)
    fits(f"pimh with steps={steps} kept states", steps)
    start = time.perf_counter()
    engine = Engine(program, args, kwargs, seed, errors)
    current: Execution | None = None
    current_log_z = -math.inf
    sweeps = []
    kept: list[Execution] = []
    accepted = 0
    bar = chains_bar(progress, "pimh", 1, steps)
    try:
        for s in range(steps):
            runs, lw, log_z = smc_sweep(engine, particles)
            sweeps.append(log_z)
            if log_z > -math.inf:
                pick = runs[_pick(engine.rng, lw)]
                if current is None or math.log(engine.rng.random()) < log_z - current_log_z:
                    current, current_log_z = pick, log_z
                    accepted += 1
            if current is not None:
                kept.append(current)
            if bar.due() or s == steps - 1:
                z = log_sum_exp(np.array(sweeps)) - math.log(len(sweeps))
                bar.show(*chains_status(1, s + 1, steps, accepted / (s + 1), log_z=z))
    finally:
        bar.close()
    if not kept:
        failure = (
            f"every one of {steps} SMC sweeps gave zero evidence; rejections: {rejections(engine)}"
        )
        return failed_posterior("pimh", engine, failure, start, -math.inf)
    log_evidence = log_sum_exp(np.array(sweeps)) - math.log(len(sweeps))
    return chain_posterior(
        "pimh", engine, [kept], np.array([accepted / steps]), start, log_evidence
    )


@counts_mask_leaks
@checks_options
def pgibbs(
    program: Program,
    *args: Any,
    particles: int = 8,
    steps: int = 50,
    seed: int | None = None,
    errors: str = "raise",
    progress: bool | None = None,
    **kwargs: Any,
) -> Posterior:
    """Particle Gibbs: conditional SMC sweeps, each keeping the previous sample as reference.

    The first sweep is plain SMC. Each later sweep runs `particles` - 1 fresh particles beside
    the reference (particle 0, never resampled away) and draws the next reference from the final
    weights. `acceptance` reports how often the reference changed.

    `progress` is a progress bar (steps done out of `steps`, with how often the reference
    changed so far): True shows it, False hides it, None (the default) shows it when stderr is
    a terminal or in a Jupyter notebook.
    """
    particles = count("particles", particles, 2)
    steps = count("steps", steps)
    fits(f"pgibbs with particles={particles}", particles)
    fits(f"pgibbs with steps={steps} kept states", steps)
    start = time.perf_counter()
    engine = Engine(program, args, kwargs, seed, errors)
    reference: Execution | None = None
    kept: list[Execution] = []
    changed = 0
    bar = chains_bar(progress, "pgibbs", 1, steps)
    try:
        for s in range(steps):
            if bar.due():
                rate = changed / max(1, len(kept) - 1)
                bar.show(*chains_status(1, s, steps, rate))
            runs, lw, _ = smc_sweep(engine, particles, reference)
            w = normalise(lw)
            if w.sum() == 0:
                if reference is None:
                    continue  # no execution with positive weight yet
                raise AssertionError("conditional SMC lost its reference")  # cannot happen
            k = _pick(engine.rng, lw)
            if reference is not None and k != 0:
                changed += 1
            reference = runs[k]
            kept.append(reference)
        bar.show(*chains_status(1, steps, steps, changed / max(1, len(kept) - 1)))
    finally:
        bar.close()
    if not kept:
        failure = (
            f"none of {steps} SMC sweeps found an execution with positive weight; "
            f"rejections: {rejections(engine)}"
        )
        return failed_posterior("pgibbs", engine, failure, start, None)
    return chain_posterior(
        "pgibbs", engine, [kept], np.array([changed / max(1, len(kept) - 1)]), start, None
    )


def _pick(rng: np.random.Generator, lw: np.ndarray) -> int:
    """One index drawn from the normalised weights (one uniform, as `rng.choice` draws)."""
    return int(_resampling.multinomial(rng, normalise(lw), 1)[0])
