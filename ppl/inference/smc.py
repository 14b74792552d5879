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
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections import Counter
from typing import Any

import numpy as np

from ppl.compiler import Program
from ppl.inference import resampling as _resampling
from ppl.inference.engine import Engine, Particle
from ppl.inference.posterior import Posterior, ess_of, log_sum_exp, normalise


class InferenceWarning(RuntimeWarning):
    """A run finished but something about it needs the user's attention."""


def smc(
    program: Program,
    *args: Any,
    particles: int = 16,
    ess_threshold: float = 0.5,
    resampling: str = "systematic",
    seed: int | None = None,
    progress: bool | None = None,
    errors: str = "raise",
    **kwargs: Any,
) -> Posterior:
    """Sequential Monte Carlo: `particles` executions of `program(*args, **kwargs)`.

    Args:
        particles: number of particles N.
        ess_threshold: resample when ESS < ess_threshold * N (0: never, 1: at every step).
        resampling: "systematic", "stratified", "residual", "multinomial", or a function
            `(rng, weights, n) -> indices`.
        seed: drives every random choice; the same seed reproduces the run on the CPU.
        progress: show a progress bar (default: when stderr is a terminal).
        errors: "raise" (an exception in a particle stops the run and propagates) or "drop"
            (that particle gets weight zero; the errors are listed in `diagnostics`).
    """
    if not 0.0 <= ess_threshold <= 1.0:
        raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold}")
    resampler = _resampling.get(resampling)
    return _run(
        "smc", program, args, kwargs, particles, ess_threshold, resampler, seed, progress, errors
    )


def importance(
    program: Program,
    *args: Any,
    particles: int = 16,
    seed: int | None = None,
    progress: bool | None = None,
    errors: str = "raise",
    **kwargs: Any,
) -> Posterior:
    """Importance sampling with the program's own choices as the proposal (likelihood weighting).

    The weight of an execution is the product of its `observe`, `factor` and `condition` terms;
    `log_evidence` is the log of their mean, an unbiased estimate of Z in Z.
    """
    return _run("importance", program, args, kwargs, particles, 0.0, None, seed, progress, errors)


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
) -> Posterior:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"particles must be a positive integer, got {n!r}")
    start = time.perf_counter()
    engine = Engine(program, args, kwargs, seed, errors)
    ps = engine.new_particles(n)
    log_z = 0.0
    ess_steps: list[float] = []
    resampled: list[int] = []
    ancestors: list[np.ndarray] = []
    bar = _progress_bar(method, progress)
    try:
        while True:
            try:
                engine.advance(ps)
            except Exception as e:
                _note(
                    e,
                    f"raised while running {program.__qualname__} under {method} "
                    f"at step {engine.steps}",
                )
                raise
            lw = np.array([p.log_weight for p in ps])
            ess = ess_of(lw)
            ess_steps.append(ess)
            waiting = any(p.pending is not None and p.log_weight > -math.inf for p in ps)
            if not waiting:
                break
            if threshold > 0 and ess < threshold * n:
                log_z += log_sum_exp(lw) - math.log(n)
                idx = resampler(engine.rng, normalise(lw), n)
                ps = _resample(ps, idx)
                resampled.append(engine.steps)
                ancestors.append(np.asarray(idx))
            engine.resolve(ps)
            if bar is not None:
                live = sum(p.alive for p in ps)
                bar.set_postfix_str(f"ESS {ess:.1f}/{n}, {live} running", refresh=False)
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    log_z += log_sum_exp(lw) - math.log(n)
    return _posterior(method, engine, ps, lw, log_z, ess_steps, resampled, ancestors, start)


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
        warnings.warn(f"{method}: {failure}", InferenceWarning, stacklevel=3)
    elif raised:
        warnings.warn(
            f"{method}: {sum(raised.values())} particles raised and were dropped: "
            + "; ".join(raised),
            InferenceWarning,
            stacklevel=3,
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
        traces=[p.trace.to_list() if p.trace is not None else [] for p in ps],
        failure=failure,
        diagnostics={"rejected_by": dict(rejected), "errors": dict(raised)},
        stats=stats,
    )


def _progress_bar(method: str, progress: bool | None) -> Any:
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc=method, unit="step", leave=False)


def _note(e: BaseException, text: str) -> None:
    if hasattr(e, "add_note"):
        e.add_note(text)
