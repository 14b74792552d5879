"""The distribution protocol, the NumPyro adapter and small Python-valued discrete distributions.

A distribution is any object with

* `sample(rng: numpy.random.Generator) -> value`
* `log_prob(value) -> float`

Three families meet the protocol:

* the small helpers here (`Bernoulli`, `Categorical` over any values, `UniformChoice`,
  `Geometric`), whose values are plain Python objects;
* any NumPyro distribution, adapted by `as_distribution`: its JAX key is drawn from the run's
  generator (users never handle keys), scalar values come back as Python numbers and arrays as
  NumPy arrays, and `log_prob` sums over every element (batch and event dimensions alike);
* language-model distributions (`ctx.next_token()`, `ppl.context`), which the scheduler
  recognises and batches across particles.

`proposed(p, q)` draws from `q` and scores under `p`; the run's weight gains
log p(x) - log q(x), so the target is unchanged and only the variance differs.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from ppl.context import NextToken, TokenProposal


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


# ---------------------------------------------------------------------------------------------
# NumPyro distributions


def _is_numpyro(obj: Any) -> bool:
    module = sys.modules.get("numpyro.distributions")  # no NumPyro object exists before import
    return module is not None and isinstance(obj, module.Distribution)


_JITTED: dict[str, Any] = {}


def _jitted(kind: str) -> Any:
    """Compiled `sample` and `log_prob` taking the distribution as a pytree argument.

    Compilation is cached by the distribution's class and parameter shapes, so a model that builds
    `Beta(a, b)` afresh at every call compiles once.
    """
    fn = _JITTED.get(kind)
    if fn is None:
        import jax

        if kind == "sample":
            fn = jax.jit(lambda seed, d: d.sample(jax.random.PRNGKey(seed)))
        else:
            fn = jax.jit(lambda d, value: d.log_prob(value).sum())
        _JITTED[kind] = fn
    return fn


def _to_python(x: Any) -> Any:
    a = np.asarray(x)
    return a.item() if a.ndim == 0 else np.array(a)


class NumPyro(Distribution):
    """A NumPyro distribution under the ppl protocol (made by `as_distribution`).

    `sample(rng)` draws a 32-bit seed from `rng` and samples with the JAX key made from it; the
    value is a Python scalar when the distribution's shape is `()`, else a NumPy array.
    `log_prob(value)` is the sum of NumPyro's log densities over all elements, -inf outside the
    support.
    """

    __slots__ = ("dist",)

    def __init__(self, dist: Any) -> None:
        self.dist = dist

    @property
    def is_discrete(self) -> bool:
        return bool(self.dist.support.is_discrete)

    def sample(self, rng: np.random.Generator) -> Any:
        seed = rng.integers(2**32, dtype=np.uint32)
        try:
            value = _jitted("sample")(seed, self.dist)
        except TypeError:  # a distribution that is not a pytree: sample it eagerly
            import jax

            value = self.dist.sample(jax.random.PRNGKey(seed))
        return _to_python(value)

    def log_prob(self, value: Any) -> float:
        try:
            lp = float(_jitted("log_prob")(self.dist, value))
        except TypeError:
            lp = float(self.dist.log_prob(value).sum())
        if math.isnan(lp) and not bool(np.all(np.asarray(self.dist.support(value)))):
            return -math.inf  # NumPyro gives NaN for some values outside the support
        return lp

    def __repr__(self) -> str:
        return f"NumPyro({type(self.dist).__name__})"


def as_distribution(kind: str, obj: Any) -> Any:
    """`obj` under the protocol: NumPyro distributions wrapped, others checked and returned."""
    if _is_numpyro(obj):
        return NumPyro(obj)
    if not (hasattr(obj, "sample") and hasattr(obj, "log_prob")):
        raise TypeError(
            f"{kind}() needs a distribution (a ppl.distributions or NumPyro distribution, or "
            f"ctx.next_token()), got {type(obj).__name__}: {obj!r:.80}"
        )
    return obj


# ---------------------------------------------------------------------------------------------
# Proposals


class Proposed(Distribution):
    """Draws from `proposal`, scores under `target`.

    `log_prob(x)` is log p(x) (the choice's probability under the program), and
    `log_weight(x) = log p(x) - log q(x)` is what the run's weight gains. The proposal must give
    positive probability wherever the target does, or the estimate is biased.
    """

    def __init__(self, target: Any, proposal: Any) -> None:
        self.target = target
        self.proposal = proposal

    def sample(self, rng: np.random.Generator) -> Any:
        return self.proposal.sample(rng)

    def log_prob(self, value: Any) -> float:
        return float(self.target.log_prob(value))

    def log_weight(self, value: Any) -> float:
        log_p = float(self.target.log_prob(value))
        if log_p == -math.inf:
            return -math.inf
        return log_p - float(self.proposal.log_prob(value))

    def __repr__(self) -> str:
        return f"Proposed({self.target!r}, proposal={self.proposal!r})"


def proposed(target: Any, proposal: Any) -> Any:
    """`target` sampled through `proposal`: a `TokenProposal` for tokens, else `Proposed`."""
    if isinstance(target, NextToken) or isinstance(proposal, NextToken):
        if not (type(target) is NextToken and type(proposal) is NextToken):
            raise TypeError(
                "a token proposal needs two plain next-token distributions "
                f"(ctx.next_token()), got {target!r:.60} and {proposal!r:.60}"
            )
        return TokenProposal(target.context, proposal.context)
    return Proposed(target, proposal)
