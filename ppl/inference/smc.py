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
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

import numpy as np

from ppl.compiler import Program
from ppl.inference import resampling as _resampling
from ppl.inference.engine import Engine, Particle
from ppl.inference.execution import Execution, Snapshot, is_waiting, settle, untwist
from ppl.inference.html import recorder_for
from ppl.inference.metropolis import MHKernel
from ppl.inference.notices import InferenceWarning as InferenceWarning  # its old home
from ppl.inference.notices import count, fits, warn
from ppl.inference.options import checks_options
from ppl.inference.posterior import Posterior, counts_mask_leaks
from ppl.inference.progress import particles_bar, particles_status
from ppl.inference.weights import ess_of, log_sum_exp, normalise


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
    ps = engine.new_particles(n)
    # resample-move keeps each particle's snapshots and its cumulative log weight at the last
    # resampling (`carried`): the particle's log weight is reset to 0 there, the MCMC target
    # needs the whole weight
    histories: list[list[Snapshot]] | None = [[] for _ in range(n)] if rejuvenation else None
    carried = np.zeros(n)
    recorder = recorder_for(record, n)
    log_z = 0.0
    ess_steps: list[float] = []
    log_z_steps: list[float] = []
    resampled: list[int] = []
    ancestors: list[np.ndarray] = []
    moves = accepted = 0
    step = 0
    bar = particles_bar(progress, method, n)
    try:
        running = ps
        while True:
            try:
                engine.advance(running)
            except Exception as e:
                _note(
                    e, f"raised while running {program.__qualname__} under {method} at step {step}"
                )
                raise
            settle(running)
            lw = np.array([p.log_weight for p in ps])
            ess = ess_of(lw)
            ess_steps.append(ess)
            log_z_steps.append(log_z + log_sum_exp(lw) - math.log(n))
            if bar.due():
                bar.show(*particles_status(step, ps, ess, n, log_z_steps[-1]))
            if recorder is not None:
                recorder.step(ps, lw)
            if not any(is_waiting(p) for p in ps):
                break
            if threshold > 0 and ess < threshold * n:
                log_z += log_sum_exp(lw) - math.log(n)
                idx = np.asarray(resampler(engine.rng, normalise(lw), n))
                carried = carried[idx] + lw[idx]
                ps = _resample(ps, idx)
                resampled.append(step)
                ancestors.append(idx)
                if recorder is not None:
                    recorder.resampled(idx)
                if histories is not None:
                    histories = [list(histories[i]) for i in idx.tolist()]
                    ps, histories, carried, k = _rejuvenate(
                        rejuvenation, engine, ps, histories, carried, step
                    )
                    moves += n
                    accepted += k
            running = [p for p in ps if is_waiting(p)]
            if histories is not None:
                for i, p in enumerate(ps):
                    if is_waiting(p):
                        snap = p.fork()
                        snap.log_weight += carried[i]
                        histories[i].append(Snapshot(step, snap, p.pending[0] == "sample"))
            engine.resolve(running)
            for p in running:
                untwist(p)
            step += 1
        bar.show(*particles_status(step, ps, ess, n, log_z_steps[-1]))
    finally:
        bar.close()
    log_z += log_sum_exp(lw) - math.log(n)
    post = _posterior(method, engine, ps, lw, log_z, ess_steps, resampled, ancestors, start)
    post.stats["steps"] = step
    post.stats["ess_threshold"] = threshold  # resampling when ESS < ess_threshold * particles
    post.log_evidence_steps = np.asarray(log_z_steps)
    if rejuvenation is not None:
        post.acceptance = np.array([accepted / moves if moves else 0.0])
    if recorder is not None:
        recorder.finish(post)
    return post


def _rejuvenate(
    kernel: Any,
    engine: Engine,
    ps: list[Particle],
    histories: list[list[Snapshot]],
    carried: np.ndarray,
    step: int,
) -> tuple[list[Particle], list[list[Snapshot]], np.ndarray, int]:
    """Apply the kernel to every particle, at the cumulative weights the MCMC target needs."""
    states = []
    for p, h, c in zip(ps, histories, carried):
        p.log_weight += c  # 0 since the resampling: now the whole weight
        states.append(Execution(p, h, step))
    states, accepted = kernel(engine, states, step)
    out = []
    new_carried = np.zeros(len(states))
    for i, x in enumerate(states):
        new_carried[i] = x.particle.log_weight
        x.particle.log_weight = 0.0
        out.append(x.particle)
    return out, [x.history for x in states], new_carried, accepted


def _resample(ps: list[Particle], idx: np.ndarray) -> list[Particle]:
    """The particles at `idx`, each copy after the first a fork; weights reset to 1."""
    out = []
    taken: set[int] = set()
    for i in idx.tolist():
        p = ps[i]
        if i in taken:
            p = p.fork()
        else:
            taken.add(i)
        out.append(p)
    for p in out:
        p.log_weight = 0.0
    return out


def _posterior(
    method: str,
    engine: Engine,
    ps: list[Particle],
    lw: np.ndarray,
    log_z: float,
    ess_steps: list[float],
    resampled: list[int],
    ancestors: list[np.ndarray],
    start: float,
) -> Posterior:
    n = len(ps)
    rejected = Counter(str(site) for site in engine.rejections)
    raised = Counter(engine.errors_seen)
    failure = None
    if log_z == -math.inf:
        reasons = [f"{k} rejected by {site}" for site, k in rejected.most_common()]
        reasons += [f"{k} raised {err}" for err, k in raised.most_common()]
        failure = (
            f"all {n} particles have zero weight ("
            + "; ".join(reasons or ["no reason recorded"])
            + ")"
        )
        warn(f"{method}: {failure}")
    elif raised:
        warn(
            f"{method}: {sum(raised.values())} particles raised and were dropped: "
            + "; ".join(raised)
        )
    stats = {
        "particles": n,
        "steps": engine.steps,
        "seconds": time.perf_counter() - start,
        "seed": engine.seed,
        **engine.counters(),
    }
    return Posterior(
        method=method,
        values=[p.value if p.done and p.log_weight > -math.inf else None for p in ps],
        log_weights=lw,
        log_evidence=log_z,
        ess=np.asarray(ess_steps),
        resampled=resampled,
        ancestors=ancestors,
        traces=[p.to_trace() for p in ps],
        failure=failure,
        diagnostics={"rejected_by": dict(rejected), "errors": dict(raised)},
        stats=stats,
    )


def _note(e: BaseException, text: str) -> None:
    if hasattr(e, "add_note"):
        e.add_note(text)
