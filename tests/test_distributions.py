"""Distributions: Python helpers, the NumPyro adapter, and proposals (values and tokens)."""

import math

import numpy as np
import numpyro.distributions as nd
import pytest

import ppl
from ppl import program, sample
from ppl.distributions import (
    Bernoulli,
    Categorical,
    Geometric,
    NumPyro,
    Proposed,
    UniformChoice,
    as_distribution,
)
from ppl.handlers import seed, trace
from tests.inference.toy import TABLE, VOCAB, toy_lm


@pytest.mark.parametrize(
    "dist, support",
    [
        (Bernoulli(0.3), [True, False]),
        (Categorical(["x", ("y",), 3], [1, 2, 3]), ["x", ("y",), 3]),
        (UniformChoice("abc"), ["a", "b", "c"]),
        (Geometric(0.4), list(range(200))),
    ],
)
def test_helpers_are_normalised(dist, support):
    assert math.fsum(math.exp(dist.log_prob(v)) for v in support) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    assert all(dist.sample(rng) in support for _ in range(50))


def test_helpers_reject_bad_parameters():
    with pytest.raises(ValueError, match="Bernoulli"):
        Bernoulli(1.5)
    with pytest.raises(ValueError, match="2 values but 1"):
        Categorical([1, 2], [1.0])
    assert Geometric(0.5).log_prob(-1) == -math.inf and Geometric(0.5).log_prob(1.5) == -math.inf


def test_numpyro_adapter_values_and_log_prob():
    d = as_distribution("sample", nd.Normal(1.0, 2.0))
    assert isinstance(d, NumPyro)
    x = d.sample(np.random.default_rng(0))
    assert isinstance(x, float)
    assert x == d.sample(np.random.default_rng(0))  # the key comes from the generator
    assert d.log_prob(x) == pytest.approx(float(nd.Normal(1.0, 2.0).log_prob(x)), rel=1e-6)
    v = as_distribution("sample", nd.Dirichlet(np.ones(3))).sample(np.random.default_rng(1))
    assert isinstance(v, np.ndarray) and v.shape == (3,) and v.sum() == pytest.approx(1.0)
    assert isinstance(as_distribution("s", nd.Poisson(3.0)).sample(np.random.default_rng(0)), int)
    assert as_distribution("observe", nd.Beta(2.0, 2.0)).log_prob(1.5) == -math.inf
    with pytest.raises(TypeError, match="needs a distribution"):
        as_distribution("sample", [0.5, 0.5])


def test_proposed_weight_is_log_p_minus_log_q():
    p, q = Bernoulli(0.2), Bernoulli(0.6)
    d = Proposed(p, q)
    assert d.log_prob(True) == pytest.approx(math.log(0.2))
    assert d.log_weight(True) == pytest.approx(math.log(0.2 / 0.6))
    assert d.log_weight(False) == pytest.approx(math.log(0.8 / 0.4))


@program
def rare_event():
    x = sample("x", Categorical(range(10), [0.91] + [0.01] * 9), proposal=UniformChoice(range(10)))
    return x == 9


@pytest.mark.statistical
def test_importance_with_a_proposal_is_unbiased():
    post = ppl.importance(rare_event, particles=4000, seed=0)
    # Z = 1 (no conditioning): the mean weight w_i = p/q estimates 1 with standard error
    # std(w)/sqrt(N); the self-normalised P(x = 9) = 0.01 has delta-method standard error
    # sqrt(sum_i wbar_i^2 (1[x_i = 9] - p_hat)^2); 4 standard errors each
    w = np.exp(post.log_weights)
    assert abs(w.mean() - 1.0) < 4 * w.std(ddof=1) / math.sqrt(len(w))
    wn = post.weights
    hits = np.array(post.values, dtype=float)
    p_hat = float(wn @ hits)
    se = math.sqrt(float(np.sum(wn**2 * (hits - p_hat) ** 2)))
    assert abs(p_hat - 0.01) < 4 * se
    assert all(
        c.log_prob == pytest.approx(math.log(0.91 if c.value == 0 else 0.01))
        for c in post.traces[0]
    )


UNIFORM_LM = ppl.models.FunctionLM(VOCAB, lambda prefix: [0, 1, 1, 1, 1], eos="<eos>", bos="<s>")


@program
def two_tokens_proposed():
    ctx = toy_lm.context("")
    guide = UNIFORM_LM.context("")
    for _ in range(2):
        tok = sample(ctx.next_token(), proposal=guide.next_token())
        ctx, guide = ctx + tok, guide + tok.id
        if tok.is_eos:
            break
    return ctx.text


def exact_two_tokens():
    out = {}
    for a, pa in zip(VOCAB, TABLE["<s>"]):
        if pa == 0:
            continue
        if a == "<eos>":
            out[""] = out.get("", 0) + pa
            continue
        for b, pb in zip(VOCAB, TABLE[a]):
            if pb > 0:
                text = a + ("" if b == "<eos>" else b)
                out[text] = out.get(text, 0) + pa * pb
    return out


@pytest.mark.statistical
def test_token_proposal_targets_the_model_distribution():
    post = ppl.importance(two_tokens_proposed, particles=6000, seed=3)
    exact = exact_two_tokens()
    w = np.exp(post.log_weights)
    # Z = 1: the mean weight is within 4 standard errors of 1
    assert abs(w.mean() - 1.0) < 4 * w.std(ddof=1) / math.sqrt(len(w))
    wn = post.weights
    for text, p in exact.items():
        hits = np.array([v == text for v in post.values], dtype=float)
        p_hat = float(wn @ hits)
        se = math.sqrt(float(np.sum(wn**2 * (hits - p_hat) ** 2))) + 1e-12
        # 4.5 standard errors per outcome, ~17 outcomes: a false alarm has probability < 1e-4
        assert abs(p_hat - p) < 4.5 * se, (text, p_hat, p, se)
    # a token choice's log probability is under the model, not the proposal
    c = post.traces[0][0]
    assert c.log_prob == pytest.approx(math.log(TABLE["<s>"][c.value.id]), rel=1e-5)


def test_direct_run_with_token_proposal_matches_compiled_choices_in_kind():
    tr = trace(seed(two_tokens_proposed, 0)).get_trace()
    assert 1 <= len(tr) <= 2
    assert tr[0].log_prob == pytest.approx(math.log(TABLE["<s>"][tr[0].value.id]), rel=1e-5)


def test_token_proposal_needs_plain_token_distributions():
    with pytest.raises(TypeError, match="token proposal"):
        ppl.distributions.proposed(toy_lm.context("").next_token(), Bernoulli(0.5))
