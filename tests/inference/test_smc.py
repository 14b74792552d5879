"""SMC and importance sampling: results, failures, errors, seeds and progress output."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ppl
from ppl import condition, factor, program, sample
from ppl.distributions import Bernoulli
from tests.inference.toy import exact_posterior, no_double_a, toy_lm

METHODS = {"smc": ppl.smc, "importance": ppl.importance}


@pytest.mark.parametrize("name", METHODS)
def test_posterior_fields(name):
    post = METHODS[name](no_double_a, particles=32, seed=0)
    assert post.method == name and post.num_particles == 32
    assert len(post.values) == len(post.log_weights) == 32
    w = post.weights
    assert np.all(w >= 0) and w.sum() == pytest.approx(1.0)
    assert math.isfinite(post.log_evidence)
    assert len(post.ess) >= 1 and np.all((post.ess >= 0) & (post.ess <= 32 + 1e-9))
    assert post.final_ess == pytest.approx(1 / np.sum(w**2))
    _, exact = exact_posterior()
    assert set(post.distribution()) <= set(exact)  # only strings the program can return
    assert sum(post.distribution().values()) == pytest.approx(1.0)
    assert all(v in exact for v in post.samples(10, seed=1))
    text = post.summary()
    assert "log Z = " in text and "ESS          min " in text and " weight count  value" in text
    assert post.stats["steps"] >= 1 and post.stats["forward_calls"] >= 1


@pytest.mark.parametrize("name", METHODS)
def test_same_seed_same_run_other_seed_other_run(name):
    a = METHODS[name](no_double_a, particles=16, seed=7)
    b = METHODS[name](no_double_a, particles=16, seed=7)
    c = METHODS[name](no_double_a, particles=16, seed=8)
    assert a.values == b.values
    assert np.array_equal(a.log_weights, b.log_weights) and a.log_evidence == b.log_evidence
    assert [[ch.value for ch in t] for t in a.traces] == [[ch.value for ch in t] for t in b.traces]
    assert (a.values, a.log_evidence) != (c.values, c.log_evidence)


def test_smc_resamples_when_ess_drops_and_reports_ancestry():
    post = ppl.smc(no_double_a, particles=64, seed=1, ess_threshold=1.0)
    assert post.resampled  # conditions kill particles: ESS drops below N at some step
    assert len(post.ancestors) == len(post.resampled)
    assert all(len(a) == 64 and np.all((a >= 0) & (a < 64)) for a in post.ancestors)
    never = ppl.smc(no_double_a, particles=64, seed=1, ess_threshold=0.0)
    assert never.resampled == []


@pytest.mark.parametrize("name", METHODS)
def test_all_particles_rejected_gives_minus_infinity_and_names_the_statement(name):
    @program
    def impossible():
        x = sample(Bernoulli(0.5))
        condition(x > 1)  # never true
        return x

    with pytest.warns(ppl.InferenceWarning, match=r"all 8 particles have zero weight"):
        post = METHODS[name](impossible, particles=8, seed=0)
    assert post.log_evidence == -math.inf
    assert not np.isnan(post.log_weights).any() and not np.isnan(post.weights).any()
    assert "condition(x > 1)" in post.failure and "test_smc.py" in post.failure
    assert "8 rejected" in post.failure
    assert "condition(x > 1)" in post.summary()
    with pytest.raises(ValueError, match="no sample has positive weight"):
        post.samples()


def test_nan_weight_is_an_error_at_the_statement():
    @program
    def bad():
        factor(float("nan"))

    with pytest.raises(ValueError, match="NaN"):
        ppl.smc(bad, particles=2, seed=0)


def test_errors_raise_by_default_with_the_users_line():
    @program
    def fails():
        x = sample(Bernoulli(0.5))
        if x:
            raise RuntimeError("boom")
        return x

    with pytest.raises(RuntimeError, match="boom") as info:
        ppl.smc(fails, particles=16, seed=0)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "fails" in notes and "smc" in notes


def test_errors_drop_keeps_the_run_and_reports():
    @program
    def fails():
        x = sample(Bernoulli(0.5))
        if x:
            raise RuntimeError("boom")
        return x

    with pytest.warns(ppl.InferenceWarning, match="raised and were dropped"):
        post = ppl.smc(fails, particles=32, seed=0, errors="drop")
    assert post.distribution() == {False: pytest.approx(1.0)}
    assert any("boom" in k for k in post.diagnostics["errors"])
    # half the particles fail: log Z estimates log 0.5
    assert -2.0 < post.log_evidence < -0.1


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="particles"):
        ppl.smc(no_double_a, particles=0)
    with pytest.raises(ValueError, match="ess_threshold"):
        ppl.smc(no_double_a, ess_threshold=2.0)
    with pytest.raises(ValueError, match="systematic"):
        ppl.smc(no_double_a, resampling="nope")
    with pytest.raises(ValueError, match="errors"):
        ppl.smc(no_double_a, errors="ignore")


def test_progress_is_quiet_when_output_is_not_a_terminal(capfd):
    ppl.smc(no_double_a, particles=8, seed=0)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_progress_bar_when_asked(capfd):
    ppl.smc(no_double_a, particles=8, seed=0, progress=True)
    _, err = capfd.readouterr()
    assert "smc" in err and "step" in err


def test_program_arguments_are_passed_and_copied():
    @program
    def uses(xs, scale=1.0):
        xs.append(sample(Bernoulli(0.5)))
        factor(scale * len(xs))
        return list(xs)

    xs = [1, 2]
    post = ppl.importance(uses, xs, particles=4, seed=0, scale=0.5)
    assert xs == [1, 2]  # every particle works on its own copy of the arguments
    assert all(len(v) == 3 for v in post.values)
    assert np.allclose(post.log_weights, 1.5)


def test_toy_lm_counters_are_per_run():
    toy_lm.reset_counters()
    a = ppl.smc(no_double_a, particles=8, seed=0)
    b = ppl.smc(no_double_a, particles=8, seed=0)
    assert a.stats["tokens_fed"] == b.stats["tokens_fed"] > 0
    assert toy_lm.tokens_fed == a.stats["tokens_fed"] + b.stats["tokens_fed"]
