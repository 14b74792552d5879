"""Constrained inference targets the exact conditional distribution on an enumerable toy LM.

Tolerances come from Monte Carlo error: R independent seeded runs give a sample of estimates
whose standard error sets the bound (4 standard errors per check: a false alarm has probability
about 6e-5 under a correct sampler; 4.5 where many outcomes are checked at once).
"""

import math
from functools import cache

import numpy as np
import pytest
import torch

import ppl
from ppl import program
from ppl.constraints import predicate
from tests.constraints.toy import MAX_TOKENS, PARENS, exact, prefix_ok, toy_lm
from tests.inference.checks import frequencies, tv_and_bound

pytestmark = [
    pytest.mark.statistical,
    # a run of 8 particles sometimes ends with none finished: expected, not a failure here
    pytest.mark.filterwarnings("ignore::ppl.InferenceWarning"),
]


def no_ba(text):
    return "ba" not in text and text.count("(") <= 2


@program
def parens():
    return ppl.generate(toy_lm.context(""), constraint=PARENS, max_tokens=MAX_TOKENS)


@program
def predicate_only():
    return ppl.generate(toy_lm.context(""), where=no_ba, max_tokens=MAX_TOKENS)


@program
def both():
    return ppl.generate(toy_lm.context(""), PARENS, where=no_ba, max_tokens=MAX_TOKENS)


CASES = {
    "grammar": (parens, lambda toks: PARENS.matches("".join(toks))),
    "predicate": (predicate_only, lambda toks: prefix_ok(toks, no_ba)),
    "both": (
        both,
        lambda toks: PARENS.matches("".join(toks)) and prefix_ok(toks, no_ba),
    ),
}
PARTICLES = 8


@cache
def hand_exact(case):
    """(Z, {text: probability}) of `case` by the enumeration of tests/constraints/toy.py,
    independent of ppl's inference (seconds for a grammar: once per case)."""
    return exact(CASES[case][1])


METHODS = {
    "smc": dict(method=ppl.smc, ess_threshold=0.9),
    "importance": dict(method=ppl.importance),
}


def runs(case, name, particles, repeats, seed0):
    prog = CASES[case][0]
    opts = dict(METHODS[name])
    method = opts.pop("method")
    return [method(prog, particles=particles, seed=seed0 + r, **opts) for r in range(repeats)]


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("case", CASES)
def test_unnormalised_marginals_are_unbiased(case, name):
    # Z_hat * p_hat(x) is an unbiased estimate of Z * p(x) for every outcome x; summed over x it
    # is Z_hat, unbiased for Z
    z_exact, p_exact = hand_exact(case)
    posts = runs(case, name, particles=PARTICLES, repeats=250, seed0=100)
    outcomes = sorted(p_exact)
    index = {x: i for i, x in enumerate(outcomes)}
    est = np.zeros((len(posts), len(outcomes)))
    for r, post in enumerate(posts):
        z = math.exp(post.log_evidence) if post.log_evidence > -math.inf else 0.0
        for value, w in zip(post.values, post.weights):
            if w > 0:
                assert value in index, value  # every finished output is in the language
                est[r, index[value]] += z * w
    total = est.sum(axis=1)
    se_total = total.std(ddof=1) / math.sqrt(len(total))
    assert abs(total.mean() - z_exact) < 4 * se_total, (total.mean(), z_exact, se_total)
    mean = est.mean(axis=0)
    se = est.std(axis=0, ddof=1) / math.sqrt(len(posts))
    target = z_exact * np.array([p_exact[x] for x in outcomes])
    expected_draws = target / z_exact * len(posts) * PARTICLES
    seen = se > 0
    if name == "importance":
        # independent draws: an outcome expected 8 times is missed with probability e^-8 < 4e-4
        # (SMC's resampled copies cluster in a few runs, so no such count bound holds there)
        assert np.all(expected_draws[~seen] < 8), sorted(expected_draws[~seen])[-3:]
    # the per-run estimates of a rare outcome are mostly zero with a few large values (a
    # predicate's weights are heavy-tailed): the mean is Normal, as the z-test assumes, only
    # once the outcome is drawn many times, so the z-test covers outcomes expected >= 20 times
    common = expected_draws >= 20
    assert common.sum() >= 10
    missed = np.array(outcomes)[common & ~seen]
    assert len(missed) == 0, f"outcomes expected >= 20 times never drawn: {missed}"
    zscores = np.abs(mean[common] - target[common]) / se[common]
    assert zscores.max() < 4.5, (np.array(outcomes)[common][int(np.argmax(zscores))], zscores.max())


@pytest.mark.parametrize("case", CASES)
def test_ppl_exact_agrees_with_the_hand_enumeration(case):
    # `ppl.exact` is the reference of other tests and of the course; on constrained generation
    # (a grammar, a predicate, both) it must give the independent enumeration's answer
    z, p_exact = hand_exact(case)
    post = ppl.exact(CASES[case][0])
    assert post.log_evidence == pytest.approx(math.log(z), abs=1e-6)  # float32 log-probs
    got = post.distribution()
    assert set(got) == set(p_exact)
    for x, p in p_exact.items():
        assert got[x] == pytest.approx(p, rel=1e-5), x


@pytest.mark.parametrize("case", CASES)
def test_large_smc_run_matches_exact_distribution(case):
    _, p_exact = hand_exact(case)
    post = ppl.smc(CASES[case][0], particles=3000, ess_threshold=0.5, seed=11)
    dist = post.distribution()
    tv = 0.5 * sum(abs(dist.get(x, 0.0) - p) for x, p in p_exact.items())
    assert set(dist) <= set(p_exact)
    # per-outcome standard error from the run's ESS, sqrt(p (1 - p) / ESS); |N(0, se^2)| has
    # mean se sqrt(2/pi) and variance se^2 (1 - 2/pi): TV below its mean plus 4 sd of the sum
    se = np.array([math.sqrt(p * (1 - p) / post.final_ess) for p in p_exact.values()])
    bound = 0.5 * (
        math.sqrt(2 / math.pi) * se.sum() + 4 * math.sqrt((1 - 2 / math.pi) * (se**2).sum())
    )
    assert tv < bound, (tv, bound)


@pytest.mark.parametrize("accepts, max_checks", [(4, 1024), (1, 1024), (1, 2), (2, 3)])
def test_rejection_sampler_is_properly_weighted(accepts, max_checks):
    # E[W 1(t = i)] = w_i 1[i in A] for every token i: that is E[W f(t)] = mu(f) for every f.
    # Small budgets exercise the branch where the race stops before k + 1 acceptances.
    w = torch.tensor([0.3, 0.25, 0.2, 0.1, 0.08, 0.05, 0.02], dtype=torch.float64)
    accepted = {1, 3, 4, 6}
    gen = torch.Generator().manual_seed(accepts * 100 + max_checks)
    draws = 20000
    est = np.zeros((draws, len(w)))
    checks = []
    for r in range(draws):
        seen = []

        def accept(i, seen=seen):
            seen.append(i)
            return i in accepted

        t, log_w = predicate.draw(w.log(), accept, gen, accepts=accepts, max_checks=max_checks)
        assert len(seen) == len(set(seen)) <= max_checks  # each token checked at most once
        checks.append(len(seen))
        if t is not None:
            assert t in accepted and t in seen
            est[r, t] = math.exp(log_w)
    mean = est.mean(axis=0)
    se = est.std(axis=0, ddof=1) / math.sqrt(draws)
    exact_mu = np.array([w[i].item() if i in accepted else 0.0 for i in range(len(w))])
    assert np.all(mean[se == 0] == exact_mu[se == 0])
    z = np.abs(mean - exact_mu)[se > 0] / se[se > 0]
    assert z.max() < 4.5, z  # 4.5 sd over at most 7 tokens: false alarm < 5e-5
    if accepts >= len(accepted):  # every accepted token seen: the estimate is exact
        assert np.allclose(est.sum(axis=1), sum(exact_mu))


REST = "<rarer outcomes>"  # not a text of the toy vocabulary


def collapsed(values, p_exact, floor=0.01):
    """Outcomes of probability >= `floor` as they are, the rest pooled into one cell: the TV
    bound of `tv_and_bound` assumes roughly Normal per-outcome errors, which the counts of
    hundreds of rare outcomes in a dozen chains are not."""
    kept = {x for x, p in p_exact.items() if p >= floor}
    cells = {x: p for x, p in p_exact.items() if x in kept}
    cells[REST] = sum(p for x, p in p_exact.items() if x not in kept)
    return [v if v in kept else REST for v in values], cells


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("proposal", ["token", "restart"])
def test_mh_on_constrained_programs_matches_exact_distribution(case, proposal):
    # regeneration rolls the grammar state back to the chosen token's context: a kernel that kept
    # the state of the discarded suffix would propose texts outside the language or mis-weight them
    _, p_exact = hand_exact(case)
    chains = 12
    post = ppl.mh(
        CASES[case][0], chains=chains, steps=300, warmup=30, proposal=proposal, init="smc", seed=5
    )
    assert 0 < post.acceptance_rate <= 1
    assert set(post.values) <= set(p_exact)  # every state is a finished text of the language
    rows = []
    for k in range(chains):
        values, cells = collapsed([v for v, c in zip(post.values, post.chain) if c == k], p_exact)
        rows.append(frequencies(values, cells))
    tv, bound = tv_and_bound(np.array(rows), cells)
    assert tv < bound, (tv, bound)
