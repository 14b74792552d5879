"""A NumPyro latent mixed with language-model tokens: every algorithm targets the exact posterior.

The program draws a rate from Beta(2, 2), then up to three tokens of the enumerable toy LM, and
observes after each non-EOS token whether it is "a" as a Bernoulli(rate) event. Integrating the
rate out, a string s with n tokens of which k are "a" has unnormalised mass

    P_LM(s) * B(2 + k, 2 + n - k) / B(2, 2),

so Z, the posterior over strings and E[rate] = sum_s P(s) (2 + k) / (4 + n) are exact.
"""

import math

import numpy as np
import pytest
from scipy import stats

import ppl
from ppl.inference.engine import Engine
from ppl.inference.execution import Execution, run_forward
from ppl.inference.metropolis import Restart, UniformToken, mh_step
from tests.inference.checks import (
    check_unbiased,
    chi_square_pvalue,
    exact_chains,
    frequencies,
    tv_and_bound,
    weighted_estimates,
)
from tests.inference.toy import exact_mixed, rated_text

pytestmark = pytest.mark.statistical

Z, POSTERIOR, MEAN_RATE = exact_mixed()


def test_evidence_and_rate_are_unbiased_over_independent_runs():
    # Z_hat and Z_hat * (weighted mean rate) are unbiased estimates of Z and Z E[rate]; their
    # means over R independent runs are compared at 4 standard errors of the mean
    runs = [ppl.smc(rated_text, particles=8, ess_threshold=0.9, seed=100 + r) for r in range(250)]
    z = np.array([math.exp(p.log_evidence) for p in runs])
    zr = np.array([math.exp(p.log_evidence) * p.expectation(lambda v: v[1]) for p in runs])
    assert sum(len(p.resampled) for p in runs) > 0  # resampling was exercised
    for est, target in ((z, Z), (zr, Z * MEAN_RATE)):
        se = est.std(ddof=1) / math.sqrt(len(est))
        assert abs(est.mean() - target) < 4 * se, (est.mean(), target, se)


def test_large_run_matches_the_exact_string_posterior():
    post = ppl.smc(rated_text, particles=3000, ess_threshold=0.9, seed=7)
    dist = {}
    for (text, _), w in zip(post.values, post.weights):
        dist[text] = dist.get(text, 0.0) + w
    tv = 0.5 * sum(abs(dist.get(s, 0.0) - p) for s, p in POSTERIOR.items())
    # per-outcome standard error sqrt(p (1 - p) / ESS); |N(0, se^2)| has mean se sqrt(2/pi) and
    # variance se^2 (1 - 2/pi): TV is bounded by half the sum of means plus 4 sds of the sum
    se = np.array([math.sqrt(p * (1 - p) / post.final_ess) for p in POSTERIOR.values()])
    bound = 0.5 * (
        math.sqrt(2 / math.pi) * se.sum() + 4 * math.sqrt((1 - 2 / math.pi) * (se**2).sum())
    )
    assert tv < bound, (tv, bound)
    assert set(dist) <= set(POSTERIOR)


# -- the issue-4 algorithms on the same program --------------------------------------------------
#
# The rate is drawn before the first token, so it is not a regeneration point of MH: only the
# move from the start (m = 0) redraws it, with probability 1/(K+1) under "token" and always under
# "restart". Each check below covers the text *and* the rate, so a kernel that mishandled the
# latent (never refreshed it, or refreshed it without its likelihood) would fail.


def text_of(value):
    return value[0]


def rate_pit(values) -> np.ndarray:
    """Given its text (n tokens, k of them "a") the rate is exactly Beta(2 + k, 2 + n - k): its
    CDF at the drawn rate is uniform on (0, 1) under the exact joint law of (text, rate)."""
    return np.array(
        [stats.beta.cdf(r, 2 + s.count("a"), 2 + len(s) - s.count("a")) for s, r in values]
    )


@pytest.fixture(scope="module")
def exact_states():
    """1000 executions drawn exactly from the posterior (every log weight of `rated_text` is a
    Bernoulli log probability, <= 0, so rejection applies); shared, never mutated."""
    return exact_chains(Engine(rated_text, (), {}, seed=21), 1000)


def joint_pvalues(values) -> tuple[float, float]:
    """Chi-square of the texts against P(text) and Kolmogorov-Smirnov of the rate's PIT against
    the uniform law: together they test the joint law of (text, rate)."""
    texts = [v[0] for v in values]
    return chi_square_pvalue(texts, POSTERIOR), float(
        stats.kstest(rate_pit(values), "uniform").pvalue
    )


@pytest.mark.parametrize("proposal", [UniformToken(), Restart()], ids=["token", "restart"])
def test_mh_chains_started_exact_stay_exact(exact_states, proposal):
    # with C independent chains the states after any number of moves are C independent draws
    # of the posterior under a correct kernel: each p-value is uniform; four tests at 1e-3 give
    # a false alarm with probability < 4e-3
    assert min(joint_pvalues([x.particle.value for x in exact_states])) > 1e-3
    engine = Engine(rated_text, (), {}, seed=22)
    states = exact_states
    for _ in range(2):
        states, info = mh_step(engine, states, proposal)
        assert min(joint_pvalues([x.particle.value for x in states])) > 1e-3
    assert info.accepted.mean() > 0.1
    moved = np.mean(
        [y.particle.value[1] != x.particle.value[1] for x, y in zip(exact_states, states)]
    )
    assert moved > 0.1  # the latent itself was refreshed by the moves from the start


def test_joint_check_detects_a_rate_that_ignores_the_observations():
    # prior executions (rate not updated by the observed tokens) must fail the rate check
    engine = Engine(rated_text, (), {}, seed=23)
    runs = [Execution(p) for p in engine.new_particles(1000)]
    run_forward(engine, runs)
    assert joint_pvalues([r.particle.value for r in runs])[1] < 1e-3


def check_chains(per_chain_values: list[list]) -> None:
    """Independent chains: TV of the pooled text frequencies within its Monte Carlo bound
    (`tv_and_bound`), and the pooled mean rate within 4.5 between-chain standard errors
    (12 chains: Student t with 11 degrees of freedom, a false alarm has probability ~1e-3)."""
    freqs = np.array([frequencies([v[0] for v in vs], POSTERIOR) for vs in per_chain_values])
    tv, bound = tv_and_bound(freqs, POSTERIOR)
    assert tv < bound, (tv, bound)
    rates = np.array([np.mean([float(v[1]) for v in vs]) for vs in per_chain_values])
    se = rates.std(ddof=1) / math.sqrt(len(rates))
    assert abs(rates.mean() - MEAN_RATE) < 4.5 * se, (rates.mean(), MEAN_RATE, se)


@pytest.mark.parametrize(
    "proposal, init", [("token", "smc"), ("restart", "prior")], ids=["token-smc", "restart-prior"]
)
def test_mh_matches_the_exact_posterior(proposal, init):
    chains = 12
    post = ppl.mh(
        rated_text, chains=chains, steps=300, warmup=30, proposal=proposal, init=init, seed=31
    )
    assert 0 < post.acceptance_rate <= 1
    check_chains([[v for v, c in zip(post.values, post.chain) if c == k] for k in range(chains)])


def test_pimh_and_particle_gibbs_match_the_exact_posterior():
    pimh = [ppl.pimh(rated_text, particles=4, steps=50, seed=400 + r) for r in range(12)]
    check_chains([p.values for p in pimh])
    # each run's evidence is the mean of 50 independent unbiased SMC estimates: 4 standard errors
    z = np.array([math.exp(p.log_evidence) for p in pimh])
    assert abs(z.mean() - Z) < 4 * z.std(ddof=1) / math.sqrt(len(z))
    pgibbs = [ppl.pgibbs(rated_text, particles=4, steps=100, seed=500 + r) for r in range(12)]
    check_chains([p.values[10:] for p in pgibbs])


def check_weighted_runs(posts) -> None:
    """Z_hat, Z_hat p_hat(text) for every well-sampled text (`check_unbiased`) and Z_hat times
    the weighted mean rate are unbiased: R independent runs, 4 standard errors."""
    z = np.array([math.exp(p.log_evidence) for p in posts])
    check_unbiased([weighted_estimates(p, text_of) for p in posts], z, Z, POSTERIOR)
    zr = z * np.array([p.expectation(lambda v: float(v[1])) for p in posts])
    se = zr.std(ddof=1) / math.sqrt(len(zr))
    assert abs(zr.mean() - Z * MEAN_RATE) < 4 * se, (zr.mean(), Z * MEAN_RATE, se)


def test_smc_steer_is_exact_and_its_evidence_unbiased():
    check_weighted_runs(
        [ppl.smc_steer(rated_text, particles=4, children=3, seed=600 + r) for r in range(300)]
    )


@pytest.mark.parametrize("proposal", ["token", "restart"])
def test_resample_move_is_exact_and_its_evidence_unbiased(proposal):
    kernel = ppl.MHKernel(proposal, moves=1)
    posts = [
        ppl.smc(rated_text, particles=6, ess_threshold=1.0, rejuvenation=kernel, seed=700 + r)
        for r in range(300)
    ]
    assert np.mean([p.acceptance_rate for p in posts]) > 0.1
    check_weighted_runs(posts)


def test_twisted_smc_is_exact_and_its_evidence_unbiased():
    posts = [
        ppl.smc(rated_text, 3.0, particles=6, ess_threshold=0.9, seed=800 + r) for r in range(300)
    ]
    assert sum(len(p.resampled) for p in posts) > 0
    check_weighted_runs(posts)
