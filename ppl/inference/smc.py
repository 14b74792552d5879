"""Sequential Monte Carlo and importance sampling over compiled programs.

In Feynman-Kac terms, step t of a run moves every particle to its next language-model choice
(M_t: run the program, drawing its choices from their own distributions), multiplies its weight
by the potential G_t met on the way (every `observe`, `factor` and `condition` since the last
step), and, when the effective sample size falls below `ess_threshold * N`, resamples (R_t).

The evidence estimate is the product over resampling steps of the mean weight before
resampling, times the mean weight at the end:

    log Z = sum_{t resampled} log( (1/N) sum_i w_i^t ) + log( (1/N) sum_i w_i^T ),

an unbiased estimate of Z (in Z, not log Z) for every unbiased resampling scheme. Importance
sampling is the same run without resampling.

Twisting: `twist(log_psi)` adds log psi_t to a particle's weight at step t and the driver takes
it out at the particle's next step (or when its program returns), so the weight increment at
step t is G_t psi_t / psi_{t-1} with psi = 1 at the end: the twists steer resampling, cancel in
the final weights and leave the evidence estimate unbiased.

Resample-move: with `rejuvenation=` an MCMC kernel (`MHKernel`), every particle makes MCMC moves
after each resampling that leave the step's intermediate target invariant, so the particle
population stays a valid weighted sample while regaining diversity. The particles then keep
snapshots of themselves before each model call (forks that share contexts).

Each step (resample, move, weigh) is the SMC kernel's (`ppl.inference.kernel`); this module
holds the resampling rule, resample-move and the driver with its progress bar and record.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ppl.compiler import Program
from ppl.inference import kernel
from ppl.inference import resampling as _resampling
from ppl.inference.engine import Engine, Particle
from ppl.inference.execution import Execution, Snapshot, is_waiting
from ppl.inference.metropolis import MHKernel
from ppl.inference.notices import count, fits
from ppl.inference.options import checks_options
from ppl.inference.posterior import Posterior, counts_mask_leaks
from ppl.inference.progress import particles_bar
from ppl.inference.record import recorder_for
from ppl.inference.weights import normalise


@counts_mask_leaks
@checks_options
def smc(
    program: Program,
    *args: Any,
    particles: int = 16,
    ess_threshold: float = 0.5,
    resampling: str = "systematic",
    seed: int | None = None,
    progress: bool | None = None,
    errors: str = "raise",
    rejuvenation: MHKernel | None = None,
    record: bool | None = None,
    **kwargs: Any,
) -> Posterior:
    """Sequential Monte Carlo: `particles` executions of `program(*args, **kwargs)`.

    Args:
        particles: number of particles N.
        ess_threshold: resample when ESS < ess_threshold * N (0: never, 1: at every step).
        resampling: "systematic", "stratified", "residual", "multinomial", or a function
            `(rng, weights, n) -> indices`.
        seed: drives every random choice; the same seed reproduces the run on the CPU.
        progress: a progress bar (particles done out of N; step, running/finished/dead
            particles, ESS, running log evidence): True shows it, False hides it, None (the
            default) shows it when stderr is a terminal or in a Jupyter notebook.
        errors: "raise" (an exception in a particle stops the run and propagates) or "drop"
            (that particle gets weight zero; the errors are listed in `diagnostics`). Errors
            that ppl itself raises (misuse of ppl, faults of its own) always propagate.
        rejuvenation: an MCMC kernel (`ppl.MHKernel(...)`) applied to every particle after
            each resampling (resample-move SMC).
        record: keep per-step snapshots (texts, weights, ancestry, the prompt) in
            `Posterior.history`, for `Posterior.html()`. None (default): record when there are
            at most 256 particles, dropping the record if it passes 32 MiB (about 120 bytes
            plus the text so far per particle and step); True: always; False: never.
    """
    if not 0.0 <= ess_threshold <= 1.0:
        raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold}")
    resampler = _resampling.get(resampling)
    if rejuvenation is not None and not callable(rejuvenation):
        raise TypeError(
            f"rejuvenation must be an MCMC kernel such as ppl.MHKernel(), "
            f"got {type(rejuvenation).__name__}"
        )
    return _run(
        "smc",
        program,
        args,
        kwargs,
        particles,
        ess_threshold,
        resampler,
        seed,
        progress,
        errors,
        rejuvenation,
        record,
    )


@counts_mask_leaks
@checks_options
def importance(
    program: Program,
    *args: Any,
    particles: int = 16,
    seed: int | None = None,
    progress: bool | None = None,
    errors: str = "raise",
    record: bool | None = None,
    **kwargs: Any,
) -> Posterior:
    """Importance sampling with the program's own choices as the proposal (likelihood weighting).

    The weight of an execution is the product of its `observe`, `factor` and `condition` terms;
    `log_evidence` is the log of their mean, an unbiased estimate of Z in Z. `progress` shows a
    bar as for `smc` (True, False, or None: when stderr is a terminal or in a notebook).
    `record` is as for `smc` (None: a per-step record for `Posterior.html()` when there are at
    most 256 particles; True: always; False: never).
    """
    return _run(
        "importance",
        program,
        args,
        kwargs,
        particles,
        0.0,
        None,
        seed,
        progress,
        errors,
        None,
        record,
    )


def _run(
    method: str,
    program: Program,
    args: tuple,
    kwargs: dict,
    n: int,
    threshold: float,
    resampler: Any,
    seed: int | None,
    progress: bool | None,
    errors: str,
    rejuvenation: Any = None,
    record: bool | None = None,
) -> Posterior:
    n = count("particles", n)
    fits(f"{method} with particles={n}", n)
    start = time.perf_counter()
    engine = Engine(program, args, kwargs, seed, errors)
    where = f"raised while running {program.__qualname__} under {method}"
    rejuvenate = _Rejuvenation(rejuvenation, engine, n) if rejuvenation is not None else None

    def ancestors(rng: np.random.Generator, state: kernel.SMCState) -> np.ndarray | None:
        if threshold > 0 and state.ess < threshold * n:
            return np.asarray(resampler(rng, normalise(state.log_weights), n))
        return None

    bar = particles_bar(progress, method, n)
    monitor = kernel.Monitor(n, bar, recorder_for(record, n))
    try:
        state = kernel.init(engine, engine.new_particles(n), where=where)
        monitor.saw(state)
        while state.waiting:
            state, info = kernel.step(engine, state, ancestors, rejuvenate, where=where)
            if info.ancestors is not None:
                monitor.resampled_after(state.step - 1, info.ancestors)
            monitor.saw(state)
        monitor.done(state.step, state.particles)
    finally:
        bar.close()
    log_z = kernel.final_log_evidence(state)
    post = monitor.posterior(
        method,
        engine,
        state.particles,
        state.log_weights,
        log_z,
        start,
        state.step,
        ess_threshold=threshold,  # resampling when ESS < ess_threshold * particles
    )
    if rejuvenate is not None:
        post.acceptance = np.array([rejuvenate.rate()])
    monitor.finish(post)
    return post


class _Rejuvenation:
    """Resample-move: the kernel's `update`, keeping each particle's snapshots and moving every
    particle with the MCMC kernel after each resampling, at the cumulative weights its target
    needs (a particle's log weight is reset to 0 at a resampling; `carried` keeps the rest)."""

    def __init__(self, mcmc: Any, engine: Engine, n: int) -> None:
        self.mcmc = mcmc
        self.engine = engine
        self.histories: list[list[Snapshot]] = [[] for _ in range(n)]
        self.moves = self.accepted = 0

    def __call__(
        self, ps: list[Particle], carried: np.ndarray, idx: np.ndarray | None, step: int
    ) -> tuple[list[Particle], np.ndarray]:
        if idx is not None:
            self.histories = [list(self.histories[i]) for i in idx.tolist()]
            ps, carried = self._move(ps, carried, step)
        for i, p in enumerate(ps):
            if is_waiting(p):
                self.histories[i].append(kernel.snapshot(p, carried[i], step))
        return ps, carried

    def _move(
        self, ps: list[Particle], carried: np.ndarray, step: int
    ) -> tuple[list[Particle], np.ndarray]:
        states = []
        for p, h, c in zip(ps, self.histories, carried):
            p.log_weight += c  # 0 since the resampling: now the whole weight
            states.append(Execution(p, h, step))
        states, accepted = self.mcmc(self.engine, states, step)
        self.moves += len(states)
        self.accepted += accepted
        out = []
        new_carried = np.zeros(len(states))
        for i, x in enumerate(states):
            new_carried[i] = x.particle.log_weight
            x.particle.log_weight = 0.0
            out.append(x.particle)
        self.histories = [x.history for x in states]
        return out, new_carried

    def rate(self) -> float:
        return self.accepted / self.moves if self.moves else 0.0
