"""smc_steer and resampling without replacement: exact target, unbiased evidence, and particles
that finish early cost no model calls."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ppl
from ppl import program, sample
from ppl.distributions import Bernoulli
from ppl.inference.resampling import inclusion_probabilities, without_replacement
from ppl.models import FunctionLM
from tests.inference.checks import check_unbiased, weighted_estimates
from tests.inference.toy import exact_posterior, no_double_a

Z_EXACT, P_EXACT = exact_posterior()


def test_inclusion_probabilities_sum_to_n_and_saturate_the_heaviest():
    w = np.array([0.5, 0.2, 0.1, 0.1, 0.05, 0.05])
    pi = inclusion_probabilities(w, 3)
    assert pi.sum() == pytest.approx(3.0) and np.all(pi <= 1.0)
    assert pi[0] == 1.0  # 0.5 of the mass: kept for sure
    rest = pi[1:] / w[1:]
    assert np.allclose(rest, rest[0])  # the others in proportion to their weight
    assert np.array_equal(inclusion_probabilities(np.array([0.5, 0.5, 0.0]), 3), [1, 1, 0])


@pytest.mark.statistical
def test_without_replacement_draws_each_index_with_its_inclusion_probability():
    rng = np.random.default_rng(0)
    w = rng.random(12) ** 3
    pi = inclusion_probabilities(w, 5)
    reps = 20000
    counts = np.zeros(12)
    for _ in range(reps):
        idx = without_replacement(rng, pi)
        assert len(idx) == 5 and len(set(idx.tolist())) == 5
        counts[idx] += 1
    # each count is binomial(reps, pi_i): 4.5 standard errors per index, 12 indices
    se = np.sqrt(reps * pi * (1 - pi)) + 1e-12
    assert np.all(np.abs(counts - reps * pi) < 4.5 * se + 1e-9)


@pytest.mark.statistical
def test_smc_steer_evidence_and_marginals_are_unbiased():
    posts = [ppl.smc_steer(no_double_a, particles=4, children=3, seed=r) for r in range(500)]
    check_unbiased(
        [weighted_estimates(p) for p in posts], np.array([math.exp(p.log_evidence) for p in posts])
    )


def test_smc_steer_keeps_at_most_n_particles_and_reports_ancestry():
    post = ppl.smc_steer(no_double_a, particles=5, children=4, seed=1)
    assert post.num_particles <= 5 and post.method == "smc_steer"
    assert len(post.ancestors) == len(post.resampled) >= 1
    assert all(np.all(a >= 0) for a in post.ancestors)
    assert post.summary().startswith("smc_steer")
    with pytest.raises(ValueError, match="children"):
        ppl.smc_steer(no_double_a, children=0)


coin_lm = FunctionLM(["a", "b"], lambda prefix: [0.5, 0.5])


@program
def stops_early(n_long):
    """Particles whose coin is heads stop after one token; the others take 6."""
    short = sample(Bernoulli(0.5))
    ctx = coin_lm.context("a")
    for _ in range(1 if short else n_long):
        ctx = ctx + sample(ctx.next_token())
    return short


@pytest.mark.parametrize(
    "method",
    [
        lambda: ppl.smc(stops_early, 6, particles=16, seed=0),
        lambda: ppl.importance(stops_early, 6, particles=16, seed=0),
        lambda: ppl.smc_steer(stops_early, 6, particles=16, children=2, seed=0),
    ],
    ids=["smc", "importance", "smc_steer"],
)
def test_finished_particles_cost_no_model_calls(method):
    post = method()
    finished_early = sum(1 for v in post.values if v)
    assert 0 < finished_early < post.num_particles
    calls = post.stats["forward_calls"]
    assert calls == 6  # one batched call per step, for however many particles still run
    # tokens fed: the prompt once, then one token per particle still running at each later
    # step (particles that stopped after their first token are never fed again)
    assert post.stats["tokens_fed"] <= 2 + (post.num_particles * 2) * 5
