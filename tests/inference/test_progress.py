"""Progress bars of every entry point: what they show, when they show, and what they cost."""

import sys
import types

import numpy as np
import numpyro.distributions as nd
import pytest

import ppl
from ppl import observe, program, sample
from ppl.inference import progress
from tests.inference.toy import no_double_a, rated_text


@program
def gaussian(y):
    x = sample("x", nd.Normal(0.0, 1.0))
    observe(nd.Normal(x, 1.0), y)
    return x


PARTICLE_RUNS = {
    "smc": lambda **kw: ppl.smc(no_double_a, particles=8, seed=0, **kw),
    "importance": lambda **kw: ppl.importance(no_double_a, particles=8, seed=0, **kw),
    "smc_steer": lambda **kw: ppl.smc_steer(no_double_a, particles=4, seed=0, **kw),
}
CHAIN_RUNS = {
    "mh": lambda **kw: ppl.mh(no_double_a, chains=2, steps=10, warmup=2, seed=0, **kw),
    "pimh": lambda **kw: ppl.pimh(no_double_a, particles=4, steps=5, seed=0, **kw),
    "pgibbs": lambda **kw: ppl.pgibbs(rated_text, particles=4, steps=5, seed=0, **kw),
}
NUTS = {"nuts": lambda **kw: ppl.nuts(gaussian, 1.0, samples=20, warmup=10, seed=0, **kw)}
ALL_RUNS = {**PARTICLE_RUNS, **CHAIN_RUNS, **NUTS}


def _final(err: str) -> str:
    """The last state a bar drew (before `close` wiped its line)."""
    return [s.strip() for s in err.split("\r") if s.strip()][-1]


@pytest.mark.parametrize("method", sorted(PARTICLE_RUNS))
def test_particle_runs_show_particles_ess_and_log_evidence(method, capfd):
    post = PARTICLE_RUNS[method](progress=True)
    out, err = capfd.readouterr()
    assert out == ""
    last = _final(err)
    assert last.startswith(f"{method}: 100%")
    n = post.num_particles
    assert f"{n}/{n} particles done" in last
    steps = post.stats["steps"]
    assert f"step {steps}, running 0, finished " in last
    assert f"ESS {post.ess[-1]:.1f}/" in last
    assert f"log Z {post.log_evidence:.3f}" in last


@pytest.mark.parametrize("method", sorted(CHAIN_RUNS))
def test_chain_runs_show_steps_and_acceptance(method, capfd):
    post = CHAIN_RUNS[method](progress=True)
    _, err = capfd.readouterr()
    last = _final(err)
    assert last.startswith(f"{method}: 100%")
    chains, steps = post.stats["chains"], post.stats["steps"]
    total = chains * (steps + (2 if method == "mh" else 0))
    assert f"{total}/{total}" in last
    assert "acceptance" in last
    if method == "mh":  # acceptance over every move so far, warmup included
        assert f"chains {chains}, step 12/12, acceptance 0." in last
    else:
        assert f"step {steps}/{steps}, acceptance {post.acceptance[0]:.3f}" in last
    if method == "pimh":
        assert f"log Z {post.log_evidence:.3f}" in last


def test_nuts_shows_numpyro_bar(capfd):
    NUTS["nuts"](progress=True)
    _, err = capfd.readouterr()
    assert "sample" in err and "30/30" in err and "acc. prob" in err


def test_nuts_draws_do_not_depend_on_the_bar(capfd):
    a = NUTS["nuts"](progress=True)
    b = NUTS["nuts"](progress=False)
    assert a.values == b.values


@pytest.mark.parametrize("method", sorted(ALL_RUNS))
def test_progress_false_prints_nothing(method, capfd):
    ALL_RUNS[method](progress=False)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


@pytest.mark.parametrize("method", sorted(ALL_RUNS))
def test_default_is_quiet_when_nobody_watches(method, capfd):
    ALL_RUNS[method]()  # stderr is captured: not a terminal, and no notebook kernel
    out, err = capfd.readouterr()
    assert out == "" and err == ""


@pytest.mark.parametrize("method", ["smc", "smc_steer", "mh", "pimh", "pgibbs"])
def test_the_bar_does_not_change_the_run(method, capfd):
    runs = {**PARTICLE_RUNS, **CHAIN_RUNS}
    a, b = runs[method](progress=True), runs[method](progress=False)
    assert a.values == b.values
    assert np.array_equal(a.log_weights, b.log_weights)


def test_status_is_worked_out_only_when_the_bar_refreshes(monkeypatch, capfd):
    calls = []
    real = progress.particles_status

    def counting(*args):
        calls.append(args[0])
        return real(*args)

    monkeypatch.setattr(sys.modules["ppl.inference.kernel"], "particles_status", counting)
    monkeypatch.setattr(progress, "INTERVAL", 1e6)
    post = ppl.smc(no_double_a, particles=8, seed=0, progress=True)
    assert post.stats["steps"] > 2
    assert calls == [0, post.stats["steps"]]  # the first step, then the final state
    monkeypatch.setattr(progress, "INTERVAL", 0.0)
    calls.clear()
    ppl.smc(no_double_a, particles=8, seed=0, progress=True)
    assert len(calls) == post.stats["steps"] + 2


def test_enabled_by_terminal_or_notebook(monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    assert progress.enabled(True) and not progress.enabled(False)
    assert not progress.enabled(None)
    assert "IPython" not in sys.modules  # never imported just to look
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    assert progress.enabled(None) and not progress.enabled(False)


class _Shell:
    def __init__(self, config):
        self.config = config


@pytest.mark.parametrize(
    "shell, expected",
    [(_Shell({"IPKernelApp": {}}), True), (_Shell({}), False), (None, False)],
)
def test_notebook_detection(monkeypatch, shell, expected):
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: shell
    monkeypatch.setitem(sys.modules, "IPython", fake)
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    assert progress.in_notebook() is expected
    assert progress.enabled(None) is expected


def test_a_bar_that_is_off_does_nothing():
    bar = progress.progress_bar(False, "smc", 8)
    assert not bar.on and not bar.due()
    bar.show(3, "text")
    bar.close()
