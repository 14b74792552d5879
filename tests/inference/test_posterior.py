"""One Posterior for every algorithm: fields, summary table, arviz, plots."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

import ppl
from ppl import condition, program, sample
from ppl.distributions import Bernoulli, Categorical
from tests.inference.toy import no_double_a

RUNS = {
    "importance": lambda: ppl.importance(no_double_a, particles=16, seed=0),
    "smc": lambda: ppl.smc(no_double_a, particles=16, seed=0),
    "smc_steer": lambda: ppl.smc_steer(no_double_a, particles=8, seed=0),
    "mh": lambda: ppl.mh(no_double_a, chains=2, steps=10, seed=0),
    "pimh": lambda: ppl.pimh(no_double_a, particles=4, steps=5, seed=0),
    "pgibbs": lambda: ppl.pgibbs(no_double_a, particles=4, steps=5, seed=0),
}


@pytest.mark.parametrize("name", RUNS)
def test_every_algorithm_returns_one_posterior_type(name):
    post = RUNS[name]()
    assert isinstance(post, ppl.Posterior) and post.method == name
    w = post.weights
    assert np.all(w >= 0) and w.sum() == pytest.approx(1.0) and not np.isnan(w).any()
    assert len(post.values) == len(post.traces) == len(post.log_weights)
    assert post.log_evidence is None or math.isfinite(post.log_evidence)
    text = post.summary()
    assert text.startswith(f"{name}: ") and " weight count  value" in text
    assert ("evidence     log Z = " in text) == (post.log_evidence is not None)
    if post.chain is not None:
        assert "acceptance" in text and 0 <= post.acceptance_rate <= 1
    else:
        assert len(post.log_evidence_steps) == len(post.ess) >= 1
        assert post.log_evidence_steps[-1] == pytest.approx(post.log_evidence)
    assert name in repr(post)


@program
def coins():
    n = sample("n", Categorical([0, 1, 2, 3]))
    heads = sample("heads", Bernoulli(0.3))
    condition(n + heads > 0)
    return n + heads


def test_to_arviz_keeps_named_numeric_choices_and_chains():
    mcmc = ppl.mh(coins, chains=3, steps=40, proposal="restart", seed=1).to_arviz()
    assert set(mcmc.posterior.data_vars) == {"n", "heads", "return"}
    assert mcmc.posterior["n"].shape == (3, 40)
    smc = ppl.smc(coins, particles=50, seed=1).to_arviz()
    assert smc.posterior["return"].shape == (1, 50)
    assert float(smc.posterior["return"].min()) >= 1  # draws of positive weight only


def test_to_arviz_without_numeric_choices_and_without_arviz(monkeypatch):
    post = ppl.smc(no_double_a, particles=8, seed=0)
    with pytest.raises(ValueError, match="no numeric named choice"):
        post.to_arviz()
    monkeypatch.setitem(sys.modules, "arviz", None)
    with pytest.raises(ImportError, match=r"pip install arviz .*pip install -e '\.\[arviz\]'"):
        post.to_arviz()


def test_plot_of_ess_and_log_evidence(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    post = ppl.smc(no_double_a, particles=16, seed=0, ess_threshold=1.0)
    fig = post.plot(str(tmp_path / "run.png"))
    assert (tmp_path / "run.png").stat().st_size > 1000
    assert len(fig.axes) == 2
    import matplotlib.pyplot as plt

    plt.close(fig)
    fig = ppl.mh(no_double_a, chains=1, steps=2, seed=0).plot()  # a trace, see test_plots.py
    assert fig.axes[-1].get_xlabel() == "chain"
    plt.close(fig)


def test_record_keeps_texts_weights_and_ancestry():
    post = ppl.smc(no_double_a, particles=6, seed=2, ess_threshold=1.0, record=True)
    h = post.history
    assert len(h) == len(post.ess)
    assert all(len(s["texts"]) == 6 for s in h)
    assert [s["step"] for s in h if s["parents"] is not None] == post.resampled
    # the last record holds the final texts (an EOS adds no text)
    for text, value, w in zip(h[-1]["texts"], post.values, post.weights):
        if w > 0:
            assert text == value
    with pytest.raises(ValueError, match="record=True"):
        ppl.smc(no_double_a, particles=2, seed=0, record=False).html()
