"""A NumPyro latent mixed with language-model tokens: SMC targets the exact posterior.

The program draws a rate from Beta(2, 2), then up to three tokens of the enumerable toy LM, and
observes after each non-EOS token whether it is "a" as a Bernoulli(rate) event. Integrating the
rate out, a string s with n tokens of which k are "a" has unnormalised mass

    P_LM(s) * B(2 + k, 2 + n - k) / B(2, 2),

so Z, the posterior over strings and E[rate] = sum_s P(s) (2 + k) / (4 + n) are exact.
"""

import math

import numpy as np
import numpyro.distributions as nd
import pytest

import ppl
from ppl import observe, program, sample
from ppl.distributions import Bernoulli
from tests.inference.toy import TABLE, VOCAB, toy_lm

pytestmark = pytest.mark.statistical

MAX_LEN = 3


@program
def rated_text():
    rate = sample("rate", nd.Beta(2.0, 2.0))
    ctx = toy_lm.context("")
    for _ in range(MAX_LEN):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        if tok.is_eos:
            break
        observe(Bernoulli(rate), tok.text == "a")
    return ctx.text, rate


def log_beta(a, b):
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def exact():
    """Z, the posterior over strings, and E[rate], by enumeration."""
    mass, rate_mass = {}, 0.0

    def walk(last, text, prob, n):
        nonlocal rate_mass
        for tid, p in enumerate(TABLE[last]):
            if p == 0:
                continue
            tok = VOCAB[tid]
            new, m = (text, n) if tok == "<eos>" else (text + tok, n + 1)
            if tok != "<eos>" and m < MAX_LEN:
                walk(tok, new, prob * p, m)
                continue
            k = new.count("a")
            w = prob * p * math.exp(log_beta(2 + k, 2 + m - k) - log_beta(2, 2))
            mass[new] = mass.get(new, 0.0) + w
            rate_mass += w * (2 + k) / (4 + m)

    walk("<s>", "", 1.0, 0)
    z = sum(mass.values())
    return z, {s: w / z for s, w in mass.items()}, rate_mass / z


Z, POSTERIOR, MEAN_RATE = exact()


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
