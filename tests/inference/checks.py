"""Shared Monte Carlo checks against the exact posterior of the toy program."""

from __future__ import annotations

import math

import numpy as np

from tests.inference.toy import exact_posterior

Z_EXACT, P_EXACT = exact_posterior()
OUTCOMES = sorted(P_EXACT)


def check_unbiased(estimates_per_run: list[dict[str, float]], z_hats: np.ndarray) -> None:
    """Z_hat is unbiased for Z, and Z_hat p_hat(x) for Z p(x), for every well-sampled x.

    R independent runs give R independent estimates; their standard error bounds the error of
    the mean: 4 standard errors for Z, 4.5 per outcome (~90 outcomes: a false alarm has
    probability < 1e-3). The normal approximation needs the estimate of an outcome to be
    non-zero in enough runs (30 here); rarer outcomes are covered in aggregate by Z.
    """
    r = len(z_hats)
    assert abs(z_hats.mean() - Z_EXACT) < 4 * z_hats.std(ddof=1) / math.sqrt(r)
    index = {x: i for i, x in enumerate(OUTCOMES)}
    est = np.zeros((r, len(OUTCOMES)))
    for k, run in enumerate(estimates_per_run):
        for x, v in run.items():
            est[k, index[x]] += v
    hits = (est > 0).sum(axis=0)
    well = hits >= 30
    assert well.sum() >= 10  # the check covers the bulk of the posterior
    se = est.std(axis=0, ddof=1) / math.sqrt(r)
    target = Z_EXACT * np.array([P_EXACT[x] for x in OUTCOMES])
    z = np.abs(est.mean(axis=0)[well] - target[well]) / se[well]
    assert z.max() < 4.5, (np.array(OUTCOMES)[well][int(np.argmax(z))], z.max())


def weighted_estimates(post) -> dict[str, float]:
    """Z_hat * normalised weight summed per value: an estimate of Z p(x)."""
    out: dict[str, float] = {}
    z = math.exp(post.log_evidence)
    for value, w in zip(post.values, post.weights):
        if w > 0:
            out[value] = out.get(value, 0.0) + z * float(w)
    return out
