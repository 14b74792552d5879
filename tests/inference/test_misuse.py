"""Bad counts fail fast in ppl's words, and a particle that raises is named with its text."""

from __future__ import annotations

import pytest

import ppl
from ppl import program, sample
from ppl.inference import notices
from tests.inference.toy import no_double_a, toy_lm

PARTICLE_RUNS = {
    "smc": lambda **kw: ppl.smc(no_double_a, **kw),
    "importance": lambda **kw: ppl.importance(no_double_a, **kw),
    "smc_steer": lambda **kw: ppl.smc_steer(no_double_a, **kw),
    "pimh": lambda **kw: ppl.pimh(no_double_a, steps=2, **kw),
    "pgibbs": lambda **kw: ppl.pgibbs(no_double_a, steps=2, **kw),
}


@pytest.mark.parametrize("name", PARTICLE_RUNS)
def test_particle_counts_are_checked_and_named(name):
    run = PARTICLE_RUNS[name]
    with pytest.raises(TypeError, match=r"particles must be an integer, got True \(bool\)"):
        run(particles=True)
    with pytest.raises(TypeError, match=r"particles must be an integer, got 4.0 \(float\)"):
        run(particles=4.0)
    with pytest.raises(ValueError, match=r"particles must be an integer >= \d, got -3"):
        run(particles=-3)


@pytest.mark.parametrize("name", PARTICLE_RUNS)
def test_a_run_that_cannot_fit_in_memory_fails_at_once(name):
    with pytest.raises(ValueError, match=r"would need at least .* (TB|PB) of memory.*use fewer"):
        PARTICLE_RUNS[name](particles=10**12)


def test_mh_counts():
    with pytest.raises(TypeError, match="chains must be an integer, got True"):
        ppl.mh(no_double_a, chains=True)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        ppl.mh(no_double_a, steps=0)
    with pytest.raises(ValueError, match=r"chains=1000000 x steps=1000000000 kept states would"):
        ppl.mh(no_double_a, chains=10**6, steps=10**9)


def test_memory_floor_reads_in_units(monkeypatch):
    monkeypatch.setattr(notices, "_physical_memory", lambda: 8 * 1024**3)
    with pytest.raises(ValueError, match=r"at least 9.54 GB of memory .* than the 8 GB"):
        notices.fits("a run", 10**7)
    notices.fits("a run", 10**6)  # 0.95 GB fits
    monkeypatch.setattr(notices, "_physical_memory", lambda: None)
    notices.fits("a run", 10**15)  # unknown memory: no check


@program
def breaks_on_ab():
    ctx = toy_lm.context("")
    for _ in range(4):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        if ctx.text.endswith("ab"):
            raise ValueError("no 'ab' please")
        if tok.is_eos:
            break
    return ctx.text


@pytest.mark.parametrize("method", [ppl.smc, ppl.importance])
def test_the_particle_that_raised_is_named_with_its_text(method):
    with pytest.raises(ValueError, match="no 'ab' please") as info:
        method(breaks_on_ab, particles=20, seed=0)
    notes = info.value.__notes__
    which = [n for n in notes if n.startswith("raised in particle ")]
    assert len(which) == 1
    assert which[0].endswith("of 20; its text so far: 'ab'")
    assert any(f"under {method.__name__} at step 2" in n for n in notes)


@pytest.mark.parametrize("bad", [-3, True, 2.5, "8"])
def test_generate_refuses_a_bad_max_tokens(bad):
    with pytest.raises(ValueError, match=rf"max_tokens must be a whole number >= 0.*got {bad!r}"):
        ppl.generate(toy_lm.context(""), max_tokens=bad)


def test_generate_with_no_tokens_to_draw():
    assert ppl.generate(toy_lm.context(""), max_tokens=0, keep_unfinished=True) == ""
    with pytest.warns(ppl.InferenceWarning, match="max_tokens reached without EOS"):
        post = ppl.smc(ppl.generate, toy_lm.context(""), max_tokens=0, particles=2, seed=0)
    assert post.failure
