"""IS, SMC and NUTS agree with the analytic posterior of conjugate models.

Every bound is 4 Monte Carlo standard errors of the estimate it checks (a false alarm has
probability ~6e-5 per check under a correct sampler):

* IS and SMC (no language-model step here, so SMC never resamples): the self-normalised mean
  sum_i w_i x_i has delta-method standard error sqrt(sum_i w_i^2 (x_i - mean)^2), w normalised.
* NUTS: the chain mean has standard error sd / sqrt(ESS), with sd the exact posterior standard
  deviation and ESS NumPyro's effective sample size of the chain. The sample variance of a
  near-normal posterior has standard error var * sqrt(2 / ESS).
"""

import math

import numpy as np
import numpyro.distributions as nd
import pytest

import ppl
from ppl import observe, program, sample

pytestmark = pytest.mark.statistical

FLIPS = np.array([1, 0, 1, 1, 1, 0, 1, 1, 0, 1])
HEADS, N_FLIPS = int(FLIPS.sum()), len(FLIPS)
Y = np.array([0.8, 1.9, 1.2, 0.4, 1.5])
PRIOR_SD = 2.0


@program
def beta_bernoulli(flips):
    rate = sample("rate", nd.Beta(2.0, 2.0))
    observe(nd.Bernoulli(rate).expand([len(flips)]), flips)
    return rate


@program
def normal_normal(ys):
    mu = sample("mu", nd.Normal(0.0, PRIOR_SD))
    for y in ys:
        observe(nd.Normal(mu, 1.0), y)
    return mu


def beta_exact():
    a, b = 2 + HEADS, 2 + N_FLIPS - HEADS
    return a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))


def normal_exact():
    precision = 1 / PRIOR_SD**2 + len(Y)
    return Y.sum() / precision, 1 / precision


CASES = {
    "beta-bernoulli": (beta_bernoulli, FLIPS, beta_exact(), "rate"),
    "normal-normal": (normal_normal, Y, normal_exact(), "mu"),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", [ppl.importance, ppl.smc], ids=["importance", "smc"])
def test_weighted_methods_match_the_analytic_mean(case, method):
    prog, data, (mean, var), latent = CASES[case]
    post = method(prog, data, particles=2000, seed=1)
    w = post.weights
    x = np.array(post.values, dtype=float)
    est = float(w @ x)
    se = math.sqrt(float(np.sum(w**2 * (x - est) ** 2)))
    assert abs(est - mean) < 4 * se, (est, mean, se)
    assert se < 0.1 * math.sqrt(var)  # the check has power: the error bar is narrow
    assert post.traces[0].addresses() == [latent]


@pytest.mark.parametrize("case", CASES)
def test_nuts_matches_the_analytic_mean_and_variance(case):
    prog, data, (mean, var), _ = CASES[case]
    post = ppl.nuts(prog, data, samples=1500, warmup=500, seed=2)
    x = np.array(post.values, dtype=float)
    (ess,) = post.diagnostics["effective_sample_size"].values()
    assert ess > 200
    assert abs(x.mean() - mean) < 4 * math.sqrt(var / ess), (x.mean(), mean)
    assert abs(x.var() - var) < 4 * var * math.sqrt(2 / ess), (x.var(), var)
    assert post.diagnostics["divergences"] == 0
