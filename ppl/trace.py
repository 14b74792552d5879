"""Addresses and traces: what a run chose, where, and how probable it was.

Every random choice has an *address*, a string that names it within one execution:

* `sample("theta", d)` has the address `"theta"`;
* an unnamed `sample(d)` on line 12 of program `story` has `"story:12#k"`, where `k` counts the
  earlier choices and program calls made on that line by the same call of `story` (so the token
  drawn in the fourth pass of a loop is `"story:12#3"`);
* the choices of a sub-program are addressed under the address of the call that made them:
  `outer` calling `inner` on line 15 puts `inner`'s choice `"y"` at `"outer:15#0/y"`.

The same rules hold compiled (under inference) and run directly (under handlers), so an address
found in one run names the same choice in another.

A `Trace` lists the choices of one execution in the order they were made, with the total score

    score = sum_i log p(x_i | x_<i) + sum_j log-weight_j,

the log of the program's unnormalised target density at those choices: the first sum runs over
the random choices, the second over the `observe`, `factor` and `condition` statements met.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload


@dataclass(frozen=True)
class Site:
    """A statement that may suspend a program: where it is, and its source text."""

    filename: str
    lineno: int
    function: str
    source: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.lineno} in {self.function}: {self.source}"


@dataclass(frozen=True)
class Choice:
    """A random choice: the statement that made it, its name, value, log probability, address.

    `log_prob` is log p(value) under the distribution the program named, even when the value was
    drawn from a proposal.
    """

    site: Site | None
    name: str | None
    value: Any
    log_prob: float
    address: str = ""


def address_of(prefix: str, name: str | None, function: str, lineno: int, count: int) -> str:
    """The address of a choice: its name, or `function:line#count`, under the caller's prefix."""
    if name is not None:
        return prefix + name
    return f"{prefix}{function}:{lineno}#{count}"


class Trace(Sequence[Choice]):
    """The choices of one execution, in order, with its total score.

    A sequence of `Choice`; `trace["theta"]` is the choice at an address and `trace.values()`
    maps addresses to values.

    Attributes:
        log_prior: sum of the log probabilities of the choices.
        log_likelihood: sum of the log-weights of `observe`, `factor` and `condition`.
        score: `log_prior + log_likelihood`, the log unnormalised target density.
    """

    __slots__ = ("_choices", "_index", "log_likelihood")

    def __init__(self, choices: Sequence[Choice] = (), log_likelihood: float = 0.0) -> None:
        self._choices = list(choices)
        self._index: dict[str, Choice] | None = None
        self.log_likelihood = float(log_likelihood)

    @property
    def log_prior(self) -> float:
        return math.fsum(c.log_prob for c in self._choices)

    @property
    def score(self) -> float:
        prior = self.log_prior
        if prior == -math.inf or self.log_likelihood == -math.inf:
            return -math.inf  # never -inf + inf
        return prior + self.log_likelihood

    def values(self) -> dict[str, Any]:
        """`{address: value}` for every choice, in order."""
        return {c.address: c.value for c in self._choices}

    def addresses(self) -> list[str]:
        return [c.address for c in self._choices]

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str):
            return item in self._by_address()
        return item in self._choices

    def _by_address(self) -> dict[str, Choice]:
        if self._index is None:
            self._index = {c.address: c for c in self._choices}
        return self._index

    @overload
    def __getitem__(self, key: int) -> Choice: ...
    @overload
    def __getitem__(self, key: str) -> Choice: ...
    @overload
    def __getitem__(self, key: slice) -> list[Choice]: ...

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                return self._by_address()[key]
            except KeyError:
                raise KeyError(
                    f"no choice at address {key!r}; addresses: {self.addresses()[:10]}"
                ) from None
        return self._choices[key]

    def __len__(self) -> int:
        return len(self._choices)

    def __iter__(self) -> Iterator[Choice]:
        return iter(self._choices)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Trace):
            return self._choices == other._choices and self.log_likelihood == other.log_likelihood
        if isinstance(other, list):
            return self._choices == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"{c.address}={c.value!r:.30}" for c in self._choices[:6])
        more = f", ... {len(self) - 6} more" if len(self) > 6 else ""
        return f"Trace([{shown}{more}], score={self.score:.4f})"
