"""`Program`, a function compiled for inference, and `@program`, which makes one.

Called directly, a `Program` runs its function as plain Python, in an address scope of its own.
Under inference the engine runs its `code`: the blocks that `ppl.compiler.lower` makes from the
function's source (`ppl.compiler.source`), compiled when the decorator runs (so that an
unsupported construct is reported at once) and again at first use (when the names defined after
the program exist). A `NestedProgram` is a `def` or lambda inside a program that makes choices,
made each time its statement runs.

A program travels to another process (a Ray worker, say) as its function, its parsed
source and its fixed choices, rebuilt there by `_unpickle_program` (`Program.__reduce__`); its
compiled blocks never travel and are compiled again where it runs.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import types
from collections.abc import Callable
from typing import Any

from ppl import runtime
from ppl.compiler.lower import _Compiler
from ppl.compiler.runtime_helpers import _RUNTIME
from ppl.compiler.source import _Source
from ppl.compiler.state import Code, Locals, _rebind_closure
from ppl.handlers import condition as _condition_handler
from ppl.primitives import direct_address
from ppl.runtime import _IN_COMPILED, BaseProgram, Scope


class Program(BaseProgram):
    """A function compiled for inference. Calling it directly runs it as plain Python.

    `fixed` holds the choices that `ppl.condition(program, {address: value})` fixed: addresses
    relative to this program's own calls, honoured by direct runs and by inference alike.
    """

    fixed: dict[str, Any] | None
    #: for a function nested in a program: the locals of the program's call it was made in
    outer: Locals | None = None

    def __init__(self, fn: Callable) -> None:
        if not isinstance(fn, types.FunctionType):
            raise TypeError(f"@program decorates a plain function, got {type(fn).__name__}")
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.fixed = None
        self._code: Code | None = None
        self._source = _Source.of(fn)
        self._source_of = fn.__code__  # the code `_source` was verified against
        # Report unsupported constructs now, not at the first inference run. Call sites are
        # resolved again at the first run, when names defined after this one exist.
        _Compiler(self._source, fn).compile()

    @property
    def code(self) -> Code:
        if self.fn.__code__ is not self._source_of:
            # the function's code was replaced (a notebook's auto-reload): compile the new code
            self._source = _Source.of(self.fn)
            self._source_of = self.fn.__code__
            self._code = None
        if self._code is None:
            self._code = _Compiler(self._source, self.fn).compile()
        return self._code

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _IN_COMPILED.get():
            raise RuntimeError(
                f"program {self.__qualname__} was called from a plain function, a lambda or a "
                "comprehension inside a program under inference; call it from a program's own "
                "statements so that it can be suspended"
            )
        # a direct call opens an address scope: under its caller's, or at the root; the
        # caller's is restored when it returns (the scope is context-local: `ppl.runtime`)
        prefix = direct_address(None, 1)[0] + "/" if runtime._SCOPE.get() is not None else ""
        token = runtime._SCOPE.set(Scope(prefix))
        try:
            if self.fixed:
                with _condition_handler(self.fixed, root=prefix):
                    return self.fn(*args, **kwargs)
            return self.fn(*args, **kwargs)
        finally:
            runtime._SCOPE.reset(token)

    def conditioned(self, data: dict[str, Any]) -> Program:
        """This program with the choices at the addresses in `data` fixed to those values."""
        other = copy.copy(self)
        other.fixed = {**(self.fixed or {}), **data}
        return other

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        raise TypeError("@program functions cannot be methods; define them at module level")

    def __deepcopy__(self, memo: dict) -> Program:
        return self

    def __reduce__(self) -> tuple:
        # to another process (a Ray worker): the function and its parsed source, so the program
        # compiles there without reading its file; the compiled blocks are not sent
        return (_unpickle_program, (self.fn, self._source, self.fixed))

    def __repr__(self) -> str:
        return f"<ppl.program {self.__qualname__}>"


class NestedProgram(Program):
    """A `def` or lambda inside a program that makes choices, made when its statement runs.

    Its code was compiled with its program's; it reads and (with `nonlocal`) writes the
    variables of the program's call it was made in (`outer`), as a closure would, and its
    choices are counted in that call's address scope, as a plain function's are when the
    program runs directly. `fn` is the plain function that Python made of the same
    statement: its defaults and signature are the nested function's own.
    """

    def __init__(self, fn: types.FunctionType, template: Code, outer: Locals) -> None:
        functools.update_wrapper(self, fn)
        self.__qualname__ = fn.__qualname__ = template.qualname
        self.fn = fn
        self.fixed = None
        self.outer = outer
        self._template = template
        self._code = None

    @property
    def code(self) -> Code:
        if self._code is None:
            self._code = dataclasses.replace(self._template, signature=inspect.signature(self.fn))
        return self._code

    def __deepcopy__(self, memo: dict) -> NestedProgram:
        other = NestedProgram.__new__(NestedProgram)
        other.__dict__.update(self.__dict__)
        memo[id(self)] = other
        other.outer = copy.deepcopy(self.outer, memo)
        other.fn = _rebind_closure(self.fn, self.outer, other.outer, memo)
        return other

    def __reduce__(self) -> tuple:
        raise TypeError(
            f"{self.__qualname__} is a function nested in a program: it cannot be sent to "
            "another process; define it at module level"
        )

    def __repr__(self) -> str:
        return f"<ppl.program {self.__qualname__} (nested)>"


def _unpickle_program(fn: Callable, source: _Source, fixed: dict[str, Any] | None) -> Program:
    p = Program.__new__(Program)
    functools.update_wrapper(p, fn)
    p.fn = fn
    p.fixed = fixed
    p._code = None
    p._source = source
    p._source_of = fn.__code__
    return p


def program(fn: Callable) -> Program:
    """Compile `fn` into a program that inference algorithms can suspend and fork.

    The function is written as ordinary Python with `sample`, `observe`, `factor` and
    `condition`, and means what CPython makes of it. Choices may stand in assignments and
    their targets, `if`, `for`, `while`, `try`/`except`/`finally`, `with`, `match`, `:=`,
    comprehensions, and generator expressions given to `sum`, `any`, `all`, `min`, `max`,
    `sorted` and the collection builtins, and nested `def`s and lambdas. Not supported,
    reported as a `CompileError` naming file and line: `yield`, `await`, a nested `class`,
    `global`/`nonlocal` in the program itself, `import`, `except*`, and a choice inside
    another generator expression.
    """
    return Program(fn)


_RUNTIME["__ppl_nested"] = NestedProgram  # what generated code calls to make a nested program
