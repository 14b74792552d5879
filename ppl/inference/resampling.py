"""Resampling schemes: `(rng, weights, n) -> indices`.

Every scheme is unbiased: the expected number of copies of particle i is `n * w_i` (weights
normalised). They differ in variance: multinomial > stratified >= systematic in practice;
residual keeps `floor(n * w_i)` copies deterministically and draws the rest multinomially.
Indices come back sorted, so copies of a particle sit next to each other.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Resampler = Callable[[np.random.Generator, np.ndarray, int], np.ndarray]


def _normalised(weights: np.ndarray) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    total = w.sum()
    if not np.isfinite(total) or total <= 0 or np.any(w < 0):
        raise ValueError("resampling needs non-negative weights with a positive, finite sum")
    return w / total


def _from_uniforms(w: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Invert the weights' CDF at sorted points `u` in [0, 1)."""
    cdf = np.cumsum(w)
    cdf[-1] = 1.0  # guard against round-off leaving the last point past the end
    return np.searchsorted(cdf, u, side="right").astype(np.int64)


def multinomial(rng: np.random.Generator, weights: np.ndarray, n: int) -> np.ndarray:
    """n independent draws from the weights."""
    w = _normalised(weights)
    return _from_uniforms(w, np.sort(rng.random(n)))


def stratified(rng: np.random.Generator, weights: np.ndarray, n: int) -> np.ndarray:
    """One uniform draw in each of the n strata [k/n, (k+1)/n)."""
    w = _normalised(weights)
    return _from_uniforms(w, (np.arange(n) + rng.random(n)) / n)


def systematic(rng: np.random.Generator, weights: np.ndarray, n: int) -> np.ndarray:
    """One uniform offset shared by the n evenly spaced points (k + u)/n."""
    w = _normalised(weights)
    return _from_uniforms(w, (np.arange(n) + rng.random()) / n)


def residual(rng: np.random.Generator, weights: np.ndarray, n: int) -> np.ndarray:
    """floor(n w_i) copies of each particle, the remaining slots drawn from the residuals."""
    w = _normalised(weights)
    counts = np.floor(n * w).astype(np.int64)
    rest = n - int(counts.sum())
    if rest > 0:
        residuals = n * w - counts
        counts += np.bincount(multinomial(rng, residuals, rest), minlength=len(w))
    return np.repeat(np.arange(len(w)), counts)


RESAMPLERS: dict[str, Resampler] = {
    "multinomial": multinomial,
    "stratified": stratified,
    "systematic": systematic,
    "residual": residual,
}


def get(name: str | Resampler) -> Resampler:
    """A resampler by name, or a user's function with the same signature."""
    if callable(name):
        return name
    try:
        return RESAMPLERS[name]
    except KeyError:
        raise ValueError(
            f"unknown resampling scheme {name!r}; choose one of {sorted(RESAMPLERS)}"
        ) from None


# -- resampling without replacement (smc_steer) ---------------------------------------------------


def inclusion_probabilities(weights: np.ndarray, n: int) -> np.ndarray:
    """Probabilities pi_i = min(1, c w_i) of keeping each particle, with sum_i pi_i = n.

    c is the unique constant that makes the probabilities sum to n: the heaviest particles are
    kept for sure (pi_i = 1), the rest in proportion to their weight. When no more than n
    weights are positive, every positive one is kept (pi_i = 1) and the sum is their number.
    Keeping particle i with probability pi_i and giving it weight w_i / pi_i leaves every
    weighted sum unbiased (Horvitz-Thompson): E[sum_kept f_i w_i / pi_i] = sum_i f_i w_i.
    """
    w = _normalised(weights)
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    positive = w > 0
    if int(positive.sum()) <= n:
        return positive.astype(float)
    order = np.argsort(-w, kind="stable")
    ws = w[order]
    tail = np.cumsum(ws[::-1])[::-1]  # tail[k] = sum of ws[k:]
    c = n / tail[0]
    for k in range(n):  # k = number of particles kept for sure
        c = (n - k) / tail[k]
        if c * ws[k] < 1.0:
            break
    return np.minimum(1.0, c * w)


def without_replacement(rng: np.random.Generator, inclusion: np.ndarray) -> np.ndarray:
    """Sorted distinct indices, index i drawn with probability `inclusion[i]` (each <= 1).

    Systematic sampling on the inclusion probabilities: points u, u + 1, ..., u + m - 1 over
    their cumulative sum, with m = round(sum). An interval of length pi_i <= 1 holds at most
    one point, so no index is drawn twice, and it holds one with probability exactly pi_i.
    """
    pi = np.asarray(inclusion, dtype=float)
    if pi.ndim != 1 or np.any(pi < 0) or np.any(pi > 1 + 1e-9) or not np.all(np.isfinite(pi)):
        raise ValueError("inclusion probabilities must lie in [0, 1]")
    m = int(round(float(pi.sum())))
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    cum = np.cumsum(pi)
    cum *= m / cum[-1]  # remove round-off so that the last interval ends exactly at m
    idx = np.searchsorted(cum, rng.random() + np.arange(m), side="right")
    return np.unique(np.minimum(idx, len(pi) - 1)).astype(np.int64)
