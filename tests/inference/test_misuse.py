"""Bad counts fail fast in ppl's words, and a particle that raises is named with its text."""

from __future__ import annotations

import json

import pytest

import ppl
from ppl import factor, program, sample
from ppl.distributions import Bernoulli
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


# -- errors="drop" drops the program's exceptions, never ppl's own -----------------------------


def _plain_sampler():
    return sample(Bernoulli(0.5))


@program
def misuses(kind):
    x = sample(Bernoulli(0.5))
    if x:  # half the particles misuse ppl
        if kind == "sample":
            sample(5)  # not a distribution
        elif kind == "factor":
            factor("heavy")  # not a number
        elif kind == "nan":
            factor(float("nan"))
        elif kind == "plain":
            _plain_sampler()  # a primitive in a plain function
        elif kind == "context":
            toy_lm.context(42)  # a prompt that is not a str
    return x


MISUSES = {
    "sample": (TypeError, r"sample\(\) needs a distribution .* got int: 5"),
    "factor": (TypeError, "the log-weight must be a number, got str"),
    "nan": (ValueError, "the log-weight is NaN"),
    "plain": (RuntimeError, r"sample\(\) was called from a plain function"),
    "context": (TypeError, r"lm.context\(\) takes the prompt as a str"),
}


@pytest.mark.parametrize("method", [ppl.smc, ppl.importance])
@pytest.mark.parametrize("kind", MISUSES)
def test_errors_drop_never_drops_ppls_own_errors(kind, method):
    error, message = MISUSES[kind]
    with pytest.raises(error, match=message) as raised:
        method(misuses, kind, particles=8, seed=0)
    with pytest.raises(error, match=message) as despite_drop:
        method(misuses, kind, particles=8, seed=0, errors="drop")
    assert type(despite_drop.value) is type(raised.value)
    assert str(despite_drop.value) == str(raised.value)  # the message as it was


def test_errors_drop_never_drops_a_fault_of_the_engine(monkeypatch):
    from ppl.inference.engine import Engine

    monkeypatch.setattr(Engine, "_address", None)  # the engine's own code now fails
    with pytest.raises(TypeError, match="'NoneType' object is not callable"):
        ppl.smc(misuses, "none", particles=8, seed=0, errors="drop")


@program
def divides(by_library):
    x = sample(Bernoulli(0.5))
    if x:  # half the particles raise the user's exception
        if by_library:
            json.loads("{")  # raised inside a library the program calls
        return 1 / 0
    return x


@pytest.mark.parametrize("by_library", [False, True])
def test_errors_drop_still_drops_the_users_exceptions(by_library):
    with pytest.warns(ppl.InferenceWarning, match="raised and were dropped"):
        post = ppl.smc(divides, by_library, particles=64, seed=0, errors="drop")
    assert post.distribution() == {False: pytest.approx(1.0)}
    name = "JSONDecodeError" if by_library else "ZeroDivisionError"
    assert [k.split(":")[0] for k in post.diagnostics["errors"]] == [name]
    # half of the particles are dropped: log Z estimates log 0.5 (64 particles, seeded)
    assert -1.2 < post.log_evidence < -0.35
