"""What a compiled program is when it runs: its `Code`, and the `Locals` of one call.

A suspended call is `(code, pc, L)` (a frame of `ppl.inference.engine`). `Code.run` runs the
blocks from `pc` until the call suspends or returns, `Code.catch` says where a `try` that the
compiler split goes on after an exception, and `Code.bind` makes the locals of a call.

Forking a particle deep-copies its locals, and `Locals.__deepcopy__` is the one place that says
how each kind of value is copied: atoms are shared, an iterator over a range is copied at its
position, a builtin method bound to a value is bound to the value's copy, an exception keeps its
traceback and chain, and a lambda that the program made reads the fork's locals, not the
original's.
"""

from __future__ import annotations

import copy
import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ppl import runtime
from ppl.trace import Site


class Locals(dict):
    """A compiled frame's local variables: reading one not yet assigned is Python's error."""

    __slots__ = ()

    @runtime.raises_for_python
    def __missing__(self, name: str) -> Any:
        raise UnboundLocalError(
            f"cannot access local variable '{name}' where it is not associated with a value"
        )

    def __deepcopy__(self, memo: dict) -> Locals:
        out = Locals()
        memo[id(self)] = out
        deepcopy = copy.deepcopy
        for name, value in self.items():
            cls = value.__class__
            if cls in _ATOMIC:
                out[name] = value
            elif cls is _RANGE_ITERATOR:  # a `for` over a range: the cheapest exact copy
                found = memo.get(id(value))
                if found is None:
                    found = memo[id(value)] = _copy_range_iterator(value)
                out[name] = found
            elif cls is _BUILTIN_METHOD:
                out[name] = _copy_builtin_method(value, memo)
            elif isinstance(value, BaseException):  # one being handled: keep where it was raised
                out[name] = _copy_exception(value, memo)
            elif cls is types.FunctionType and value.__closure__:
                out[name] = _rebind_closure(value, self, out, memo)
            else:
                out[name] = deepcopy(value, memo)
        return out


_ATOMIC = frozenset({type(None), bool, int, float, str, bytes, complex, range})
_BUILTIN_METHOD = type([].append)
_RANGE_ITERATOR = type(iter(range(0)))


def _copy_range_iterator(it: Any) -> Any:
    # 3.11 gives the whole range and the position; 3.12 on gives the range left, and None
    _, (numbers,), position = it.__reduce__()
    out = iter(numbers)
    if position is not None:
        out.__setstate__(position)
    return out


def _rebind_closure(fn: types.FunctionType, old: Locals, new: Locals, memo: dict) -> Any:
    """A lambda made by a program's code, its variables read from the fork's locals.

    A lambda reads the program's variables from the locals dict it closes over; a fork's copy
    must read the fork's (`deepcopy` would share the function, and so the original's locals).
    """
    found = memo.get(id(fn))
    if found is not None:
        return found
    cells = fn.__closure__ or ()
    if not any(_cell_holds(c, old) for c in cells):
        return fn
    closure = tuple(types.CellType(new) if _cell_holds(c, old) else c for c in cells)
    other = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, closure)
    other.__kwdefaults__ = copy.deepcopy(fn.__kwdefaults__, memo)
    other.__qualname__ = fn.__qualname__
    other.__dict__.update(fn.__dict__)
    memo[id(fn)] = other
    return other


def _cell_holds(cell: types.CellType, value: Any) -> bool:
    try:
        return cell.cell_contents is value
    except ValueError:  # an empty cell
        return False


def _copy_builtin_method(method: Any, memo: dict) -> Any:
    """A method of a builtin object, bound to its object's copy (`deepcopy` shares it as is).

    Such a method is held across a choice by an expression that the choice splits, such as
    `xs.append(sample(...))`: the fork's call must append to the fork's list.
    """
    owner = method.__self__
    if owner is None or isinstance(owner, types.ModuleType):
        return method  # a builtin function (`len`), not bound to a value
    return getattr(copy.deepcopy(owner, memo), method.__name__)


def _copy_exception(e: BaseException, memo: dict) -> BaseException:
    """A copy of `e` (its arguments and attributes copied) with its traceback and chain."""
    other = copy.deepcopy(e, memo)
    if other is not e:
        other.__traceback__ = e.__traceback__
        other.__context__ = e.__context__
        other.__cause__ = e.__cause__
        other.__suppress_context__ = e.__suppress_context__
    return other


@dataclass
class Code:
    """A compiled program: its blocks, its sites and how to bind its arguments."""

    name: str
    blocks: list[Callable[[dict], Any]]
    sites: list[Site]
    signature: inspect.Signature
    #: the locals that hold the iterators of `for` loops, with each loop's `file:line`
    loops: tuple[tuple[str, str], ...] = ()
    #: for each block, the `try` that catches what it raises: (local to store it in, block to
    #: go on at), or None
    handlers: tuple[tuple[str, int] | None, ...] = ()
    #: for each block inside an `except` or `finally`, the local holding the exception being
    #: handled (the `__context__` of one raised there), or None
    handling: tuple[str | None, ...] = ()
    qualname: str = ""

    def run(self, L: dict, pc: int) -> tuple:
        """Run from block `pc` until the program suspends or returns."""
        blocks = self.blocks
        while True:
            try:
                while True:
                    r = blocks[pc](L)
                    if r.__class__ is int:
                        pc = r
                    elif r[0] == -2:  # an exception carried on (a `try` it went through):
                        raise r[1]  # raised here, it keeps the user's traceback as it was
                    else:
                        return r
            except Exception as e:
                pc = self.catch(L, pc, e)
                if pc is None:
                    raise

    def catch(self, L: dict, pc: int, e: BaseException) -> int | None:
        """Where block `pc` goes on when `e` is raised in it (stored for its `try`), or None."""
        if not self.handlers:
            return None
        slot = self.handling[pc]
        if slot is not None:
            handled = L.get(slot)
            if isinstance(handled, BaseException) and handled is not e and e.__context__ is None:
                e.__context__ = handled
        region = self.handlers[pc]
        if region is None:
            return None
        L[region[0]] = e
        return region[1]

    def bind(self, args: tuple, kwargs: dict, share: bool = False) -> dict:
        """The initial locals for a call.

        A run's first call copies its arguments (particles never share them); a call from one
        program to another within a particle passes them as Python does (`share`), so that the
        callee's changes to them are seen by its caller. Default values are copied either way.
        """
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.name}(): {e}") from None
        if not share:
            bound.apply_defaults()
            return copy.deepcopy(Locals(bound.arguments))
        passed = set(bound.arguments)
        bound.apply_defaults()
        return Locals(
            (name, value if name in passed else copy.deepcopy(value))
            for name, value in bound.arguments.items()
        )
