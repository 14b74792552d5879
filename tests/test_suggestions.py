"""A misspelt option of an entry point is named with the close name: `particle=`, `particles=`."""

from __future__ import annotations

import inspect

import pytest

import ppl
from ppl import program, sample
from ppl.distributions import Bernoulli
from ppl.inference.options import checks_options, suggestion


@program
def coin():
    return sample(Bernoulli(0.5))


@program
def words(prompt, max_tokens=3):
    return sample(Bernoulli(0.5))


@program
def takes_any(**options):
    sample(Bernoulli(0.5))
    return options


ENTRY_POINTS = [
    (ppl.smc, "particle", "particles"),
    (ppl.importance, "particle", "particles"),
    (ppl.smc_steer, "child", "children"),
    (ppl.mh, "chain", "chains"),
    (ppl.mh, "warm_up", "warmup"),
    (ppl.pimh, "step", "steps"),
    (ppl.pgibbs, "particle", "particles"),
    (ppl.nuts, "sample", "samples"),
    (ppl.smc, "ess_treshold", "ess_threshold"),
    (ppl.smc, "sead", "seed"),
]


@pytest.mark.parametrize("method, typed, meant", ENTRY_POINTS)
def test_a_misspelt_option_gets_the_close_name(method, typed, meant):
    with pytest.raises(TypeError) as info:
        method(coin, **{typed: 4})
    assert str(info.value) == (
        f"ppl.{method.__name__}() has no option {typed!r}; did you mean {meant!r}?"
    )


def test_the_issue_example():
    with pytest.raises(
        TypeError, match=r"^ppl\.smc\(\) has no option 'particle'; did you mean 'particles'\?$"
    ):
        ppl.smc(coin, particle=4)


def test_nothing_close_lists_the_options_and_the_programs_keywords():
    with pytest.raises(TypeError) as info:
        ppl.smc(coin, zzz=1)
    assert str(info.value) == (
        "ppl.smc() has no option 'zzz' and coin() no parameter of that name; its options are "
        "particles, ess_threshold, resampling, seed, progress, errors, rejuvenation, record"
    )
    with pytest.raises(TypeError, match="; words\\(\\) takes prompt, max_tokens$"):
        ppl.importance(words, "x", zzz=1)


def test_a_misspelt_program_parameter_gets_the_close_name():
    with pytest.raises(TypeError) as info:
        ppl.smc(words, "x", max_token=5)
    assert str(info.value) == (
        "ppl.smc() has no option 'max_token' and words() no parameter of that name; "
        "did you mean 'max_tokens'?"
    )


def test_keywords_the_program_takes_still_go_to_it():
    post = ppl.smc(words, "x", max_tokens=5, particles=2, seed=0)
    assert len(post.values) == 2
    post = ppl.importance(takes_any, particle=4, particles=2, seed=0)  # the program's own
    assert post.values[0] == {"particle": 4}


def test_entry_points_keep_their_names_and_signatures():
    for method in (ppl.smc, ppl.importance, ppl.smc_steer, ppl.mh, ppl.pimh, ppl.pgibbs, ppl.nuts):
        params = inspect.signature(method).parameters
        assert "program" in params and "seed" in params
        assert any(p.kind is p.VAR_KEYWORD for p in params.values())
        assert method.__qualname__ == method.__name__ and method.__doc__
    assert "particles" in inspect.signature(ppl.smc).parameters
    assert inspect.signature(ppl.mh).parameters["chains"].default == 4


def test_map_suggests_the_close_name():
    with pytest.raises(TypeError, match="no option 'particle' .*; did you mean 'particles'\\?$"):
        ppl.map(ppl.smc, coin, [()], particle=3)
    with pytest.raises(TypeError, match="did you mean 'checkpoint' \\(an option of ppl.map\\)\\?$"):
        ppl.map(ppl.smc, coin, [()], checkpont="x.jsonl")
    with pytest.raises(TypeError, match="; its options are particles, ess_threshold, "):
        ppl.map(ppl.smc, coin, [()], zzz=1)


def test_a_function_without_keyword_pass_through():
    @checks_options
    def generate(context, constraint=None, *, max_tokens=256):
        return max_tokens

    assert generate("c", max_tokens=3) == 3
    with pytest.raises(TypeError, match="^ppl.generate\\(\\) has no option 'max_token'; did you"):
        generate("c", max_token=3)
    assert suggestion("particle", ["particles", "seed"]) == "particles"
    assert suggestion("zzz", ["particles", "seed"]) is None
