"""SMC steering: every particle extends into several children, N survive without replacement.

Weights are unnormalised and carried from step to step, starting at W_i = 1/N. At each step:

1. *Extend.* A running particle i with weight W_i becomes K children, each run to its next
   model call with its own token draws; child k gets weight (W_i / K) * G_ik, G_ik the potential
   met on the way (`observe`/`factor`/`condition` terms, twists). A finished particle stays one
   child with weight W_i. In expectation the children's total weight equals
   sum_i W_i E[G_i]: splitting is unbiased.
2. *Select.* Of the (up to) N*K children, N are kept without replacement: child j is kept with
   probability pi_j = min(1, c w_j) (w normalised, c fixed by sum_j pi_j = N; see
   `resampling.inclusion_probabilities`) and then carries weight W_j / pi_j. The heaviest
   children survive for certain with their weight unchanged; the others share the weight 1/c
   (in normalised units). Since E[1{kept} W_j / pi_j] = W_j, selection is unbiased too.

Both steps preserve expectations of weighted sums, so at the end sum_i W_i f(x_i) is an unbiased
estimate of Z E_pi[f] for every f: `log_evidence = log sum_i W_i` is unbiased for Z (in Z),
and the weighted particles target the program's exact posterior. With K = 1 the algorithm is
SMC with no resampling until more than N children exist, i.e. importance sampling.

All children of one step share one batched model call; siblings share their parent's context,
so their next-token distribution is computed once.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from ppl.compiler import Program
from ppl.inference import kernel
from ppl.inference import resampling as _resampling
from ppl.inference.engine import Engine, Particle
from ppl.inference.execution import is_waiting, settle, untwist
from ppl.inference.notices import count, fits
from ppl.inference.options import checks_options
from ppl.inference.posterior import Posterior, counts_mask_leaks
from ppl.inference.progress import Bar, particles_bar
from ppl.inference.record import recorder_for
from ppl.inference.weights import normalise


def extend(engine: Engine, ps: list[Particle], children: int) -> list[Particle]:
    """Each waiting particle as `children` forks run one step on; finished ones kept as they are.

    Parents' log weights are shared out: each child starts at log W - log K.
    """
    out: list[Particle] = []
    moved: list[Particle] = []
    log_k = math.log(children)
    for p in ps:
        if p.log_weight == -math.inf:
            continue
        if not is_waiting(p):
            out.append(p)
            continue
        kids = [p] + [p.fork() for _ in range(children - 1)]
        for kid in kids:
            kid.log_weight -= log_k
        out.extend(kids)
        moved.extend(kids)
    engine.resolve(moved)
    for kid in moved:
        untwist(kid)
    engine.advance(moved)
    settle(moved)
    return out


def select(
    rng: np.random.Generator, ps: list[Particle], n: int
) -> tuple[list[Particle], np.ndarray]:
    """N particles kept without replacement, with Horvitz-Thompson weights W_j / pi_j.

    Returns the kept particles and their indices in `ps`.
    """
    lw = np.array([p.log_weight for p in ps])
    alive = np.flatnonzero(lw > -math.inf)
    if len(alive) <= n:
        return [ps[i] for i in alive], alive
    pi = _resampling.inclusion_probabilities(normalise(lw), n)
    idx = _resampling.without_replacement(rng, pi)
    kept = []
    for i in idx.tolist():
        p = ps[i]
        p.log_weight -= math.log(pi[i])
        kept.append(p)
    return kept, idx


@counts_mask_leaks
@checks_options
def smc_steer(
    program: Program,
    *args: Any,
    particles: int = 4,
    children: int = 3,
    seed: int | None = None,
    errors: str = "raise",
    record: bool | None = None,
    progress: bool | None = None,
    **kwargs: Any,
) -> Posterior:
    """SMC steering (see the module docstring): `particles` N, each extended into `children` K.

    Returns weighted particles (at most N) of the exact posterior and an unbiased evidence
    estimate. `ancestors[t]` holds, for each kept child, the index of its parent.

    `record` keeps per-step snapshots of the N kept particles (texts, weights, ancestry, the
    prompt) in `Posterior.history`, for `Posterior.html()`: None (the default) when N is at
    most 256, dropping the record if it passes 32 MiB; True: always; False: never.

    `progress` is a progress bar (particles done out of N; step, running/finished/dead
    particles, ESS, running log evidence): True shows it, False hides it, None (the default)
    shows it when stderr is a terminal or in a Jupyter notebook.
    """
    particles = count("particles", particles)
    children = count("children", children)
    fits(f"smc_steer with particles={particles} x children={children}", particles * children)
    bar = particles_bar(progress, "smc_steer", int(particles))
    try:
        return _steer(program, args, kwargs, particles, children, seed, errors, record, bar)
    finally:
        bar.close()


def _steer(
    program: Program,
    args: tuple,
    kwargs: dict,
    particles: int,
    children: int,
    seed: int | None,
    errors: str,
    record: bool | None,
    bar: Bar,
) -> Posterior:
    start = time.perf_counter()
    engine = Engine(program, args, kwargs, seed, errors)
    n = int(particles)
    ps = engine.new_particles(n)
    for p in ps:
        p.log_weight = -math.log(n)
    engine.advance(ps)
    settle(ps)
    monitor = kernel.Monitor(n, bar, recorder_for(record, n))
    step = 0
    while True:
        # weights start at 1/N: their sum, not their mean, is the evidence estimate
        lw, ess, log_z = kernel.weigh(ps)
        monitor.weighed(step, ps, lw, ess, log_z)
        if not any(is_waiting(p) for p in ps):
            break
        # children keep their parent's identity through `extend`: record who came from whom
        owner: list[int] = []
        for i, p in enumerate(ps):
            if p.log_weight > -math.inf:
                owner.extend([i] * (children if is_waiting(p) else 1))
        kids = extend(engine, ps, int(children))
        ps, kept = select(engine.rng, kids, n)
        monitor.resampled_after(step, np.array([owner[j] for j in kept.tolist()], dtype=np.int64))
        step += 1
        if not ps:  # every child died at this step: its ESS is 0 and its evidence estimate 0
            monitor.ess.append(0.0)
            monitor.log_evidence.append(-math.inf)
            break
    monitor.done(step, ps)
    if not ps:  # every child died: keep the shape of a failed run
        ps = engine.new_particles(1)
        ps[0].log_weight = -math.inf
        lw, log_z = np.array([-math.inf]), -math.inf
    # Posterior weights are normalised from the log weights; log_weights stay the unnormalised
    # W_i (their sum is the evidence estimate)
    post = monitor.posterior(
        "smc_steer", engine, ps, lw, log_z, start, step, children=int(children)
    )
    monitor.finish(post)
    return post
