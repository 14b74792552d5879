"""`ctx.continuation()`: the log-probability of a given text after a context, in one call."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import ppl
from ppl import observe, program, sample
from ppl.models import FunctionLM
from tests.inference.checks import check_unbiased, chi_square_pvalue, weighted_estimates

VOCAB = ["a", "b", "c", "<eos>"]
EOS = 3


def next_token(prefix: tuple[int, ...]) -> list[float]:
    k = len(prefix)
    return [1.0 + k % 3, 2.0, 1.0 + sum(prefix) % 2, 0.7]


lm = FunctionLM(VOCAB, next_token, eos="<eos>")


def exact_log_prob(prefix: tuple[int, ...], text: str, eos: bool = False) -> float:
    """Token by token, from the model's own function."""
    total = 0.0
    for t in [*lm.encode(text, add_special_tokens=False), *([EOS] if eos else [])]:
        total += float(lm.next_token_logprobs(prefix)[t])
        prefix = (*prefix, t)
    return total


@pytest.mark.parametrize("eos", [False, True])
@pytest.mark.parametrize("text", ["", "b", "bc", "cab", "abcab"])
@pytest.mark.parametrize("fed", ["prompt unfed", "fed", "a token pending"])
def test_log_prob_is_the_sum_over_its_tokens(text, eos, fed):
    ctx = lm.context("ab")
    prefix = tuple(lm.encode("ab"))
    if fed != "prompt unfed":
        ctx.logprobs()
    if fed == "a token pending":
        ctx = ctx + "c"
        prefix = (*prefix, 2)
    got = ctx.continuation(eos=eos).log_prob(text)
    assert got == pytest.approx(exact_log_prob(prefix, text, eos), abs=1e-5)


def test_the_fallback_for_other_backends_scores_the_same():
    class Plain(FunctionLM):
        _extend_scored = ppl.models.LanguageModel._extend_scored

    plain = Plain(VOCAB, next_token, eos="<eos>")
    ctx = plain.context("ab") + "c"
    got = ctx.continuation(eos=True).log_prob("bca")
    assert got == pytest.approx(exact_log_prob((0, 1, 2), "bca", eos=True), abs=1e-5)


@program
def verified(prompt: str, answer: str):
    """Two free tokens, then the model must go on with `answer`."""
    ctx = lm.context(prompt)
    first = sample(ctx.next_token())
    ctx = ctx + first
    second = sample(ctx.next_token())
    ctx = ctx + second
    observe(ctx.continuation(eos=True), answer)
    return (first.id, second.id)


def exact_verified(prompt: str, answer: str) -> tuple[float, dict]:
    start = tuple(lm.encode(prompt))
    joint = {}
    for x in itertools.product(range(len(VOCAB)), repeat=2):
        lp = float(lm.next_token_logprobs(start)[x[0]])
        lp += float(lm.next_token_logprobs((*start, x[0]))[x[1]])
        joint[x] = math.exp(lp + exact_log_prob((*start, *x), answer, eos=True))
    z = sum(joint.values())
    return z, {x: v / z for x, v in joint.items()}


def test_observing_n_tokens_costs_one_forward_call_per_step():
    lm.reset_counters()
    post = ppl.smc(verified, "ab", "cabcab", particles=8, seed=0)
    assert post.stats["steps"] == 3 and lm.forward_calls == 3
    # every token of the text was fed once per distinct row: no token-by-token loop
    assert post.stats["forward_calls"] == 3


@pytest.mark.statistical
@pytest.mark.parametrize("method", [ppl.importance, ppl.smc])
def test_weighted_runs_are_exact(method):
    z_exact, p_exact = exact_verified("ab", "cab")
    posts = [method(verified, "ab", "cab", particles=10, seed=500 + r) for r in range(400)]
    z_hats = np.array([math.exp(p.log_evidence) for p in posts])
    check_unbiased([weighted_estimates(p) for p in posts], z_hats, z_exact, p_exact)


@pytest.mark.statistical
def test_mh_is_exact():
    _, p_exact = exact_verified("ab", "cab")
    post = ppl.mh(verified, "ab", "cab", chains=8, steps=600, warmup=100, seed=3)
    # chains are correlated: thin to every 10th state, then a chi-square test at level 1e-3
    values = [v for i, v in enumerate(post.values) if i % 10 == 0]
    assert chi_square_pvalue(values, p_exact) > 1e-3


def test_mistakes_are_named():
    with pytest.raises(TypeError, match="observed, not sampled"):
        ppl.importance(sampled_continuation, particles=2, seed=0)
    with pytest.raises(TypeError, match="observe\\(\\) at .*takes the text as a str"):
        ppl.importance(observed_number, particles=2, seed=0)


@program
def sampled_continuation():
    ctx = lm.context("ab")
    return sample(ctx.continuation())


@program
def observed_number():
    ctx = lm.context("ab")
    observe(ctx.continuation(), 3)
    return 0


@pytest.mark.slow
def test_embedded_model_scores_a_text_as_its_tokens_do(embedded_lm):
    ctx = embedded_lm.context(embedded_lm.chat("Is the sky blue? Answer Yes or No."))
    text = " Yes, it is blue."
    got = ctx.continuation(eos=True).log_prob(text)
    step = ctx
    expected = 0.0
    for t in [*embedded_lm.encode(text, add_special_tokens=False)]:
        expected += float(step.logprobs()[t])
        step = step + t
    eos = sorted(embedded_lm.eos_token_ids)
    expected += float(step.logprobs()[eos].logsumexp(0))
    assert got == pytest.approx(expected, abs=2e-3)


def test_scoring_many_texts_after_one_prompt_feeds_the_prompt_once():
    ctx = lm.context("abcab")
    lm.reset_counters()
    for text in ["a", "bc", "cab"]:
        ctx.continuation().log_prob(text)
    assert lm.tokens_fed == len(lm.encode("abcab")) + 0 + 1 + 2
