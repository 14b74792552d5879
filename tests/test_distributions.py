"""Distributions: Python helpers, the NumPyro adapter, and proposals (values and tokens)."""

import math
import re

import numpy as np
import numpyro.distributions as nd
import pytest

import ppl
from ppl import observe, program, sample
from ppl.distributions import (
    Bernoulli,
    Categorical,
    Geometric,
    NumPyro,
    Proposed,
    UniformChoice,
    as_distribution,
    check_value,
)
from ppl.handlers import seed, trace
from tests.inference.toy import TABLE, VOCAB, toy_lm
from tests.lines import line_of


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


@pytest.mark.statistical
def test_token_proposal_targets_the_model_distribution():
    post = ppl.importance(two_tokens_proposed, particles=6000, seed=3)
    # the model's own distribution: `ppl.exact` enumerates a proposed choice's target, p
    exact = ppl.exact(two_tokens_proposed).distribution()
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


# ---------------------------------------------------------------------------------------------
# Values outside the support: an error at the user's line, never a weight of some other value


def _line(marker: str) -> str:
    """`file:line` of the line of this file that ends with the comment `marker`."""
    return line_of(__file__, marker)


@program
def observes_string():
    observe(Bernoulli(0.9), "False")  # observe-string


@program
def observes_two():
    observe(Bernoulli(0.9), 2)  # observe-two


@program
def observes_numpyro_two():
    observe(nd.Bernoulli(0.9), 2)  # observe-numpyro-two


@pytest.mark.parametrize(
    "prog, marker, dist, value",
    [
        (observes_string, "observe-string", "Bernoulli(0.9)", "'False' (a str)"),
        (observes_two, "observe-two", "Bernoulli(0.9)", "2 (an int)"),
        (observes_numpyro_two, "observe-numpyro-two", "NumPyro(BernoulliProbs)", "2 (an int)"),
    ],
)
@pytest.mark.parametrize("run", ["smc", "importance", "direct", "trace"])
def test_observed_value_outside_the_support_names_line_distribution_and_value(
    prog, marker, dist, value, run
):
    # `observe(Bernoulli(0.9), "False")` was scored as True: log Z = log 0.9
    with pytest.raises(TypeError) as info:
        if run == "direct":
            prog()
        elif run == "trace":
            trace(prog).get_trace()
        else:
            getattr(ppl, run)(prog, particles=2, seed=0)
    message = str(info.value)
    assert _line(marker) in message
    assert f"the value {value} is not a value of {dist}" in message
    assert "True and False (or 1 and 0)" in message or "support is Boolean()" in message


def test_observe_outside_any_program_names_the_line():
    with pytest.raises(TypeError, match="'False' \\(a str\\) is not a value of Bernoulli") as info:
        observe(Bernoulli(0.9), "False")  # observe-bare
    assert str(info.value).startswith(_line("observe-bare") + ": observe(): ")


@pytest.mark.parametrize(
    "value, log_p",
    [
        (True, math.log(0.9)),
        (False, math.log(0.1)),
        (1, math.log(0.9)),
        (0, math.log(0.1)),
        (1.0, math.log(0.9)),
        (0.0, math.log(0.1)),
        (np.bool_(True), math.log(0.9)),
        (np.int64(0), math.log(0.1)),
        (np.array(1), math.log(0.9)),
        (np.array(False), math.log(0.1)),
    ],
)
def test_bernoulli_takes_booleans_and_zero_or_one(value, log_p):
    d = Bernoulli(0.9)
    check_value("observe", d, value)
    assert d.log_prob(value) == pytest.approx(log_p)


def test_bernoulli_takes_jax_scalars():
    import jax.numpy as jnp

    d = Bernoulli(0.9)
    for value, log_p in [(jnp.array(True), math.log(0.9)), (jnp.int32(0), math.log(0.1))]:
        check_value("observe", d, value)
        assert d.log_prob(value) == pytest.approx(log_p)


@pytest.mark.parametrize(
    "dist, value",
    [
        (Bernoulli(0.9), "False"),
        (Bernoulli(0.9), "True"),
        (Bernoulli(0.9), 2),
        (Bernoulli(0.9), -1),
        (Bernoulli(0.9), 0.5),
        (Bernoulli(0.9), None),
        (Bernoulli(0.9), [1]),
        (Bernoulli(0.9), np.array([1, 0])),
        (Bernoulli(0.9), math.nan),
        (Geometric(0.5), -1),
        (Geometric(0.5), 2.5),
        (Geometric(0.5), "3"),
        (Geometric(0.5), True),
        (Geometric(0.5), math.inf),
        (Categorical([0, 1, 2]), "1"),
        (Categorical([0, 1, 2]), None),
        (UniformChoice("abc"), 1),
    ],
)
def test_values_outside_the_support_are_errors_for_observe_and_minus_inf_for_log_prob(dist, value):
    with pytest.raises(TypeError, match=f"is not a value of {re.escape(repr(dist))}"):
        check_value("observe", dist, value)
    assert dist.log_prob(value) == -math.inf


def test_counts_and_categorical_values_of_the_right_kind():
    g = Geometric(0.5)
    for value in (3, 3.0, np.int64(3), np.array(3)):
        check_value("observe", g, value)
        assert g.log_prob(value) == pytest.approx(4 * math.log(0.5))
    c = Categorical([0, 1, 2])
    for value in (1, 1.0, np.int64(1), True):
        check_value("observe", c, value)
        assert c.log_prob(value) == pytest.approx(math.log(1 / 3))
    # a value of the right kind that the list leaves out has probability 0, not an error: the
    # list may depend on the program's choices (n unknown in UniformChoice(range(n)))
    check_value("observe", c, 5)
    assert c.log_prob(5) == -math.inf
    assert Categorical(["a", np.array([1, 2])]).log_prob(np.array([1, 2])) == -math.inf


@program
def serial_numbers(seen):
    n = sample("n", UniformChoice(range(1, 9)))
    for k in seen:
        observe(UniformChoice(range(n)), k)
    return n


def test_a_value_left_out_by_some_choices_weighs_zero_there():
    post = ppl.importance(serial_numbers, [5, 2], particles=200, seed=0)
    assert post.log_evidence > -math.inf
    assert min(post.samples(100)) >= 6  # n <= 5 cannot give the serial number 5


def test_numpyro_values_outside_the_support():
    import jax.numpy as jnp

    bern = as_distribution("observe", nd.Bernoulli(0.9))
    # NumPyro's own log_prob of 2 (under jit, without validate_args) was 2 log 0.9 - log 0.1 > 0
    assert bern.log_prob(2) == -math.inf
    assert bern.log_prob(1) == pytest.approx(math.log(0.9), rel=1e-6)
    assert bern.log_prob(1.0) == pytest.approx(math.log(0.9), rel=1e-6)
    for value in (2, 0.5, "1", None):
        with pytest.raises(TypeError, match="is not a value of NumPyro\\(BernoulliProbs\\)"):
            check_value("observe", bern, value)
    cat = as_distribution("observe", nd.Categorical(jnp.array([0.2, 0.3, 0.5])))
    check_value("observe", cat, 2.0)
    assert cat.log_prob(2.0) == pytest.approx(math.log(0.5), rel=1e-6)
    for value in (3, -1, 1.5):
        with pytest.raises(TypeError, match="not a value of NumPyro\\(CategoricalProbs\\)"):
            check_value("observe", cat, value)
    normal = as_distribution("observe", nd.Normal(0.0, 1.0))
    check_value("observe", normal, np.array([0.5, -1.0]))  # iid observations, summed
    for value in (math.nan, math.inf, "0.5"):
        with pytest.raises(TypeError, match="not a value of NumPyro\\(Normal\\)"):
            check_value("observe", normal, value)
    # a support that depends on the parameters (a latent bound): probability 0, no error
    uniform = as_distribution("observe", nd.Uniform(0.0, 2.0))
    check_value("observe", uniform, 3.0)
    assert uniform.log_prob(3.0) == -math.inf
    binomial = as_distribution("observe", nd.Binomial(3, 0.5))
    check_value("observe", binomial, 5)
    assert binomial.log_prob(5) == -math.inf
