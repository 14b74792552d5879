"""Resample-move SMC: MCMC moves after resampling keep the target and the evidence exact."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ppl
from tests.inference.checks import check_unbiased, weighted_estimates
from tests.inference.toy import exact_posterior, no_double_a

Z_EXACT, P_EXACT = exact_posterior()


@pytest.mark.statistical
@pytest.mark.parametrize("proposal", ["token", "restart"])
def test_resample_move_is_exact_and_its_evidence_unbiased(proposal):
    kernel = ppl.MHKernel(proposal, moves=1)
    posts = [
        ppl.smc(no_double_a, particles=8, ess_threshold=1.0, rejuvenation=kernel, seed=r)
        for r in range(400)
    ]
    assert all(p.acceptance is not None for p in posts)
    assert 0 < np.mean([p.acceptance_rate for p in posts]) <= 1
    check_unbiased(
        [weighted_estimates(p) for p in posts], np.array([math.exp(p.log_evidence) for p in posts])
    )


def test_rejuvenation_adds_diversity():
    plain = ppl.smc(no_double_a, particles=32, ess_threshold=1.0, seed=4)
    moved = ppl.smc(
        no_double_a, particles=32, ess_threshold=1.0, seed=4, rejuvenation=ppl.MHKernel(moves=3)
    )
    assert len(set(moved.values)) >= len(set(plain.values)) - 2
    assert moved.acceptance_rate > 0


def test_bad_kernels_are_reported():
    with pytest.raises(TypeError, match="rejuvenation must be an MCMC kernel"):
        ppl.smc(no_double_a, rejuvenation="token")
    with pytest.raises(ValueError, match="moves"):
        ppl.MHKernel(moves=0)
