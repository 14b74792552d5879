"""A program's source: found, parsed, and verified to be the source of the function that runs.

`@program` compiles a function from its source text. `_Source.of(fn)` finds the definition
(`inspect.findsource`, which also reads a notebook cell's source), parses it, and `_verify` checks
that it is the code `fn` was compiled from: the same first line, name and parameters, and the
file's text compiles there to the same code (for a module that an import hook rewrote, to names
and constants among the function's). A file edited after its module was imported raises
`SourceChangedError`: other code is never compiled in the function's place. A `_Source` travels
with a pickled program (`Program.__reduce__`), so that a worker compiles it without the file.
"""

from __future__ import annotations

import ast
import functools
import inspect
import linecache
import os
import sys
import textwrap
import types
import warnings
from dataclasses import dataclass
from importlib.machinery import SourceFileLoader, SourcelessFileLoader
from typing import Any

from ppl.compiler.errors import CompileError, SourceChangedError


@dataclass
class _Source:
    filename: str
    tree: ast.FunctionDef
    #: the function's source lines from line `first` on, as verified when it was compiled
    lines: tuple[str, ...] = ()
    first: int = 0

    def line(self, lineno: int) -> str:
        """The stripped text of line `lineno` of the function's source."""
        if 0 <= lineno - self.first < len(self.lines):
            return self.lines[lineno - self.first].strip()
        return linecache.getline(self.filename, lineno).strip()

    @staticmethod
    def of(fn: types.FunctionType) -> _Source:
        """The parsed source of `fn`, verified to be the source `fn` was compiled from."""
        code = fn.__code__
        filename = code.co_filename
        try:
            # the source of `fn` itself (`inspect.getsourcelines` would follow `__wrapped__`)
            file_lines, start = inspect.findsource(fn)
        except (OSError, TypeError):
            if _imported_from(fn, filename):  # its file is gone, or shorter than it was
                raise SourceChangedError(
                    fn, code.co_firstlineno, "the file no longer has that line"
                ) from None
            raise CompileError(
                filename,
                code.co_firstlineno,
                f"@program needs the source of {fn.__qualname__}; functions defined in an "
                "interactive prompt or with exec() have none; write the program in a .py file "
                "or a notebook cell (Jupyter and IPython keep the source of their cells)",
            ) from None
        if code.co_name == "<lambda>":
            raise CompileError(filename, start + 1, "@program decorates a function definition")
        lines = inspect.getblock(file_lines[start:])
        first = start + 1
        try:
            module = ast.parse(textwrap.dedent("".join(lines)))
        except SyntaxError:
            raise SourceChangedError(
                fn, code.co_firstlineno, "the code there is not a function definition"
            ) from None
        ast.increment_lineno(module, first - 1)
        node = module.body[0] if module.body else None
        _verify(fn, node, file_lines)
        if isinstance(node, ast.AsyncFunctionDef):
            raise CompileError(filename, node.lineno, "async functions cannot be programs")
        assert isinstance(node, ast.FunctionDef)
        return _Source(filename, node, tuple(lines), first)


# -- verifying that the source read is the function's own --------------------------------------


def _imported_from(fn: types.FunctionType, filename: str) -> bool:
    """Whether `fn`'s module was imported from the file `filename`."""
    module = sys.modules.get(fn.__module__)
    return getattr(module, "__file__", None) == filename


def _verify(fn: types.FunctionType, node: ast.stmt | None, file_lines: list[str]) -> None:
    """Raise `SourceChangedError` unless `node` is the definition `fn` was compiled from.

    Checked: the definition starts at the function's first line, has its name and parameters,
    and the file's text compiles there to the same code (bytecode, names, constants, nested
    code). Source kept only in memory (a notebook cell, whose name is derived from its text)
    cannot change and is not compiled again. A module that an import hook rewrote (pytest's
    assertion rewriting, say) has code that differs from its source; for it, the names and
    constants that the source compiles to must be among the function's.
    """
    code = fn.__code__
    lineno = code.co_firstlineno
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise SourceChangedError(fn, lineno, "no function is defined there any more")
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    if start != lineno or node.name != code.co_name:
        found = f"`def {node.name}` at line {node.lineno}"
        raise SourceChangedError(fn, lineno, f"the definition found there is {found}")
    was, now = _params_of_function(fn), _params_of_node(node)
    if was != now:
        raise SourceChangedError(
            fn, lineno, f"its parameters are now ({', '.join(now)}), were ({', '.join(was)})"
        )
    filename = code.co_filename
    if (filename.startswith("<") and filename.endswith(">")) or not os.path.isfile(filename):
        return
    compiled = _compiled_again(file_lines, code)
    rewritten = _rewritten_at_import(fn)
    if compiled is None or not (
        _same_facts(compiled, code) if rewritten else _same_code(compiled, code)
    ):
        raise SourceChangedError(
            fn, lineno, "the code there differs from the code that was imported"
        )


def _params_of_function(fn: types.FunctionType) -> list[str]:
    code = fn.__code__
    n_pos, n_kw = code.co_argcount, code.co_kwonlyargcount
    names = code.co_varnames
    n_defaults = len(fn.__defaults__ or ())
    out = [
        names[i] + ("=" if i >= n_pos - n_defaults else "") for i in range(code.co_posonlyargcount)
    ]
    if code.co_posonlyargcount:
        out.append("/")
    out += [
        names[i] + ("=" if i >= n_pos - n_defaults else "")
        for i in range(code.co_posonlyargcount, n_pos)
    ]
    rest = n_pos + n_kw
    if code.co_flags & inspect.CO_VARARGS:
        out.append("*" + names[rest])
        rest += 1
    elif n_kw:
        out.append("*")
    kw_defaults = fn.__kwdefaults__ or {}
    out += [n + ("=" if n in kw_defaults else "") for n in names[n_pos : n_pos + n_kw]]
    if code.co_flags & inspect.CO_VARKEYWORDS:
        out.append("**" + names[rest])
    return out


def _params_of_node(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = node.args
    positional = a.posonlyargs + a.args
    first_default = len(positional) - len(a.defaults)
    marked = [p.arg + ("=" if i >= first_default else "") for i, p in enumerate(positional)]
    out = marked[: len(a.posonlyargs)]
    if a.posonlyargs:
        out.append("/")
    out += marked[len(a.posonlyargs) :]
    if a.vararg is not None:
        out.append("*" + a.vararg.arg)
    elif a.kwonlyargs:
        out.append("*")
    out += [p.arg + ("" if d is None else "=") for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    if a.kwarg is not None:
        out.append("**" + a.kwarg.arg)
    return out


_FUTURE_FLAGS = 0
for _feature in __import__("__future__").all_feature_names:
    _FUTURE_FLAGS |= getattr(__import__("__future__"), _feature).compiler_flag
_KIND_FLAGS = (
    inspect.CO_VARARGS
    | inspect.CO_VARKEYWORDS
    | inspect.CO_GENERATOR
    | inspect.CO_COROUTINE
    | inspect.CO_ASYNC_GENERATOR
)


def _compiled_again(file_lines: list[str], code: types.CodeType) -> types.CodeType | None:
    """The code object that the file's text now compiles to where `code` was defined.

    The whole file is compiled (nothing is run), so that the function is compiled in its own
    context: its module's imports and futures, its enclosing functions.
    """
    top = _compile_file("".join(file_lines), code.co_filename, code.co_flags & _FUTURE_FLAGS)
    if top is None:
        return None
    todo = [top]
    while todo:
        c = todo.pop()
        for const in c.co_consts:
            if isinstance(const, types.CodeType):
                if const.co_name == code.co_name and const.co_firstlineno == code.co_firstlineno:
                    return const
                todo.append(const)
    return None


@functools.lru_cache(maxsize=8)  # a module of many programs is compiled once, not once each
def _compile_file(text: str, filename: str, flags: int) -> types.CodeType | None:
    try:
        with warnings.catch_warnings():  # its import already said them (an invalid escape...)
            warnings.simplefilter("ignore")
            return compile(text, filename, "exec", flags=flags, dont_inherit=True)
    except (SyntaxError, ValueError):
        return None


def _rewritten_at_import(fn: types.FunctionType) -> bool:
    """Whether `fn`'s module was loaded by an import hook that may rewrite its code."""
    module = sys.modules.get(fn.__module__)
    if getattr(module, "__file__", None) != fn.__code__.co_filename:
        return False  # compiled from the text by exec() or the like
    spec = getattr(module, "__spec__", None)
    loader = getattr(spec, "loader", None) or getattr(module, "__loader__", None)
    return loader is not None and type(loader) not in (SourceFileLoader, SourcelessFileLoader)


def _const_key(value: Any) -> Any:
    if isinstance(value, (tuple, frozenset)):
        return (type(value), type(value)(_const_key(v) for v in value))
    return (type(value), repr(value))  # repr: tells 0.0 from -0.0 and matches nan with nan


def _same_code(a: types.CodeType, b: types.CodeType) -> bool:
    """Whether `a` and `b` are the same code, line numbers and positions aside."""
    if (
        a.co_code != b.co_code
        or a.co_names != b.co_names
        or a.co_varnames != b.co_varnames
        or a.co_freevars != b.co_freevars
        or a.co_cellvars != b.co_cellvars
        or a.co_argcount != b.co_argcount
        or a.co_posonlyargcount != b.co_posonlyargcount
        or a.co_kwonlyargcount != b.co_kwonlyargcount
        or a.co_flags & _KIND_FLAGS != b.co_flags & _KIND_FLAGS
        or len(a.co_consts) != len(b.co_consts)
    ):
        return False
    for x, y in zip(a.co_consts, b.co_consts):
        if isinstance(x, types.CodeType) or isinstance(y, types.CodeType):
            if not (
                isinstance(x, types.CodeType) and isinstance(y, types.CodeType) and _same_code(x, y)
            ):
                return False
        elif _const_key(x) != _const_key(y):
            return False
    return True


def _facts(code: types.CodeType) -> tuple[set[str], set[Any]]:
    """The names and constants of `code` and the code nested in it."""
    names, consts = set(code.co_names), set()
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            n, c = _facts(const)
            names |= n
            consts |= c
        else:
            consts.add(_const_key(const))
    return names, consts


def _same_facts(source: types.CodeType, imported: types.CodeType) -> bool:
    """Whether the names and constants that the source compiles to are among the imported
    code's (which an import hook may have added to, never taken from)."""
    n1, c1 = _facts(source)
    n2, c2 = _facts(imported)
    return n1 <= n2 and c1 <= c2
