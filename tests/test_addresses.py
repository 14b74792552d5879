"""Addresses and traces: stable automatic addresses, names, sub-programs, and the score."""

import inspect
import math

import pytest

import ppl
from ppl import condition, factor, observe, program, sample
from ppl.distributions import Bernoulli, Categorical
from ppl.handlers import seed, trace

ONE = Categorical([1])
COIN = Bernoulli(0.25)


def line_of(fn, text):
    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, line in enumerate(lines) if text in line)


def compiled_trace(prog, *args, seed_=0):
    post = ppl.importance(prog, *args, particles=1, seed=seed_)
    return post.traces[0], post.values[0]


@program
def leaf(x):
    y = sample("y", Categorical([1, 2]))
    z = sample(COIN)
    return x + y + z


@program
def looping(n):
    total = 0
    for _ in range(n):
        total += sample(ONE)  # the loop's choice
    a = leaf(total)
    b = leaf(a) + sample("named", ONE)  # two sites on one line
    return b


def test_automatic_addresses_follow_statement_and_iteration():
    tr, _ = compiled_trace(looping, 3)
    loop = line_of(looping.fn, "the loop's choice")
    first = line_of(looping.fn, "a = leaf(total)")
    second = line_of(looping.fn, "two sites on one line")
    leaf_z = line_of(leaf.fn, "z = sample(COIN)")
    assert tr.addresses() == [
        f"looping:{loop}#0",
        f"looping:{loop}#1",
        f"looping:{loop}#2",
        f"looping:{first}#0/y",
        f"looping:{first}#0/leaf:{leaf_z}#0",
        f"looping:{second}#0/y",
        f"looping:{second}#0/leaf:{leaf_z}#0",
        "named",
    ]
    assert tr[f"looping:{loop}#1"].value == 1
    assert tr[f"looping:{first}#0/y"].site.function == "leaf"


def test_addresses_are_stable_across_runs_and_equal_compiled_and_direct():
    for s in range(5):
        tr, value = compiled_trace(looping, 2, seed_=s)
        direct = trace(seed(looping, s))
        assert direct(2) == value
        assert list(direct.trace) == list(tr)  # address, value, log prob and statement
        assert tr.addresses() == compiled_trace(looping, 2, seed_=s + 10)[0].addresses()


@program
def nested(n):
    if n == 0:
        return [sample(ONE)]
    return [sample(ONE)] + nested(n - 1)


def test_recursive_calls_nest_their_addresses():
    tr, value = compiled_trace(nested, 2)
    assert value == [1, 1, 1]
    depth = [a.count("/") for a in tr.addresses()]
    assert depth == [0, 1, 2]
    assert tr.addresses()[2].startswith(tr.addresses()[1].rsplit("/", 1)[0])


@program
def scored():
    a = sample("a", Bernoulli(0.25))
    observe(Bernoulli(0.9), a)
    factor(-0.5)
    condition(True)
    return a


def test_trace_score_is_prior_plus_likelihood():
    tr, a = compiled_trace(scored)
    prior = math.log(0.25 if a else 0.75)
    likelihood = math.log(0.9 if a else 0.1) - 0.5
    assert tr.log_prior == pytest.approx(prior)
    assert tr.log_likelihood == pytest.approx(likelihood)
    assert tr.score == pytest.approx(prior + likelihood)
    assert trace(seed(scored, 0)).get_trace().score == pytest.approx(tr.score)


def test_conditioned_program_fixes_choices_under_inference_and_directly():
    fixed = condition(scored, {"a": True})
    post = ppl.importance(fixed, particles=4, seed=0)
    assert post.values == [True] * 4
    # the fixed choice is an observation: weight log p(a) + log p(obs | a) - 0.5
    assert post.log_weights == pytest.approx([math.log(0.25 * 0.9) - 0.5] * 4)
    assert len(post.traces[0]) == 0
    assert fixed() is True
    assert scored.fixed is None  # the original program is unchanged


@program
def calls_conditioned():
    fixed_leaf = condition(leaf, {"y": 2})
    return fixed_leaf(10)


def test_conditioned_sub_program_addresses_are_relative_to_its_call():
    post = ppl.importance(calls_conditioned, particles=8, seed=1)
    assert all(v in (12, 13) for v in post.values)
    assert all(len(t) == 1 for t in post.traces)  # only leaf's z remains a choice
    assert post.log_weights == pytest.approx([math.log(0.5)] * 8)


@program
def reuses_a_name(n):
    for _ in range(n):
        sample("x", ONE)  # the repeated name


def test_a_name_used_twice_is_an_error_naming_the_line():
    with pytest.raises(ValueError, match="used twice") as info:
        trace(reuses_a_name).get_trace(2)
    assert f"{__file__}:{line_of(reuses_a_name.fn, 'the repeated name')}" in str(info.value)


@program
def bad_sample():
    return sample("x", 3)


def test_non_distribution_is_an_error_naming_the_statement():
    with pytest.raises(TypeError, match="needs a distribution") as info:
        ppl.importance(bad_sample, particles=1, seed=0)
    line = line_of(bad_sample.fn, "return sample")
    assert f"{__file__}:{line}" in str(info.value)
    with pytest.raises(TypeError, match=f"{__file__}:"):
        bad_sample()
