"""Twists steer resampling and cancel from the target, the final weights and the evidence."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ppl
from ppl import condition, factor, program, sample, twist
from tests.inference.checks import check_unbiased, weighted_estimates
from tests.inference.toy import B_PENALTY, MAX_LEN, exact_posterior, toy_lm

Z_EXACT, P_EXACT = exact_posterior()


@program
def twisted(strength=1.0):
    """`no_double_a` with a twist that favours texts ending in a token other than "a"."""
    ctx = toy_lm.context("")
    for _ in range(MAX_LEN):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        condition("aa" not in ctx.text)
        if tok.text == "b":
            factor(B_PENALTY)
        twist(-strength if ctx.text.endswith("a") else 0.0)
        if tok.is_eos:
            break
    return ctx.text


def test_twists_do_not_change_final_weights():
    from tests.inference.toy import no_double_a

    a = ppl.importance(twisted, particles=64, seed=3)
    b = ppl.importance(no_double_a, particles=64, seed=3)
    assert a.values == b.values
    assert np.allclose(a.log_weights, b.log_weights)
    assert a.log_evidence == pytest.approx(b.log_evidence)


def test_twists_change_the_resampling_decisions():
    a = ppl.smc(twisted, 3.0, particles=64, seed=3, ess_threshold=0.99)
    b = ppl.smc(twisted, 0.0, particles=64, seed=3, ess_threshold=0.99)
    assert not np.allclose(a.ess[: len(b.ess)][:2], b.ess[:2])


@pytest.mark.statistical
def test_twisted_smc_is_exact_and_its_evidence_unbiased():
    posts = [ppl.smc(twisted, 2.0, particles=10, ess_threshold=0.9, seed=r) for r in range(500)]
    assert sum(len(p.resampled) for p in posts) > 0
    check_unbiased(
        [weighted_estimates(p) for p in posts], np.array([math.exp(p.log_evidence) for p in posts])
    )


def test_twist_errors_and_direct_runs():
    @program
    def bad():
        twist(-math.inf)

    with pytest.raises(ValueError, match="twist.*-inf; use condition"):
        ppl.smc(bad, particles=2, seed=0)

    @program
    def nan():
        twist(float("nan"))

    with pytest.raises(ValueError, match="NaN"):
        ppl.smc(nan, particles=2, seed=0)
    assert isinstance(twisted(), str)  # a direct run ignores twists
