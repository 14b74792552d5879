"""How a compiled `for` loop iterates, and how its iterator forks with its particle.

A `for` loop that holds a site is compiled the way CPython runs it: `iter()` of the iterable
once, when the loop starts, then `next()` before each pass, held in the particle's locals between
passes. So a list appended to inside its loop is iterated to its new end, a dict changed in size
raises Python's `RuntimeError`, `itertools.count()` runs until a `break`, and a generator's side
effects happen between passes, as they do in CPython.

Forking a particle copies its locals (`copy.deepcopy`), and a loop's iterator is copied with the
containers it walks (one memo), so the fork goes on iterating its own copy from the same point.
For most iterators `deepcopy` does exactly that (a list iterator is its list and an index). Three
kinds it copies wrongly, as a detached list of what was left: the iterators of dicts (their keys,
values, items, reversed), of sets, and of `OrderedDict`s. `copy_iterator` gives those a copy
that still sees the copied container (its values, its size) as the native one would, and looks
inside `enumerate`, `zip`, `map`, `filter` and the itertools to find them. An iterator that
cannot be copied at all (a generator object) raises `LoopForkError`, naming the loop, when a
particle is forked inside that loop: a program that never forks there runs.
"""

from __future__ import annotations

import copy
import gc
import sys
import warnings
from collections import OrderedDict
from typing import Any

from ppl.runtime import raises_for_python

# Python 3.12 and 3.13 warn that itertools objects lose `__reduce__` in 3.14 (from which a fork
# inside a loop over one raises LoopForkError, as for a generator)
_ITERTOOLS_WARN = sys.version_info >= (3, 12)


class LoopForkError(TypeError):
    """A particle was forked inside a `for` loop whose iterator cannot be copied."""


# iterators whose `deepcopy` is exact: a sequence (copied through the memo) and an index
PLAIN_ITERATORS = _PLAIN = frozenset(
    type(x)
    for x in (
        iter([]),
        iter(()),
        iter(range(0)),
        iter(range(2**70)),
        iter(""),
        iter("\u00e9"),
        iter(b""),
        iter(bytearray()),
        reversed([]),
        reversed(""),
        iter(frozenset()),  # a frozenset never changes; its rest is exact
    )
) - {type(iter(set()))}

_d: dict = {0: 0}
_DICT_KINDS = {
    type(iter(_d)): ("keys", False),
    type(iter(_d.values())): ("values", False),
    type(iter(_d.items())): ("items", False),
    type(reversed(_d)): ("keys", True),
    type(reversed(_d.values())): ("values", True),
    type(reversed(_d.items())): ("items", True),
}
_ODICT_ITERATORS = frozenset(
    type(x) for x in (iter(OrderedDict()), iter(OrderedDict().values()), reversed(OrderedDict()))
)
_SET_ITERATOR = type(iter(set()))
del _d

_MISSING = object()


def copy_iterator(it: Any, memo: dict, where: str) -> Any:
    """A copy of the loop iterator `it` over the containers copied in `memo` (see the module).

    `where` names the loop (`file:line`) for the error raised when `it` cannot be copied.
    """
    found = memo.get(id(it), _MISSING)
    if found is not _MISSING:
        return found
    cls = it.__class__
    if cls in _PLAIN:
        out = copy.deepcopy(it, memo)
    elif cls in _DICT_KINDS:
        kind, backwards = _DICT_KINDS[cls]
        out = _MappingRest.of(it, memo, kind, backwards, "dictionary")
    elif cls in _ODICT_ITERATORS:  # one type for every kind and direction: told by the rest
        out = _MappingRest.of(it, memo, None, None, "OrderedDict")
    elif cls is _SET_ITERATOR:
        out = _SetRest.of(it, memo)
    elif cls.__module__ in ("builtins", "itertools") and hasattr(cls, "__reduce__"):
        out = _rebuild(it, memo, where)
    else:
        try:
            out = copy.deepcopy(it, memo)
        except Exception as e:  # noqa: BLE001 - any failure to copy is said the same way
            raise _cannot_copy(it, where) from e
    memo[id(it)] = out
    return out


def _cannot_copy(it: Any, where: str) -> LoopForkError:
    what = type(it).__name__
    if what == "generator":
        what = "a generator, which Python cannot copy"
    else:
        what = f"a {what} iterator, which cannot be copied"
    return LoopForkError(
        f"{where}: a particle was forked (resampled) inside this `for` loop, but the loop "
        f"iterates over {what}. Iterate over a list or a range instead (for example "
        "`for x in list(...)`, if computing every item before the loop is what you mean), or "
        "make the choices of the loop in a program that is not resampled inside it"
    )


def _rebuild(it: Any, memo: dict, where: str) -> Any:
    """Copy a builtin iterator from its `__reduce__`, copying the iterators inside it ours."""
    try:
        if _ITERTOOLS_WARN and it.__class__.__module__ == "itertools":
            with warnings.catch_warnings():  # 3.12 and 3.13 warn that 3.14 drops it
                warnings.simplefilter("ignore", DeprecationWarning)
                rv = it.__reduce__()
        else:
            rv = it.__reduce__()
    except TypeError as e:  # a generator, or another object that cannot be pickled
        raise _cannot_copy(it, where) from e
    if not isinstance(rv, tuple) or len(rv) < 2:
        raise _cannot_copy(it, where)
    make, args = rv[0], rv[1]
    args = tuple(_copy_part(a, memo, where) for a in args)
    out = make(*args)
    if len(rv) > 2 and rv[2] is not None:
        out.__setstate__(_copy_part(rv[2], memo, where))
    return out


def _copy_part(value: Any, memo: dict, where: str) -> Any:
    if hasattr(value, "__next__"):
        return copy_iterator(value, memo, where)
    if value.__class__ is tuple:
        return tuple(_copy_part(v, memo, where) for v in value)
    return copy.deepcopy(value, memo)


def _container(it: Any, kind: type) -> Any:
    for ref in gc.get_referents(it):
        if isinstance(ref, kind):
            return ref
    return None  # exhausted: the iterator has let go of its container


def _rest(it: Any) -> list | None:
    """What is left of a native dict or set iterator, or None if its container changed size."""
    try:
        return list(it.__reduce__()[1][0])
    except RuntimeError:
        return None


def _keys_left(
    mapping: Any, rest: list, kind: str | None, backwards: bool | None
) -> tuple[list, str | None]:
    """The keys of the entries an iterator has left (`rest`: its keys, values or items).

    The entries left are the last ones in order (the first ones, backwards): an iterator walks
    its mapping's entries in order, and entries added since are appended.
    """
    order = list(mapping)
    n = len(rest)
    directions = [backwards] if backwards is not None else [False, True]
    kinds = [kind] if kind is not None else ["keys", "items", "values"]
    for back in directions:
        keys = order[:n][::-1] if back else order[len(order) - n :]
        for k in kinds:
            if k == "keys":
                seen = keys
            elif k == "values":
                seen = [mapping[key] for key in keys]
            else:
                seen = [(key, mapping[key]) for key in keys]
            if (
                len(kinds) == 1
                and len(directions) == 1
                or all(_same(a, b) for a, b in zip(seen, rest))
            ):
                return keys, k
    return keys, kinds[-1]  # not reached for an iterator of `mapping`


def _same(a: Any, b: Any) -> bool:
    if a.__class__ is tuple and b.__class__ is tuple and len(a) == len(b):
        return all(x is y for x, y in zip(a, b))
    return a is b


class _MappingRest:
    """A dict's (or OrderedDict's) iterator, copied: the keys left, looked up in the copy."""

    __slots__ = ("mapping", "keys", "pos", "size", "kind", "what")

    def __init__(self, mapping: Any, keys: list, size: int | None, kind: str, what: str) -> None:
        self.mapping = mapping
        self.keys = keys
        self.pos = 0
        self.size = size  # None: the container changed size; the next `next` raises
        self.kind = kind
        self.what = what

    @classmethod
    def of(
        cls, it: Any, memo: dict, kind: str | None, backwards: bool | None, what: str
    ) -> _MappingRest:
        """Copy the native iterator `it`; `kind` and `backwards` None: told from what is left."""
        mapping = _container(it, dict)
        if mapping is None:
            return cls(None, [], 0, kind or "keys", what)
        rest = _rest(it)
        if rest is None:
            keys, size = [], None
        else:
            keys, kind = _keys_left(mapping, rest, kind, backwards)
            size = len(mapping)
        copied = copy.deepcopy(mapping, memo)
        return cls(copied, [copy.deepcopy(k, memo) for k in keys], size, kind or "keys", what)

    def __iter__(self) -> _MappingRest:
        return self

    @raises_for_python
    def __next__(self) -> Any:
        mapping = self.mapping
        if mapping is None:
            raise StopIteration
        if self.size is None or len(mapping) != self.size:
            self.size = None
            raise RuntimeError(f"{self.what} changed size during iteration")
        keys = self.keys
        while self.pos < len(keys):
            k = keys[self.pos]
            self.pos += 1
            if k in mapping:  # a key deleted (and another added) since is not reached
                if self.kind == "keys":
                    return k
                if self.kind == "values":
                    return mapping[k]
                return (k, mapping[k])
        self.mapping = None  # exhausted, it lets go of the container as CPython's does
        raise StopIteration

    def __length_hint__(self) -> int:
        return 0 if self.mapping is None else len(self.keys) - self.pos

    def __deepcopy__(self, memo: dict) -> _MappingRest:
        other = _MappingRest(
            copy.deepcopy(self.mapping, memo),
            [copy.deepcopy(k, memo) for k in self.keys],
            self.size,
            self.kind,
            self.what,
        )
        other.pos = self.pos
        return other


class _SetRest:
    """A set's iterator, copied: the elements left, checked against the copied set."""

    __slots__ = ("members", "rest", "pos", "size")

    def __init__(self, members: Any, rest: list, size: int | None) -> None:
        self.members = members
        self.rest = rest
        self.pos = 0
        self.size = size

    @classmethod
    def of(cls, it: Any, memo: dict) -> _SetRest:
        members = _container(it, (set, frozenset))
        if members is None:
            return cls(None, [], 0)
        rest = _rest(it)
        copied = copy.deepcopy(members, memo)
        if rest is None:
            return cls(copied, [], None)
        return cls(copied, [copy.deepcopy(v, memo) for v in rest], len(members))

    def __iter__(self) -> _SetRest:
        return self

    @raises_for_python
    def __next__(self) -> Any:
        members = self.members
        if members is None:
            raise StopIteration
        if self.size is None or len(members) != self.size:
            self.size = None
            raise RuntimeError("Set changed size during iteration")
        rest = self.rest
        while self.pos < len(rest):
            v = rest[self.pos]
            self.pos += 1
            if v in members:
                return v
        self.members = None
        raise StopIteration

    def __length_hint__(self) -> int:
        return 0 if self.members is None else len(self.rest) - self.pos

    def __deepcopy__(self, memo: dict) -> _SetRest:
        other = _SetRest(
            copy.deepcopy(self.members, memo),
            [copy.deepcopy(v, memo) for v in self.rest],
            self.size,
        )
        other.pos = self.pos
        return other
