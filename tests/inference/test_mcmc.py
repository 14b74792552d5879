"""MCMC over program traces: regeneration MH, PIMH and particle Gibbs on the enumerable toy LM.

Two kinds of check:

* stationarity: chains started from the exact posterior must still follow it after any number
  of moves. With C independent chains the states at a given step are C independent draws, so
  their counts are multinomial(C, p) exactly and a chi-square test applies;
* long runs: independent chains (one per seed for PIMH and particle Gibbs) give independent
  estimates of the posterior; their spread gives the Monte Carlo standard error that bounds the
  total variation distance, as in test_exactness.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import ppl
from ppl import condition, program, sample
from ppl.distributions import Bernoulli
from ppl.inference.engine import Engine
from ppl.inference.metropolis import Restart, UniformToken, mh_init, mh_step
from tests.inference.checks import (
    chi_square_pvalue,
    exact_chains,
    frequencies,
    tv_and_bound,
)
from tests.inference.toy import exact_posterior, no_double_a, toy_lm

Z_EXACT, P_EXACT = exact_posterior()


class LastToken:
    """A deliberately wrong proposal: always regenerates the last token but claims to be
    uniform. Used to show that the stationarity check can fail."""

    def choose(self, tokens, rng):
        return len(tokens)

    def log_prob(self, tokens, m):
        return -math.log(len(tokens) + 1)


@pytest.mark.statistical
@pytest.mark.parametrize("proposal", [UniformToken(), Restart()], ids=["token", "restart"])
def test_chains_started_exact_stay_exact(proposal):
    engine = Engine(no_double_a, (), {}, seed=11)
    states = exact_chains(engine, 1500)
    assert chi_square_pvalue([x.particle.value for x in states]) > 1e-3
    pvalues = []
    for _ in range(3):
        states, info = mh_step(engine, states, proposal)
        pvalues.append(chi_square_pvalue([x.particle.value for x in states]))
    assert info.accepted.mean() > 0.1
    # three tests at 1e-3 each: a false alarm has probability < 3e-3 under a correct kernel
    assert min(pvalues) > 1e-3, pvalues


@pytest.mark.statistical
def test_stationarity_check_detects_a_wrong_acceptance_ratio():
    engine = Engine(no_double_a, (), {}, seed=12)
    states = exact_chains(engine, 1500)
    for _ in range(4):
        states, _ = mh_step(engine, states, LastToken())
    assert chi_square_pvalue([x.particle.value for x in states]) < 1e-3


@pytest.mark.statistical
@pytest.mark.parametrize("proposal", ["token", "restart"])
def test_mh_matches_the_exact_posterior(proposal):
    post = ppl.mh(no_double_a, chains=12, steps=400, warmup=50, proposal=proposal, seed=3)
    assert post.num_particles == 12 * 400 and post.log_evidence is None
    assert 0 < post.acceptance_rate <= 1
    per_chain = np.array(
        [frequencies([v for v, c in zip(post.values, post.chain) if c == k]) for k in range(12)]
    )
    tv, bound = tv_and_bound(per_chain)
    assert tv < bound, (tv, bound)


@pytest.mark.statistical
def test_pimh_matches_the_exact_posterior_and_its_evidence_is_unbiased():
    posts = [ppl.pimh(no_double_a, particles=5, steps=60, seed=100 + r) for r in range(12)]
    tv, bound = tv_and_bound(np.array([frequencies(p.values) for p in posts]))
    assert tv < bound, (tv, bound)
    # each run's evidence is a mean of 60 independent unbiased SMC estimates; 4 standard errors
    z = np.array([math.exp(p.log_evidence) for p in posts])
    assert abs(z.mean() - Z_EXACT) < 4 * z.std(ddof=1) / math.sqrt(len(z))


@pytest.mark.statistical
def test_particle_gibbs_matches_the_exact_posterior():
    posts = [ppl.pgibbs(no_double_a, particles=4, steps=120, seed=200 + r) for r in range(12)]
    assert all(0 < p.acceptance_rate <= 1 for p in posts)
    tv, bound = tv_and_bound(np.array([frequencies(p.values[20:]) for p in posts]))
    assert tv < bound, (tv, bound)


def test_mh_batches_chains_into_one_model_call_per_step():
    from tests.inference.toy import toy_lm

    toy_lm.reset_counters()
    one = ppl.mh(no_double_a, chains=1, steps=20, proposal="restart", seed=0)
    many = ppl.mh(no_double_a, chains=16, steps=20, proposal="restart", seed=0)
    # a restart regenerates at most MAX_LEN tokens, plus the initial runs: 16 chains cost
    # no more model calls per step than one chain would at its longest
    assert many.stats["forward_calls"] <= 5 * (20 + 5)
    assert many.stats["forward_calls"] < 4 * one.stats["forward_calls"]


def test_mh_regeneration_reuses_the_prefix():
    """Regenerating from token k feeds the model only the new tokens after it."""
    from tests.inference.toy import toy_lm

    engine = Engine(no_double_a, (), {}, seed=5)
    (x,) = exact_chains(engine, 1)
    toy_lm.reset_counters()
    fed_before = toy_lm.tokens_fed
    states, _ = mh_step(engine, [x], _Fixed(len(x.tokens())))
    # regenerating the last token: its distribution is already known, so at most the tokens
    # drawn after it are fed, and at most MAX_LEN of them
    assert toy_lm.tokens_fed - fed_before <= 4


class _Fixed:
    def __init__(self, m):
        self.m = m

    def choose(self, tokens, rng):
        return min(self.m, len(tokens))

    def log_prob(self, tokens, m):
        return 0.0


def test_bad_arguments_and_proposals_are_reported():
    with pytest.raises(ValueError, match="chains"):
        ppl.mh(no_double_a, chains=0)
    with pytest.raises(ValueError, match="steps"):
        ppl.mh(no_double_a, steps=-1)
    with pytest.raises(ValueError, match="unknown proposal 'nope'"):
        ppl.mh(no_double_a, proposal="nope")
    with pytest.raises(TypeError, match="choose"):
        ppl.mh(no_double_a, proposal=object())

    class Bad:
        def choose(self, tokens, rng):
            return 99

        def log_prob(self, tokens, m):
            return 0.0

    with pytest.raises(ValueError, match=r"Bad.choose returned 99; it must be an int in 0\.\."):
        ppl.mh(no_double_a, proposal=Bad(), steps=2, seed=0)
    with pytest.raises(ValueError, match="particles must be an integer >= 2"):
        ppl.pgibbs(no_double_a, particles=1)


def test_mh_reports_an_impossible_program():
    @program
    def impossible():
        x = sample(Bernoulli(0.5))
        condition(x > 1)
        return x

    with pytest.warns(ppl.InferenceWarning, match=r"no execution with positive weight"):
        post = ppl.mh(impossible, chains=2, steps=3, seed=0)
    assert "condition(x > 1)" in post.failure and post.num_particles == 0


def test_mh_same_seed_same_chains():
    a = ppl.mh(no_double_a, chains=3, steps=30, seed=9)
    b = ppl.mh(no_double_a, chains=3, steps=30, seed=9)
    assert a.values == b.values and np.array_equal(a.acceptance, b.acceptance)


@pytest.mark.statistical
def test_chains_started_from_smc_follow_the_posterior_from_their_first_step():
    # init="smc" draws each chain's start from an SMC sweep of 1500 particles (bias O(1/N)),
    # then one move keeps the law: the 1500 states are independent draws close to the exact
    # posterior, chi-square at 1e-3. The prior start (constraint met, factor ignored) fails the
    # same check, so the check sees where chains start.
    smc = ppl.mh(no_double_a, chains=1500, steps=1, init="smc", seed=3)
    assert chi_square_pvalue(smc.values) > 1e-3
    assert smc.stats["init"] == "smc" and 0 < smc.stats["init_forward_calls"] <= 4
    assert smc.stats["forward_calls"] > smc.stats["init_forward_calls"]
    prior = ppl.mh(no_double_a, chains=1500, steps=1, init="prior", seed=3)
    assert chi_square_pvalue(prior.values) < 1e-3


def test_mh_goes_on_from_the_last_states_of_an_mcmc_posterior():
    first = ppl.mh(no_double_a, chains=3, steps=5, seed=1)
    engine = Engine(no_double_a, (), {}, seed=2)
    last = [[v for v, c in zip(first.values, first.chain) if c == k][-1] for k in range(3)]
    assert [x.particle.value for x in mh_init(engine, 3, first)] == last
    # a different number of chains: each starts from one of those last states
    assert {x.particle.value for x in mh_init(engine, 5, first)} <= set(last)
    pimh = ppl.pimh(no_double_a, particles=4, steps=3, seed=0)
    more = ppl.mh(no_double_a, chains=2, steps=4, init=pimh, seed=0)
    assert more.stats["init_forward_calls"] == 0 and more.stats["init"] == "pimh Posterior"


def test_bad_starting_points_are_reported():
    with pytest.raises(ValueError, match="init must be 'prior', 'smc' or a Posterior"):
        ppl.mh(no_double_a, init="nope")
    with pytest.raises(ValueError, match="a 'smc' Posterior keeps only values.*init='smc'"):
        ppl.mh(no_double_a, init=ppl.smc(no_double_a, particles=4, seed=0))

    @program
    def other():
        return sample(Bernoulli(0.5))

    with pytest.raises(ValueError, match=r"comes from a run of .*other, not of no_double_a"):
        ppl.mh(no_double_a, init=ppl.mh(other, chains=2, steps=2, seed=0))

    with pytest.raises(ValueError, match="no_double_a with other arguments"):
        ppl.mh(no_double_a, 3, init=ppl.mh(no_double_a, 2, chains=2, steps=2, seed=0))

    @program
    def impossible_after_tokens():
        ctx = toy_lm.context("")
        ctx = ctx + sample(ctx.next_token())
        condition(False)
        return ctx.text

    with pytest.warns(ppl.InferenceWarning, match="init='smc': every one of the 4 particles"):
        post = ppl.mh(impossible_after_tokens, chains=4, init="smc", seed=0)
    assert post.failure.startswith("init='smc': every one of the 4 particles")
