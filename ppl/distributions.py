"""The distribution protocol, the NumPyro adapter and small Python-valued discrete distributions.

A distribution is any object with

* `sample(rng: numpy.random.Generator) -> value`
* `log_prob(value) -> float`

and optionally `support_error(value) -> str | None`: None when `value` is one the distribution
could give, else a sentence saying what its values are; and `enumerate_support() -> list | None`:
every value of positive probability when there are finitely many, else None (`ppl.exact`
enumerates the choices of such distributions). `observe` asks it (`check_value`) and
raises a `TypeError` that names the user's line, the distribution and the value, so that a value
of the wrong kind (`observe(Bernoulli(0.9), "False")`, whose string is truthy) is never scored
as some other value. `log_prob` itself is total: -inf for any value outside the support.

Three families meet the protocol:

* the small helpers here (`Bernoulli`, `Categorical` over any values, `UniformChoice`,
  `Geometric`), whose values are plain Python objects;
* any NumPyro distribution, adapted by `as_distribution`: its JAX key is drawn from the run's
  generator (users never handle keys), scalar values come back as Python numbers and arrays as
  NumPy arrays, and `log_prob` sums over every element (batch and event dimensions alike);
* language-model distributions (`ctx.next_token()`, `ppl.next_token`), which the scheduler
  recognises and batches across particles.

`proposed(p, q)` draws from `q` and scores under `p`; the run's weight gains
log p(x) - log q(x), so the target is unchanged and only the variance differs.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from ppl.next_token import NextToken, TokenProposal


class Distribution:
    """Base class for Python-valued distributions (the protocol needs only the two methods)."""

    def sample(self, rng: np.random.Generator) -> Any:
        raise NotImplementedError

    def log_prob(self, value: Any) -> float:
        raise NotImplementedError

    def support_error(self, value: Any) -> str | None:
        """None if `value` is a value of this distribution, else what its values are.

        `observe` raises with this sentence (see `check_value`); the base class accepts all.
        """
        return None

    def enumerate_support(self) -> list[Any] | None:
        """Every value of positive probability when there are finitely many, else None."""
        return None

    def __deepcopy__(self, memo: dict) -> Distribution:
        return self  # distributions are immutable values


def check_value(kind: str, dist: Any, value: Any) -> None:
    """Raise a `TypeError` if `value` is not one `dist` could give (its `support_error`).

    The message names the primitive, the value and the distribution; the primitives add the
    user's line (`file:line`). Distributions without `support_error` accept every value.
    """
    check = getattr(dist, "support_error", None)
    if check is None:
        return
    problem = check(value)
    if problem is not None:
        raise TypeError(f"{kind}(): the value {_show(value)} is not a value of {dist!r}: {problem}")


def _show(value: Any) -> str:
    """`value` for an error message: its repr (cut short) and its type."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    name = type(value).__name__
    return f"{text} (a{'n' if name[:1].lower() in 'aeiou' else ''} {name})"


_NOT_A_NUMBER = object()


def _scalar(value: Any) -> Any:
    """`value` as a Python bool, int or float if it is a real number: a Python number, a NumPy
    scalar or a 0-d NumPy or JAX array; else `_NOT_A_NUMBER`."""
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, numbers.Real) and not hasattr(value, "__array__"):
        return float(value)  # Fraction, Decimal-like numbers
    if isinstance(value, np.generic) or hasattr(value, "__array__"):
        try:
            a = np.asarray(value)
        except Exception:
            return _NOT_A_NUMBER
        if a.ndim == 0 and a.dtype.kind in "biuf":
            return a.item()
    return _NOT_A_NUMBER


def _kind(value: Any) -> Any:
    """What kind of value `value` is, for telling a mistake from an unlikely value: all real
    numbers are one kind (Python, NumPy, 0-d arrays), other values are of their own type."""
    if isinstance(value, (bool, int, float, np.bool_, np.number)):
        return numbers.Real
    if _scalar(value) is not _NOT_A_NUMBER:
        return numbers.Real
    return type(value)


def _equal(a: Any, b: Any) -> bool:
    """`a == b` as a bool; False where the comparison is not a truth value (arrays)."""
    try:
        return bool(a == b)
    except Exception:
        return False


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
    """True with probability `p`.

    Its values are True and False; as in NumPyro (whose support is {0, 1}), 1 and 0 (ints,
    floats, NumPy scalars, 0-d arrays) are the same values. Anything else, such as the string
    "False" or the number 2, is not a value: `observe` raises, `log_prob` gives -inf.
    """

    def __init__(self, p: float) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Bernoulli: p must be in [0, 1], got {p}")
        self.p = float(p)

    def sample(self, rng: np.random.Generator) -> bool:
        return bool(rng.random() < self.p)

    def log_prob(self, value: Any) -> float:
        if value is not True and value is not False:
            value = _scalar(value)
            if value is _NOT_A_NUMBER or (value != 0 and value != 1):
                return -math.inf
        q = self.p if value else 1.0 - self.p
        return math.log(q) if q > 0 else -math.inf

    def support_error(self, value: Any) -> str | None:
        if value is True or value is False:
            return None
        x = _scalar(value)
        if x is not _NOT_A_NUMBER and (x == 0 or x == 1):
            return None
        hint = "; a string is not read as a truth value" if isinstance(value, str) else ""
        return f"a Bernoulli's values are True and False (or 1 and 0){hint}"

    def enumerate_support(self) -> list[Any]:
        return [v for v, q in ((False, 1.0 - self.p), (True, self.p)) if q > 0]

    def __repr__(self) -> str:
        return f"Bernoulli({self.p})"


class Categorical(Distribution):
    """One of `values` (any Python objects), with probabilities `probs` (uniform if omitted).

    A value equal to none of `values` has probability 0 (`log_prob` gives -inf): a program may
    build the list from its choices, as in `observe(UniformChoice(range(n)), k)` with `n`
    unknown. A value of another kind than all of `values` (the string "1" among the numbers
    0, 1, 2) is a mistake: `observe` raises.
    """

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
        self._kinds = {_kind(v) for v in self.values}

    def sample(self, rng: np.random.Generator) -> Any:
        i = int(np.searchsorted(self._cdf, rng.random() * self._cdf[-1], side="right"))
        return self.values[min(i, len(self.values) - 1)]

    def log_prob(self, value: Any) -> float:
        try:
            total = sum(p for v, p in zip(self.values, self.probs) if v == value)
        except (TypeError, ValueError):  # a comparison that is not a truth value (arrays)
            total = sum(p for v, p in zip(self.values, self.probs) if _equal(v, value))
        return math.log(total) if total > 0 else -math.inf

    def support_error(self, value: Any) -> str | None:
        if _kind(value) in self._kinds or any(_equal(v, value) for v in self.values):
            return None
        shown = ", ".join(repr(v) for v in self.values[:8])
        more = f", ... ({len(self.values)} in all)" if len(self.values) > 8 else ""
        return f"its values are {shown}{more}"

    def enumerate_support(self) -> list[Any]:
        """Each value once (the first of equal ones), if its probability is positive."""
        out: list[Any] = []
        for v in self.values:
            if not any(_equal(u, v) for u in out) and self.log_prob(v) > -math.inf:
                out.append(v)
        return out

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
        k = _count(value)
        if k is None:
            return -math.inf
        return (
            k * math.log1p(-self.p) + math.log(self.p)
            if self.p < 1
            else (0.0 if k == 0 else -math.inf)
        )

    def support_error(self, value: Any) -> str | None:
        if _count(value) is not None:
            return None
        return "a Geometric's values are the counts 0, 1, 2, ..."

    def __repr__(self) -> str:
        return f"Geometric({self.p})"


def _count(value: Any) -> int | None:
    """`value` as a count 0, 1, 2, ... (an int, or a float or NumPy number equal to one); None
    for anything else, booleans included."""
    x = _scalar(value)
    if x is _NOT_A_NUMBER or isinstance(x, bool) or x < 0:
        return None
    if isinstance(x, float):
        if not x.is_integer():
            return None
        x = int(x)
    return x


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
            fn = jax.jit(_log_prob_sum)
        _JITTED[kind] = fn
    return fn


def _log_prob_sum(d: Any, value: Any) -> Any:
    """NumPyro's log density of `value` summed over its elements, -inf outside the support.

    NumPyro (unless `validate_args=True`) scores some values outside the support as if they
    were in it: `Bernoulli(0.9).log_prob(2)` is 2 log 0.9 - log 0.1 > 0 under `jit`.
    """
    import jax.numpy as jnp

    lp = jnp.sum(d.log_prob(value))
    try:
        ok = jnp.all(d.support(value))
    except Exception:  # a support that cannot be checked (`constraints.dependent`)
        return lp
    return jnp.where(ok, lp, -jnp.inf)


def _fixed_support(d: Any) -> bool:
    """Is the support of NumPyro distribution `d` the same whatever its parameters?

    Then a value outside it is a mistake (`observe` raises). A support that depends on the
    parameters (`Uniform(0, n)`, `Binomial(n, p)` with `n` a choice of the program) may leave a
    value out for some parameters only: probability 0, not a mistake. Categorical distributions
    count as fixed: their categories are the shape of `probs`, not a value the program draws.
    """
    from numpyro.distributions import CategoricalLogits, CategoricalProbs, constraints

    support = d.support
    while hasattr(support, "base_constraint"):  # constraints.independent(base, n)
        support = support.base_constraint
    return isinstance(support, constraints.ParameterFreeConstraint) or isinstance(
        d, (CategoricalProbs, CategoricalLogits)
    )


def _to_python(x: Any) -> Any:
    a = np.asarray(x)
    return a.item() if a.ndim == 0 else np.array(a)


class NumPyro(Distribution):
    """A NumPyro distribution under the ppl protocol (made by `as_distribution`).

    `sample(rng)` draws a 32-bit seed from `rng` and samples with the JAX key made from it; the
    value is a Python scalar when the distribution's shape is `()`, else a NumPy array.
    `log_prob(value)` is the sum of NumPyro's log densities over all elements, -inf outside the
    support. `observe` raises for a value that is not a number, a non-integer value of a discrete
    distribution, and a value outside a support that no parameter changes (`support_error`).
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
        if isinstance(value, (float, np.floating, np.ndarray)) and self.is_discrete:
            a = np.asarray(value)
            if a.dtype.kind == "f" and np.all(np.mod(a, 1) == 0):
                value = a.astype(np.int64)  # 1.0 is the value 1 (NumPyro's Categorical wants ints)
        try:
            return float(_jitted("log_prob")(self.dist, value))
        except TypeError:  # a distribution that is not a pytree: score it eagerly
            return float(_log_prob_sum(self.dist, value))

    def support_error(self, value: Any) -> str | None:
        support = self.dist.support
        try:
            a = np.asarray(value)
        except Exception:
            a = None
        if a is None or a.dtype.kind not in "biuf":
            return f"its values are numbers or arrays of numbers in its support, {support}"
        discrete = getattr(support, "is_discrete", False) is True
        if discrete and a.dtype.kind == "f" and not np.all(np.mod(a, 1) == 0):
            return f"its values are integers in its support, {support}"
        if _fixed_support(self.dist):
            try:
                ok = bool(np.all(np.asarray(support(a))))
            except Exception:  # a check NumPyro cannot make on this value: log_prob will say
                return None
            if not ok:
                return f"its support is {support}"
        return None

    def enumerate_support(self) -> list[Any] | None:
        """The values of a scalar NumPyro distribution with `has_enumerate_support`
        (Bernoulli, Categorical, Binomial, ...), those of positive probability."""
        d = self.dist
        if not getattr(d, "has_enumerate_support", False) or d.batch_shape or d.event_shape:
            return None
        values = [_to_python(v) for v in np.asarray(d.enumerate_support(expand=False))]
        return [v for v in values if self.log_prob(v) > -math.inf]

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

    def support_error(self, value: Any) -> str | None:
        check = getattr(self.target, "support_error", None)
        return check(value) if check is not None else None

    def enumerate_support(self) -> list[Any] | None:
        """The target's (a proposal changes how a choice is drawn, not its values)."""
        enumerate_support = getattr(self.target, "enumerate_support", None)
        return enumerate_support() if enumerate_support is not None else None

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
