"""Zero evidence, one behaviour: every method returns a Posterior with `failure` and warns."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ppl
from ppl import condition, program, sample
from tests.inference.toy import toy_lm


@program
def never():
    ctx = toy_lm.context("")
    for _ in range(3):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        condition(tok.text == "x")  # the toy vocabulary has no "x"
        if tok.is_eos:
            break
    return ctx.text


@program
def dies_late():
    """Every run dies at its second token: the steps before it have positive weight."""
    ctx = toy_lm.context("")
    tok = sample(ctx.next_token())
    ctx = ctx + tok
    if not tok.is_eos:
        ctx = ctx + sample(ctx.next_token())
    condition(False)
    return ctx.text


RUNS = {
    "smc": lambda p: ppl.smc(p, particles=4, seed=0),
    "importance": lambda p: ppl.importance(p, particles=4, seed=0),
    "smc_steer": lambda p: ppl.smc_steer(p, particles=4, children=2, seed=0),
    "mh": lambda p: ppl.mh(p, chains=2, steps=3, seed=0),
    "mh_init_smc": lambda p: ppl.mh(p, chains=2, steps=3, seed=0, init="smc"),
    "pimh": lambda p: ppl.pimh(p, particles=3, steps=2, seed=0),
    "pgibbs": lambda p: ppl.pgibbs(p, particles=3, steps=2, seed=0),
}


@pytest.mark.parametrize("name", RUNS)
@pytest.mark.parametrize("prog", [never, dies_late], ids=["at_once", "late"])
def test_every_method_returns_a_failed_posterior_and_warns_at_the_callers_line(name, prog):
    with pytest.warns(ppl.InferenceWarning) as caught:
        post = RUNS[name](prog)
    # the warning points at this file (the caller's line), not into ppl
    assert [w.filename for w in caught] == [__file__]
    assert isinstance(post, ppl.Posterior) and post.failure
    assert "condition(" in post.failure  # names the statement that rejected
    assert post.log_evidence is None or post.log_evidence == -math.inf
    assert not np.any(post.weights > 0)
    with pytest.raises(ValueError, match="no sample has positive weight"):
        post.samples(3)
    assert "FAILED" in post.summary()


def test_smc_steer_records_the_step_where_every_particle_died():
    with pytest.warns(ppl.InferenceWarning):
        post = ppl.smc_steer(dies_late, particles=4, children=2, seed=0)
    assert post.ess[0] > 0 and post.ess[-1] == 0.0
    assert len(post.ess) == len(post.log_evidence_steps) == post.stats["steps"] + 1
    assert post.log_evidence_steps[-1] == -math.inf == post.log_evidence
