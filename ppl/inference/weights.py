"""Log weights: their sum, normalised weights and the effective sample size.

The arithmetic every inference method and every view of a run shares; `ppl.inference.posterior`
re-exports it (its old home).
"""

from __future__ import annotations

import math

import numpy as np


def log_sum_exp(x: np.ndarray) -> float:
    """log(sum(exp(x))) that is -inf, not NaN, when every entry is -inf."""
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return -math.inf
    m = float(np.max(x))
    if m == -math.inf:
        return -math.inf
    return m + math.log(float(np.sum(np.exp(x - m))))


def normalise(log_weights: np.ndarray) -> np.ndarray:
    """Normalised weights; all zero when every weight is zero."""
    lw = np.asarray(log_weights, dtype=float)
    total = log_sum_exp(lw)
    if total == -math.inf:
        return np.zeros_like(lw)
    return np.exp(lw - total)


def ess_of(log_weights: np.ndarray) -> float:
    """Effective sample size 1 / sum(w_i^2) of normalised weights (0 if all weights are 0)."""
    w = normalise(log_weights)
    s = float(np.sum(w * w))
    return 1.0 / s if s > 0 else 0.0
