"""The helpers that generated blocks call, and the names they call them by (`_RUNTIME`).

A program's blocks are made by one factory function (`_Compiler.compile` in
`ppl.compiler.lower`) that takes each helper as a parameter named `__ppl_...`: the blocks close
over the helpers themselves, so a user's global that shadows a builtin (`iter`, `next`, `list`)
never changes what a block does, and nothing in a block is looked up by this module's name. The
helpers that raise Python's own errors are marked `runtime.raises_for_python`: such an error is
the user's (as it would be running the function directly), not a fault of ppl's.
"""

from __future__ import annotations

import operator
from typing import Any

from ppl import runtime

_DONE = object()  # what `next` gives a compiled `for` when its iterator is exhausted


@runtime.raises_for_python
def _matches(exc: BaseException, types: Any) -> bool:
    """Whether `except types:` catches `exc`, checked as Python checks it."""
    for t in types if isinstance(types, tuple) else (types,):
        if not (isinstance(t, type) and issubclass(t, BaseException)):
            raise TypeError(
                "catching classes that do not inherit from BaseException is not allowed"
            )
    return isinstance(exc, types)


@runtime.raises_for_python
def _enter(manager: Any) -> tuple[Any, Any]:
    """A `with` statement's start: the manager's `__exit__` and what `__enter__` returned."""
    cls = type(manager)
    try:
        enter, exit_ = cls.__enter__, cls.__exit__
    except AttributeError:
        raise TypeError(
            f"'{cls.__name__}' object does not support the context manager protocol"
        ) from None
    return exit_, enter(manager)


@runtime.raises_for_python
def _reraise(handled: Any) -> BaseException:
    """What a bare `raise` raises in a handler the compiler split into blocks."""
    if isinstance(handled, BaseException):
        return handled
    return RuntimeError("No active exception to reraise")


def _named(fn: Any, qualname: str) -> Any:
    fn.__qualname__ = qualname
    return fn


def _enum_start(start: Any) -> Any:
    enumerate((), start)  # Python's own error for a start that is not an integer
    return operator.index(start)


def _walrus(L: dict, name: str, value: Any) -> Any:
    L[name] = value
    return value


def _bind(L: dict, pairs: tuple) -> bool:
    for name, value in pairs:
        L[name] = value
    return True


# The names the generated blocks use for the runtime's helpers (never the user's globals, which
# may shadow a builtin)
_RUNTIME: dict[str, Any] = {
    "__ppl_iter": iter,
    "__ppl_enum_start": _enum_start,
    "__ppl_next": next,
    "__ppl_done": _DONE,
    "__ppl_matches": _matches,
    "__ppl_enter": _enter,
    "__ppl_reraise": _reraise,
    "__ppl_slice": slice,
    "__ppl_list": list,
    "__ppl_set": set,
    "__ppl_dict": dict,
    "__ppl_walrus": _walrus,
    "__ppl_bind": _bind,
    "__ppl_assertion": AssertionError,
    # `NestedProgram(fn, code, outer)`, set by `ppl.compiler.programs` (which sits above this
    # module): a nested function that makes choices, made where its statement runs
    "__ppl_nested": None,
    "__ppl_named": _named,
}
