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
