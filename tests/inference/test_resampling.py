"""Resampling schemes: every scheme is unbiased (expected offspring n * w_i) and the low-variance
schemes bound how far a count strays from n * w_i."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ppl.inference import resampling

SCHEMES = ["multinomial", "stratified", "systematic", "residual"]
WEIGHTS = np.array([0.41, 0.02, 0.17, 0.0, 0.3, 0.1])


@pytest.mark.statistical
@pytest.mark.parametrize("name", SCHEMES)
def test_expected_offspring_counts(name):
    resample = resampling.get(name)
    rng = np.random.default_rng(1)
    n, reps = len(WEIGHTS), 20000
    counts = np.zeros((reps, n))
    for r in range(reps):
        idx = resample(rng, WEIGHTS, n)
        counts[r] = np.bincount(idx, minlength=n)
    mean = counts.mean(0)
    # E[count_i] = n w_i. The count of one index has variance at most n w_i (1 - w_i) (the
    # multinomial's; the other schemes are lower), so the mean over `reps` runs has standard
    # error at most sqrt(n w (1 - w) / reps): allow 4.5 standard errors per index (six indices,
    # false alarm < 1e-4).
    se = np.sqrt(n * WEIGHTS * (1 - WEIGHTS) / reps)
    assert np.all(np.abs(mean - n * WEIGHTS) <= 4.5 * se + 1e-12), (mean, n * WEIGHTS)
    assert np.all(counts[:, WEIGHTS == 0] == 0)  # zero weight: never chosen


@pytest.mark.parametrize("name", ["stratified", "systematic", "residual"])
def test_low_variance_schemes_bound_the_counts(name):
    # systematic: one uniform shared by all strata, so the count of i is the number of points
    # k + u in an interval of length n w_i: floor or ceil of n w_i. Stratified: a point per
    # stratum, so an interval of length n w_i meets at most ceil(n w_i) + 1 strata and fully
    # contains at least floor(n w_i) - 1. Residual: floor(n w_i) copies are deterministic.
    resample = resampling.get(name)
    rng = np.random.default_rng(2)
    for _ in range(500):
        w = rng.dirichlet(np.full(7, 0.5))
        n = int(rng.integers(1, 20))
        counts = np.bincount(resample(rng, w, n), minlength=len(w))
        assert counts.sum() == n
        if name == "residual":  # the deterministic part is at least floor(n w)
            assert np.all(counts >= np.floor(n * w - 1e-9))
        elif name == "systematic":
            assert np.all(np.abs(counts - n * w) < 1 + 1e-9)
        else:
            assert np.all(np.abs(counts - n * w) < 2 + 1e-9)


@pytest.mark.parametrize("name", SCHEMES)
def test_indices_are_sorted_and_in_range(name):
    idx = resampling.get(name)(np.random.default_rng(0), WEIGHTS, 10)
    assert len(idx) == 10 and list(idx) == sorted(idx)
    assert all(0 <= i < len(WEIGHTS) and WEIGHTS[i] > 0 for i in idx)


def test_unknown_scheme_names_the_choices():
    with pytest.raises(ValueError, match="systematic"):
        resampling.get("bogus")


def test_weights_must_be_a_distribution():
    with pytest.raises(ValueError):
        resampling.get("systematic")(np.random.default_rng(0), np.array([math.nan, 1.0]), 2)
