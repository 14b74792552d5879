"""SMC and IS target the exact conditional distribution, and exp(log_evidence) is unbiased.

The program `no_double_a` over an enumerable toy LM has a known normaliser Z and posterior p.
Every tolerance below comes from the Monte Carlo error of the estimate it bounds: R independent
seeded runs give a sample of estimates whose between-run standard error sets the bound.
"""

import math

import numpy as np
import pytest

import ppl
from tests.inference.toy import exact_posterior, no_double_a

pytestmark = pytest.mark.statistical

Z_EXACT, P_EXACT = exact_posterior()

METHODS = {
    "smc-systematic": dict(method=ppl.smc, resampling="systematic", ess_threshold=0.9),
    "smc-stratified": dict(method=ppl.smc, resampling="stratified", ess_threshold=0.9),
    "smc-residual": dict(method=ppl.smc, resampling="residual", ess_threshold=0.9),
    "smc-multinomial": dict(method=ppl.smc, resampling="multinomial", ess_threshold=1.0),
    "importance": dict(method=ppl.importance),
}


def runs(name, particles, repeats, seed0):
    opts = dict(METHODS[name])
    method = opts.pop("method")
    return [
        method(no_double_a, particles=particles, seed=seed0 + r, **opts) for r in range(repeats)
    ]


@pytest.mark.parametrize("name", METHODS)
def test_evidence_is_unbiased(name):
    posts = runs(name, particles=10, repeats=600, seed0=1000)
    z = np.array([math.exp(p.log_evidence) for p in posts])
    se = z.std(ddof=1) / math.sqrt(len(z))
    # 4 standard errors: a false alarm has probability ~6e-5 under a correct sampler
    assert abs(z.mean() - Z_EXACT) < 4 * se, (z.mean(), Z_EXACT, se)
    if name.startswith("smc"):
        assert sum(len(p.resampled) for p in posts) > 0  # resampling was exercised


@pytest.mark.parametrize("name", METHODS)
def test_unnormalised_marginals_are_unbiased(name):
    # Z_hat * p_hat(x) is an unbiased estimate of Z * p(x) for every outcome x
    posts = runs(name, particles=10, repeats=600, seed0=5000)
    outcomes = sorted(P_EXACT)
    est = np.zeros((len(posts), len(outcomes)))
    index = {x: i for i, x in enumerate(outcomes)}
    for r, post in enumerate(posts):
        z = math.exp(post.log_evidence)
        for value, w in zip(post.values, post.weights):
            if w > 0:
                est[r, index[value]] += z * w
    mean = est.mean(axis=0)
    se = est.std(axis=0, ddof=1) / math.sqrt(len(posts))
    target = Z_EXACT * np.array([P_EXACT[x] for x in outcomes])
    seen = se > 0
    # outcomes never drawn must be rare enough that missing them is likely
    assert np.all(target[~seen] * len(posts) * 10 < 5 * Z_EXACT)
    zscores = np.abs(mean[seen] - target[seen]) / se[seen]
    # 4.5 sigma per outcome, over ~90 outcomes: a false alarm has probability < 1e-3
    assert zscores.max() < 4.5, (outcomes[int(np.argmax(zscores))], zscores.max())


@pytest.mark.parametrize("name", ["smc-systematic", "importance"])
def test_total_variation_within_monte_carlo_error(name):
    repeats, particles = 8, 2000
    posts = runs(name, particles=particles, repeats=repeats, seed0=9000)
    outcomes = sorted(P_EXACT)
    per_run = np.array([[post.distribution().get(x, 0.0) for x in outcomes] for post in posts])
    pooled = per_run.mean(axis=0)
    se = per_run.std(axis=0, ddof=1) / math.sqrt(repeats)
    exact = np.array([P_EXACT[x] for x in outcomes])
    tv = 0.5 * np.abs(pooled - exact).sum()
    # |N(0, se^2)| has mean se*sqrt(2/pi) and variance se^2 (1 - 2/pi): bound TV by its mean
    # plus 4 standard deviations of the sum
    mean_tv = 0.5 * math.sqrt(2 / math.pi) * se.sum()
    sd_tv = 0.5 * math.sqrt((1 - 2 / math.pi) * (se**2).sum())
    assert tv < mean_tv + 4 * sd_tv + 1e-12, (tv, mean_tv, sd_tv)


def test_single_large_run_matches_exact_distribution():
    post = ppl.smc(no_double_a, particles=20000, ess_threshold=0.9, seed=7)
    dist = post.distribution()
    tv = 0.5 * sum(abs(dist.get(x, 0.0) - p) for x, p in P_EXACT.items())
    # per-outcome standard error from the run's ESS: sqrt(p (1 - p) / ESS); same bound as above
    se = np.array([math.sqrt(p * (1 - p) / post.final_ess) for p in P_EXACT.values()])
    bound = 0.5 * (
        math.sqrt(2 / math.pi) * se.sum() + 4 * math.sqrt((1 - 2 / math.pi) * (se**2).sum())
    )
    assert tv < bound, (tv, bound)
    assert abs(post.log_evidence - math.log(Z_EXACT)) < 0.05
