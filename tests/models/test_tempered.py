"""`lm.tempered(T)`: the model whose next-token distributions are p ** (1/T), renormalised.

The references are computed here from the toy model's own function, tempered by the formula,
not through ppl's `Tempered` (the conditioned posterior: `ppl.exact` on a `FunctionLM` of that
formula).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import ppl
from ppl.models import FunctionLM
from ppl.models.tempered import Tempered
from ppl.workloads.fingerprint import model_digest

VOCAB = ["<s>", "a", "b", "c", "<eos>"]
A, B, C, EOS = 1, 2, 3, 4


def weights(prefix):
    """Prefix-dependent (the prefix starts with BOS): after an "a", "b" is likelier; EOS grows
    with the length."""
    n = len(prefix) - 1
    after_a = prefix[-1] == A
    return [0.0, 0.5, 0.4 if after_a else 0.2, 0.2, 0.1 + 0.1 * n]


def p_next(prefix, temperature):
    """The tempered next-token distribution after BOS and `prefix`."""
    w = np.array(weights((0, *prefix)), dtype=float)
    w = w / w.sum()
    q = w ** (1 / temperature)
    return q / q.sum()


@pytest.fixture
def lm():
    return FunctionLM(VOCAB, weights, eos="<eos>", bos="<s>")


@pytest.mark.parametrize("temperature", [0.3, 0.7, 1.0, 2.5])
def test_each_next_token_distribution_is_p_to_the_one_over_t(lm, temperature):
    model = lm.tempered(temperature)
    for prefix in [(), (A,), (A, B), (C, A, A)]:
        ctx = model.context("")
        for t in prefix:
            ctx = ctx + t
        got = ctx.logprobs().exp().numpy()
        np.testing.assert_allclose(got, p_next(prefix, temperature), rtol=1e-5)


def test_the_same_model_and_temperature_give_the_same_object(lm):
    assert lm.tempered(1) is lm
    hot = lm.tempered(0.5)
    assert isinstance(hot, Tempered) and hot is lm.tempered(0.5)
    assert hot.tempered(2) is lm  # temperatures multiply
    assert hot.tempered(0.5) is lm.tempered(0.25)
    assert repr(hot) == "FunctionLM(vocab_size=5).tempered(0.5)"


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "hot", True])
def test_a_temperature_must_be_a_positive_number(lm, bad):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        lm.tempered(bad)


def test_temperature_zero_says_why_not(lm):
    with pytest.raises(ValueError, match="greedy decoding"):
        lm.tempered(0)


def test_a_continuation_is_scored_under_the_tempered_model(lm):
    model = lm.tempered(0.6)
    ctx = model.context("a")
    got = ctx.continuation(eos=True).log_prob("bc")
    ids = [A, B, C, EOS]  # "a" is the prompt, then "b", "c" and EOS
    want = sum(math.log(p_next(tuple(ids[:k]), 0.6)[ids[k]]) for k in range(1, 4))
    assert got == pytest.approx(want, rel=1e-5)


def test_contexts_of_a_tempered_model_are_its_own(lm):
    hot = lm.tempered(0.5)
    ctx = hot.context("ab")
    assert ctx.lm is hot and ctx is not lm.context("ab")
    with pytest.raises(ValueError, match="another language model"):
        lm.compute_logprobs([ctx])


def test_the_fingerprint_tells_temperatures_apart(lm):
    digests = {model_digest(m) for m in (lm, lm.tempered(0.5), lm.tempered(0.7))}
    assert len(digests) == 3
    assert model_digest(lm.tempered(0.5)) == model_digest(Tempered(lm, 0.5))


def exact_posterior(temperature, max_tokens):
    """Every string of [ab]+ that ends with EOS within `max_tokens` tokens, under the tempered
    model written out by the formula: (evidence, {text: posterior probability})."""
    reference = FunctionLM(
        VOCAB, lambda prefix: p_next(prefix[1:], temperature), eos="<eos>", bos="<s>"
    )
    post = ppl.exact(ppl.generate, reference.context(""), ppl.Regex("[ab]+"), max_tokens=max_tokens)
    return math.exp(post.log_evidence), post.distribution()


@pytest.mark.statistical
@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_constrained_smc_targets_the_tempered_model_conditioned(lm, temperature):
    """R seeded runs: the mean evidence and the mean weighted marginals are within 4 standard
    errors of the exact values of the tempered model conditioned on the regular expression."""
    z_exact, p_exact = exact_posterior(temperature, 4)
    model = lm.tempered(temperature)
    runs = 60
    zs, marg = [], {x: [] for x in p_exact}
    for seed in range(runs):
        post = ppl.smc(
            ppl.generate, model.context(""), ppl.Regex("[ab]+"), max_tokens=4,
            particles=32, seed=seed, progress=False,
        )  # fmt: skip
        z = math.exp(post.log_evidence)
        zs.append(z)
        w = np.asarray(post.weights, dtype=float)
        for x in marg:
            marg[x].append(z * sum(wi for v, wi in zip(post.values, w) if v == x))
    zs = np.array(zs)
    assert abs(zs.mean() - z_exact) < 4 * zs.std(ddof=1) / math.sqrt(runs) + 1e-12
    for x, est in marg.items():
        est = np.array(est)
        se = est.std(ddof=1) / math.sqrt(runs)
        assert abs(est.mean() - z_exact * p_exact[x]) < 4 * se + 1e-9, x
    # and the tempered answer is not the untempered one: the evidences differ
    z_plain, _ = exact_posterior(1.0, 4)
    assert abs(math.log(z_exact) - math.log(z_plain)) > 0.1
