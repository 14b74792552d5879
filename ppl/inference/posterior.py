"""`Posterior`: what every inference algorithm returns."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppl.inference.engine import Choice


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


@dataclass
class Posterior:
    """Weighted samples of a program's return value, with the evidence and diagnostics.

    Attributes:
        method: the algorithm that made it ("smc", "importance", ...).
        values: return value of each particle (None for particles with zero weight).
        log_weights: final log weight of each particle.
        log_evidence: estimate of log Z, the log normalising constant of the program's target
            (-inf when every particle was rejected).
        ess: effective sample size after each step's reweighting, before any resampling.
        resampled: the steps at which the particles were resampled.
        ancestors: for each resampling, the index of the parent of each new particle.
        traces: the choices of each particle.
        failure: why the run has no sample with positive weight, or None.
        diagnostics: where particles were rejected (statement -> count) and errors raised.
        stats: particles, steps, model calls, tokens fed, seconds, seed.
    """

    method: str
    values: list[Any]
    log_weights: np.ndarray
    log_evidence: float
    ess: np.ndarray
    resampled: list[int] = field(default_factory=list)
    ancestors: list[np.ndarray] = field(default_factory=list)
    traces: list[list[Choice]] = field(default_factory=list)
    failure: str | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def weights(self) -> np.ndarray:
        """Normalised weights (all zero if every particle was rejected)."""
        return normalise(self.log_weights)

    @property
    def num_particles(self) -> int:
        return len(self.values)

    @property
    def final_ess(self) -> float:
        return ess_of(self.log_weights)

    def samples(self, n: int | None = None, *, seed: int | None = None) -> list[Any]:
        """`n` return values (default: one per particle) drawn by weight, with replacement."""
        w = self.weights
        if w.sum() == 0:
            raise ValueError(f"no sample has positive weight: {self.failure}")
        n = self.num_particles if n is None else n
        idx = np.random.default_rng(seed).choice(len(w), size=n, p=w)
        return [self.values[i] for i in idx]

    def distribution(self) -> dict[Any, float]:
        """Total normalised weight of each distinct return value (values must be hashable)."""
        out: Counter = Counter()
        for v, w in zip(self.values, self.weights):
            if w > 0:
                out[v] += float(w)
        return dict(out.most_common())

    def expectation(self, f: Any = None) -> float:
        """Weighted mean of `f(value)` (of the values themselves when `f` is None)."""
        w = self.weights
        if w.sum() == 0:
            raise ValueError(f"no sample has positive weight: {self.failure}")
        xs = [v if f is None else f(v) for v, wi in zip(self.values, w) if wi > 0]
        return float(np.dot([wi for wi in w if wi > 0], np.asarray(xs, dtype=float)))

    def summary(self, top: int = 10, width: int = 70) -> str:
        """A table: run statistics, then the most probable return values with their weights."""
        s = self.stats
        lines = [
            f"{self.method}: {self.num_particles} particles, {s.get('steps', '?')} steps, "
            f"{len(self.resampled)} resampling steps",
            f"log evidence   {self.log_evidence:.4f}",
            f"final ESS      {self.final_ess:.2f}"
            + (f"   (min over steps {np.min(self.ess):.2f})" if len(self.ess) else ""),
        ]
        if "tokens_fed" in s:
            lines.append(f"model calls    {s['forward_calls']}   tokens fed {s['tokens_fed']}")
        if "seconds" in s:
            lines.append(f"time           {s['seconds']:.2f} s")
        if self.failure:
            lines.append(f"FAILED: {self.failure}")
        kills = self.diagnostics.get("rejected_by")
        if kills:
            lines.append(
                "rejections     " + "; ".join(f"{n} at {site}" for site, n in kills.items())
            )
        if not self.failure:
            lines.append("")
            lines.append(f"{'weight':>8}  value")
            try:
                dist = list(self.distribution().items())
            except TypeError:  # unhashable values
                dist = sorted(zip(self.values, self.weights.tolist()), key=lambda x: -x[1])
            for value, w in dist[:top]:
                text = repr(value)
                if len(text) > width:
                    text = text[: width - 3] + "..."
                lines.append(f"{w:8.4f}  {text}")
            if len(dist) > top:
                lines.append(f"{'':8}  ... {len(dist) - top} more distinct values")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"Posterior(method={self.method!r}, particles={self.num_particles}, "
            f"log_evidence={self.log_evidence:.4f}, ess={self.final_ess:.2f})"
        )
