"""Shared Monte Carlo checks against exact posteriors (by default that of `no_double_a`)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
from scipy import stats

from ppl.inference.engine import Engine
from ppl.inference.execution import Execution, run_forward
from tests.inference.toy import exact_posterior

Z_EXACT, P_EXACT = exact_posterior()
OUTCOMES = sorted(P_EXACT)


def check_unbiased(
    estimates_per_run: list[dict[str, float]],
    z_hats: np.ndarray,
    z_exact: float = Z_EXACT,
    p_exact: dict[str, float] = P_EXACT,
) -> None:
    """Z_hat is unbiased for Z, and Z_hat p_hat(x) for Z p(x), for every well-sampled x.

    R independent runs give R independent estimates; their standard error bounds the error of
    the mean: 4 standard errors for Z, 4.5 per outcome (~90 outcomes: a false alarm has
    probability < 1e-3). The normal approximation needs the estimate of an outcome to be
    non-zero in enough runs (30 here); rarer outcomes are covered in aggregate by Z.
    """
    r = len(z_hats)
    assert abs(z_hats.mean() - z_exact) < 4 * z_hats.std(ddof=1) / math.sqrt(r)
    outcomes = sorted(p_exact)
    index = {x: i for i, x in enumerate(outcomes)}
    est = np.zeros((r, len(outcomes)))
    for k, run in enumerate(estimates_per_run):
        for x, v in run.items():
            est[k, index[x]] += v
    hits = (est > 0).sum(axis=0)
    well = hits >= 30
    assert well.sum() >= 10  # the check covers the bulk of the posterior
    se = est.std(axis=0, ddof=1) / math.sqrt(r)
    target = z_exact * np.array([p_exact[x] for x in outcomes])
    z = np.abs(est.mean(axis=0)[well] - target[well]) / se[well]
    assert z.max() < 4.5, (np.array(outcomes)[well][int(np.argmax(z))], z.max())


def weighted_estimates(post, key=lambda value: value) -> dict[str, float]:
    """Z_hat * normalised weight summed per `key(value)`: an estimate of Z p(x)."""
    out: dict[str, float] = {}
    z = math.exp(post.log_evidence)
    for value, w in zip(post.values, post.weights):
        if w > 0:
            out[key(value)] = out.get(key(value), 0.0) + z * float(w)
    return out


def frequencies(values: Sequence[Hashable], p_exact: dict = P_EXACT) -> np.ndarray:
    """Relative frequency of each outcome of `p_exact` (in sorted order) among `values`."""
    index = {x: i for i, x in enumerate(sorted(p_exact))}
    out = np.zeros(len(index))
    for v in values:
        out[index[v]] += 1
    return out / len(values)


def tv_and_bound(per_chain: np.ndarray, p_exact: dict = P_EXACT) -> tuple[float, float]:
    """TV of the pooled frequencies of independent chains (rows) from the exact posterior, and
    its bound from the between-chain standard error se of each outcome: |N(0, se^2)| has mean
    se sqrt(2/pi) and variance se^2 (1 - 2/pi), so TV is bounded by half the sum of the means
    plus 4 standard deviations of the sum."""
    pooled = per_chain.mean(axis=0)
    se = per_chain.std(axis=0, ddof=1) / math.sqrt(len(per_chain))
    exact = np.array([p_exact[x] for x in sorted(p_exact)])
    tv = 0.5 * np.abs(pooled - exact).sum()
    bound = 0.5 * (
        math.sqrt(2 / math.pi) * se.sum() + 4 * math.sqrt((1 - 2 / math.pi) * (se**2).sum())
    )
    return float(tv), float(bound)


def chi_square_pvalue(values: Sequence[Hashable], p_exact: dict = P_EXACT) -> float:
    """p-value of the counts of `values` against the exact posterior; outcomes with expected
    count below 20 are pooled into one cell so the chi-square approximation holds."""
    n = len(values)
    counts = {x: 0 for x in p_exact}
    for v in values:
        counts[v] += 1
    big = [x for x in sorted(p_exact) if n * p_exact[x] >= 20]
    small = [x for x in sorted(p_exact) if n * p_exact[x] < 20]
    obs = [counts[x] for x in big] + [sum(counts[x] for x in small)]
    exp = [n * p_exact[x] for x in big] + [n * sum(p_exact[x] for x in small)]
    return float(stats.chisquare(obs, exp).pvalue)


def exact_chains(engine: Engine, chains: int) -> list[Execution]:
    """Executions drawn exactly from the posterior by rejection, for programs whose every log
    weight is <= 0 (conditions, negative factors, observations of discrete events): keeping a
    prior draw with probability exp(w) yields an exact posterior draw."""
    out: list[Execution] = []
    while len(out) < chains:
        runs = [Execution(p) for p in engine.new_particles(4 * chains)]
        run_forward(engine, runs)
        for r in runs:
            if len(out) < chains and math.log(engine.rng.random()) < r.log_weight:
                out.append(r)
    return out
