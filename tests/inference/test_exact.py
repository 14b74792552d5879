"""`ppl.exact` against answers worked out by hand (closed forms, or enumerations written here
and in tests/inference/toy.py without ppl's inference)."""

from __future__ import annotations

import itertools
import math

import numpyro.distributions as nd
import pytest

import ppl
from ppl import condition, factor, observe, program, sample, twist
from ppl.distributions import Bernoulli, Categorical, Geometric, UniformChoice, proposed
from ppl.models import FunctionLM
from tests.inference.toy import exact_posterior, no_double_a, rated_text
from tests.lines import line_of


def test_tokens_conditions_and_factors_match_the_hand_enumeration():
    z, p = exact_posterior()
    post = ppl.exact(no_double_a)
    assert post.method == "exact"
    assert math.exp(post.log_evidence) == pytest.approx(z, rel=1e-6)
    got = post.distribution()
    assert set(got) == set(p)
    for text, prob in p.items():
        assert got[text] == pytest.approx(prob, rel=1e-5, abs=1e-9), text
    assert post.stats["finished"] == len(p)


@program
def coins(n):
    heads = 0
    for _ in range(n):
        heads += sample(Bernoulli(0.3))
    condition(heads >= 1)
    extra = sample(nd.Binomial(2, 0.5))
    return heads + extra


def test_discrete_choices_match_the_closed_form():
    post = ppl.exact(coins, 3)
    # heads ~ Binomial(3, 0.3) given heads >= 1, plus an independent Binomial(2, 0.5)
    heads = {k: math.comb(3, k) * 0.3**k * 0.7 ** (3 - k) for k in range(1, 4)}
    z = sum(heads.values())
    extra = {j: math.comb(2, j) / 4 for j in range(3)}
    want: dict[int, float] = {}
    for (k, pk), (j, pj) in itertools.product(heads.items(), extra.items()):
        want[k + j] = want.get(k + j, 0.0) + pk * pj / z
    # NumPyro scores in float32
    assert post.log_evidence == pytest.approx(math.log(1 - 0.7**3), rel=1e-6)
    got = post.distribution()
    assert set(got) == set(want)
    for v, prob in want.items():
        assert got[v] == pytest.approx(prob, rel=1e-6)


@program
def categorical_with_observe():
    x = sample(Categorical(["a", "b", "c"], [0.2, 0.3, 0.5]))
    y = sample(UniformChoice([1, 2]))
    observe(Bernoulli(0.9 if x == "a" else 0.2), True)
    factor(math.log(y))
    return x, y


def test_observe_and_factor_weight_each_execution():
    post = ppl.exact(categorical_with_observe)
    joint = {
        (x, y): px * 0.5 * (0.9 if x == "a" else 0.2) * y
        for x, px in (("a", 0.2), ("b", 0.3), ("c", 0.5))
        for y in (1, 2)
    }
    z = sum(joint.values())
    assert post.log_evidence == pytest.approx(math.log(z), rel=1e-12)
    got = post.distribution()
    for v, m in joint.items():
        assert got[v] == pytest.approx(m / z, rel=1e-12)


VOCAB = ["<s>", "a", "b", "<eos>"]


def next_weights(prefix):
    n = len(prefix) - 1
    return [0.0, 0.6, 0.3, 0.1 + 0.1 * n]


lm = FunctionLM(VOCAB, next_weights, eos="<eos>", bos="<s>")


def p_next(prefix):
    w = next_weights((0, *prefix))
    return [x / sum(w) for x in w]


def test_a_constrained_generate_is_the_model_conditioned_on_the_constraint():
    post = ppl.exact(ppl.generate, lm.context(""), ppl.Regex("a*b"), max_tokens=4)
    joint = {}
    for k in range(0, 3):  # "a" * k + "b" then EOS, within 4 tokens
        ids = [1] * k + [2, 3]
        p = 1.0
        for i, t in enumerate(ids):
            p *= p_next(tuple(ids[:i]))[t]
        joint["a" * k + "b"] = p
    z = sum(joint.values())
    assert post.log_evidence == pytest.approx(math.log(z), rel=1e-5)
    got = post.distribution()
    assert set(got) == set(joint)
    for text, m in joint.items():
        assert got[text] == pytest.approx(m / z, rel=1e-5)


@program
def observed_continuation():
    ctx = lm.context("")
    first = sample(ctx.next_token())
    condition(not first.is_eos)
    observe((ctx + first).continuation(eos=True), "ab")
    return first.text


def test_an_observed_continuation_scores_each_execution():
    post = ppl.exact(observed_continuation)
    joint = {}
    for t, text in ((1, "a"), (2, "b")):
        ids = [t, 1, 2, 3]
        p = 1.0
        for i, tok in enumerate(ids):
            p *= p_next(tuple(ids[:i]))[tok]
        joint[text] = p
    z = sum(joint.values())
    assert post.log_evidence == pytest.approx(math.log(z), rel=1e-5)
    for text, m in joint.items():
        assert post.distribution()[text] == pytest.approx(m / z, rel=1e-5)


@program
def twisted(strength):
    x = sample(Bernoulli(0.4))
    twist(strength * x)
    y = sample(Bernoulli(0.5))
    condition(x or y)
    return x


def test_twists_leave_the_answer_alone_and_proposals_enumerate_their_target():
    plain = ppl.exact(twisted, 0.0)
    assert plain.log_evidence == pytest.approx(math.log(1 - 0.6 * 0.5))
    assert plain.distribution()[True] == pytest.approx(0.4 / 0.7)
    steered = ppl.exact(twisted, 3.0)
    assert steered.log_evidence == pytest.approx(plain.log_evidence)
    assert steered.distribution() == pytest.approx(plain.distribution())

    @program
    def drawn_from_a_proposal():
        return sample(proposed(Bernoulli(0.2), Bernoulli(0.9)))

    assert ppl.exact(drawn_from_a_proposal).distribution() == pytest.approx({False: 0.8, True: 0.2})


@program
def unbounded():
    k = sample(Geometric(0.5))  # unbounded
    return k


@program
def swallowing():
    try:
        k = sample(Geometric(0.5))  # swallowing
    except Exception:  # the error must not be caught here
        k = -1
    return k


def test_a_choice_with_infinitely_many_values_is_named():
    for prog, marker in ((unbounded, "unbounded"), (swallowing, "swallowing")):
        with pytest.raises(ppl.NotEnumerable, match="Geometric") as caught:
            ppl.exact(prog)
        assert line_of(__file__, marker) in str(caught.value)
    with pytest.raises(ppl.NotEnumerable, match="Beta"):
        ppl.exact(rated_text)


def test_too_many_executions_is_an_error_with_the_bound():
    with pytest.raises(ppl.NotEnumerable, match="more than max_executions=50"):
        ppl.exact(no_double_a, max_executions=50)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="max_executions must be a whole number"):
            ppl.exact(no_double_a, max_executions=bad)


@program
def impossible():
    x = sample(Bernoulli(0.5))
    condition(x and not x)
    return x


def test_no_execution_of_positive_weight_says_what_rejected_them():
    with pytest.warns(ppl.InferenceWarning, match="every execution has zero weight"):
        post = ppl.exact(impossible)
    assert post.log_evidence == -math.inf and post.values == []
    assert "every execution has zero weight" in post.failure
    assert "condition(x and not x)" in post.failure


@program
def raising():
    x = sample(Bernoulli(0.5))
    if x:
        raise KeyError("boom")
    return x


def test_an_error_in_the_program_propagates():
    with pytest.raises(KeyError, match="boom"):
        ppl.exact(raising)
