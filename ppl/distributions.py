"""The distribution protocol and small Python-valued discrete distributions.

A distribution is any object with

* `sample(rng: numpy.random.Generator) -> value`
* `log_prob(value) -> float`

Language-model distributions (`ctx.next_token()`) follow the same protocol; the scheduler
recognises them and batches their model calls across particles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


class Distribution:
    """Base class for Python-valued distributions (the protocol needs only the two methods)."""

    def sample(self, rng: np.random.Generator) -> Any:
        raise NotImplementedError

    def log_prob(self, value: Any) -> float:
        raise NotImplementedError

    def __deepcopy__(self, memo: dict) -> Distribution:
        return self  # distributions are immutable values


def _probabilities(probs: Sequence[float], who: str) -> np.ndarray:
    p = np.asarray(probs, dtype=float)
    if p.ndim != 1 or len(p) == 0:
        raise ValueError(f"{who}: probabilities must be a non-empty 1-d sequence")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError(
            f"{who}: probabilities must be finite, non-negative and not all zero, got {p.tolist()}"
        )
    return p / p.sum()


class Bernoulli(Distribution):
    """True with probability `p`."""

    def __init__(self, p: float) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Bernoulli: p must be in [0, 1], got {p}")
        self.p = float(p)

    def sample(self, rng: np.random.Generator) -> bool:
        return bool(rng.random() < self.p)

    def log_prob(self, value: Any) -> float:
        q = self.p if value else 1.0 - self.p
        return math.log(q) if q > 0 else -math.inf

    def __repr__(self) -> str:
        return f"Bernoulli({self.p})"


class Categorical(Distribution):
    """One of `values` (any Python objects), with probabilities `probs` (uniform if omitted)."""

    def __init__(self, values: Sequence[Any], probs: Sequence[float] | None = None) -> None:
        self.values = list(values)
        if not self.values:
            raise ValueError("Categorical: needs at least one value")
        if probs is None:
            probs = [1.0] * len(self.values)
        if len(probs) != len(self.values):
            raise ValueError(
                f"Categorical: {len(self.values)} values but {len(probs)} probabilities"
            )
        self.probs = _probabilities(probs, "Categorical")
        self._cdf = np.cumsum(self.probs)

    def sample(self, rng: np.random.Generator) -> Any:
        i = int(np.searchsorted(self._cdf, rng.random() * self._cdf[-1], side="right"))
        return self.values[min(i, len(self.values) - 1)]

    def log_prob(self, value: Any) -> float:
        total = sum(p for v, p in zip(self.values, self.probs) if v == value)
        return math.log(total) if total > 0 else -math.inf

    def __repr__(self) -> str:
        return f"Categorical({self.values!r}, {self.probs.round(4).tolist()})"


class UniformChoice(Categorical):
    """One of `values`, each equally likely."""

    def __init__(self, values: Sequence[Any]) -> None:
        super().__init__(values)


class Geometric(Distribution):
    """Number of failures before the first success, success probability `p` (support 0, 1, ...)."""

    def __init__(self, p: float) -> None:
        if not 0.0 < p <= 1.0:
            raise ValueError(f"Geometric: p must be in (0, 1], got {p}")
        self.p = float(p)

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.geometric(self.p)) - 1

    def log_prob(self, value: Any) -> float:
        if not float(value).is_integer() or value < 0:
            return -math.inf
        return (
            int(value) * math.log1p(-self.p) + math.log(self.p)
            if self.p < 1
            else (0.0 if value == 0 else -math.inf)
        )

    def __repr__(self) -> str:
        return f"Geometric({self.p})"
