"""`@program`: compile a Python function into a resumable, forkable state machine.

Python generators cannot be copied, and replaying a program from its start to fork it costs time
in proportion to its length. So `@program` rewrites the function's AST into *blocks*: straight-
line pieces of the original code that end where the program may suspend. Every local variable
lives in one dict `L`; the program counter is the index of the next block. A suspended program is
therefore just `(pc, L)`, and forking it is `(pc, deepcopy(L))`: value semantics at a cost in
proportion to the size of the state, not to the number of steps taken.

Suspension points ("sites") are calls to the primitives (`sample`, `observe`, `factor`,
`condition`) and calls to other programs. A block ends at a site by returning

    (resume_pc, target, site_id, callee, args, kwargs)

and the engine (`ppl.inference.engine`) interprets the call, stores its result in `L[target]`
and resumes at `resume_pc`. A block returns an int to jump, and `(-1, value)` to return.

Statements without sites — including whole `if`/`for`/`while`/`try` statements — are kept as
ordinary Python inside one block, so most user code runs at full speed. Expressions holding a
site are split in evaluation order (earlier operands are evaluated into temporaries first).

Generated code keeps the user's file name and line numbers, so a traceback raised inside a
program points at the user's own source line.
"""

from __future__ import annotations

import ast
import builtins
import copy
import functools
import inspect
import itertools
import linecache
import os
import sys
import textwrap
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.machinery import SourceFileLoader, SourcelessFileLoader
from typing import Any

from ppl import runtime
from ppl.handlers import condition as _condition_handler
from ppl.primitives import PRIMITIVES, direct_address
from ppl.runtime import _IN_COMPILED, BaseProgram, Scope
from ppl.trace import Site


class CompileError(Exception):
    """A construct that `@program` does not support, reported with `file:line`."""

    def __init__(self, filename: str, lineno: int, message: str) -> None:
        self.filename = filename
        self.lineno = lineno
        source = linecache.getline(filename, lineno).strip()
        text = f"{filename}:{lineno}: {message}"
        if source:
            text += f"\n    {source}"
        super().__init__(text)


class SourceChangedError(CompileError):
    """The source at a function's file and line is no longer that function's.

    `@program` compiles a function from its source, read when the decorator runs. A file edited
    after its module was imported (by an editor, a notebook's auto-reload, during a long run)
    holds other code at that line: it is never compiled in the function's place.
    """

    def __init__(self, fn: types.FunctionType, lineno: int, what: str) -> None:
        filename = fn.__code__.co_filename
        Exception.__init__(
            self,
            f"the source of {fn.__qualname__} at {filename}:{lineno} changed since it was "
            f"imported: {what}. Reload the module (importlib.reload, or restart) so that "
            "@program compiles the function that runs",
        )
        self.filename = filename
        self.lineno = lineno


@dataclass
class Code:
    """A compiled program: its blocks, its sites and how to bind its arguments."""

    name: str
    blocks: list[Callable[[dict], Any]]
    sites: list[Site]
    signature: inspect.Signature

    def run(self, L: dict, pc: int) -> tuple:
        """Run from block `pc` until the program suspends or returns."""
        blocks = self.blocks
        while True:
            r = blocks[pc](L)
            if r.__class__ is int:
                pc = r
            else:
                return r

    def bind(self, args: tuple, kwargs: dict) -> dict:
        """The initial locals for a call (arguments copied: particles never share them)."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.name}(): {e}") from None
        bound.apply_defaults()
        return copy.deepcopy(dict(bound.arguments))


# ---------------------------------------------------------------------------------------------
# The decorator


class Program(BaseProgram):
    """A function compiled for inference. Calling it directly runs it as plain Python.

    `fixed` holds the choices that `ppl.condition(program, {address: value})` fixed: addresses
    relative to this program's own calls, honoured by direct runs and by inference alike.
    """

    fixed: dict[str, Any] | None

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
        if _IN_COMPILED[0]:
            raise RuntimeError(
                f"program {self.__qualname__} was called from a plain function, a lambda or a "
                "comprehension inside a program under inference; call it from a program's own "
                "statements so that it can be suspended"
            )
        # a direct call opens an address scope: under its caller's, or at the root
        scopes = runtime._SCOPES
        prefix = direct_address(None, 1)[0] + "/" if scopes else ""
        scopes.append(Scope(prefix))
        try:
            if self.fixed:
                with _condition_handler(self.fixed, root=prefix):
                    return self.fn(*args, **kwargs)
            return self.fn(*args, **kwargs)
        finally:
            scopes.pop()

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
    `condition`. Supported: assignments (with unpacking and augmented assignment), `if`,
    `for`, `while`, `break`, `continue`, `return`, calls to plain functions and to other
    programs. Not supported, reported as a `CompileError` naming file and line: `yield`,
    `await`, nested `def`/`class`, `global`/`nonlocal`, `import`, `match`, `:=`, and a primitive
    or program call inside `try`, `with`, a lambda or a comprehension.
    """
    return Program(fn)


# ---------------------------------------------------------------------------------------------
# Source and scopes


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


_FORBIDDEN: dict[type, str] = {
    ast.Yield: "`yield`",
    ast.YieldFrom: "`yield from`",
    ast.Await: "`await`",
    ast.AsyncFunctionDef: "a nested `async def`",
    ast.AsyncFor: "`async for`",
    ast.AsyncWith: "`async with`",
    ast.FunctionDef: "a nested `def` (define helper functions at module level)",
    ast.ClassDef: "a nested `class` (define classes at module level)",
    ast.Global: "`global`",
    ast.Nonlocal: "`nonlocal`",
    ast.Import: "`import` (import at module level)",
    ast.ImportFrom: "`import` (import at module level)",
    ast.NamedExpr: "the walrus operator `:=`",
}
if hasattr(ast, "Match"):
    _FORBIDDEN[ast.Match] = "`match`"

_SCOPES = (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_LOOPS = (ast.For, ast.While)


def _walk_scope(node: ast.AST):
    """Nodes of `node` in the same scope (not inside lambdas or comprehensions)."""
    todo = [node]
    while todo:
        n = todo.pop()
        yield n
        for child in ast.iter_child_nodes(n):
            if not isinstance(child, _SCOPES):
                todo.append(child)


def _bound_in(node: ast.AST) -> set[str]:
    """Names that a lambda or comprehension binds for its own body."""
    if isinstance(node, ast.Lambda):
        a = node.args
        names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
        names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
        return set(names)
    out: set[str] = set()
    for gen in node.generators:  # type: ignore[attr-defined]
        out |= {n.id for n in ast.walk(gen.target) if isinstance(n, ast.Name)}
    return out


# ---------------------------------------------------------------------------------------------
# Lowering


_L = "L"  # the name of the locals dict inside generated blocks


class _Rewriter(ast.NodeTransformer):
    """Rewrite variable references: locals to `L['x']`, closure variables to their cells."""

    def __init__(self, compiler: _Compiler) -> None:
        self.c = compiler
        self.shadowed: list[set[str]] = []

    def visit_Name(self, node: ast.Name) -> ast.AST:
        name = node.id
        if any(name in s for s in self.shadowed):
            return node
        if name in self.c.locals:
            return ast.copy_location(
                ast.Subscript(ast.Name(_L, ast.Load()), ast.Constant(name), node.ctx), node
            )
        if name in self.c.freevars:
            if not isinstance(node.ctx, ast.Load):
                self.c.error(node, f"assigning to the enclosing function's variable `{name}`")
            return ast.copy_location(
                ast.Attribute(ast.Name(f"__cell_{name}", ast.Load()), "cell_contents", ast.Load()),
                node,
            )
        return node

    def _scope(self, node: ast.AST) -> ast.AST:
        self.shadowed.append(_bound_in(node))
        try:
            return self.generic_visit(node)
        finally:
            self.shadowed.pop()

    visit_Lambda = visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _scope

    def visit_Return(self, node: ast.Return) -> ast.AST:
        # a `return` inside a statement kept as plain Python returns from the block
        value = self.visit(node.value) if node.value is not None else ast.Constant(None)
        return ast.copy_location(ast.Return(ast.Tuple([ast.Constant(-1), value], ast.Load())), node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        # annotations of locals are dropped: `x: int = v` is `x = v`, `x: int` is nothing
        if node.value is None:
            return ast.copy_location(ast.Pass(), node)
        return self.visit(ast.copy_location(ast.Assign([node.target], node.value), node))

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.AST:
        node = self.generic_visit(node)  # type: ignore[assignment]
        if node.name is not None and node.name in self.c.locals:
            tmp = f"__exc_{node.name}"
            store = ast.Assign(
                [ast.Subscript(ast.Name(_L, ast.Load()), ast.Constant(node.name), ast.Store())],
                ast.Name(tmp, ast.Load()),
            )
            node.body.insert(0, ast.copy_location(store, node))
            node.name = tmp
        return node


class _Compiler:
    def __init__(self, source: _Source, fn: types.FunctionType) -> None:
        self.filename = source.filename
        self.source = source
        self.tree = copy.deepcopy(source.tree)
        self.fn = fn
        self.freevars = set(fn.__code__.co_freevars)
        self.locals = self._find_locals()
        self.rw = _Rewriter(self)
        self.blocks: list[list[ast.stmt]] = []
        self.closed: list[bool] = []
        self.sites: list[Site] = []
        self.site_nodes: dict[int, bool] = {}  # id(Call node) -> is a site
        self.loops: list[tuple[int, int]] = []  # (continue target, break target)
        self.tmp = itertools.count()
        self.cur = 0
        self.loc: ast.AST = self.tree
        self._classify_calls()

    # -- analysis ------------------------------------------------------------------------------

    def error(self, node: ast.AST, what: str) -> None:
        raise CompileError(
            self.filename,
            getattr(node, "lineno", self.tree.lineno),
            f"{what} is not supported in a ppl program",
        )

    def _find_locals(self) -> set[str]:
        a = self.tree.args
        names = {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs}
        names |= {x.arg for x in (a.vararg, a.kwarg) if x is not None}
        for stmt in self.tree.body:
            for n in _walk_scope(stmt):
                for kind, what in _FORBIDDEN.items():
                    if isinstance(n, kind):
                        self.error(n, what)
                if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
                    names.add(n.id)
                elif isinstance(n, ast.ExceptHandler) and n.name:
                    names.add(n.name)
            for n in ast.walk(stmt):  # yield/await inside lambdas and comprehensions too
                if isinstance(n, (ast.Yield, ast.YieldFrom, ast.Await, ast.NamedExpr)):
                    self.error(n, _FORBIDDEN[type(n)])
        return names

    def _resolve(self, node: ast.expr) -> tuple[bool, Any]:
        """Evaluate a callee made of names and attributes, if it does not depend on locals."""
        if isinstance(node, ast.Name):
            if node.id in self.locals:
                return False, None
            if node.id in self.freevars:
                cell = self.fn.__closure__[self.fn.__code__.co_freevars.index(node.id)]
                try:
                    return True, cell.cell_contents
                except ValueError:
                    return False, None
            if node.id in self.fn.__globals__:
                return True, self.fn.__globals__[node.id]
            if hasattr(builtins, node.id):
                return True, getattr(builtins, node.id)
            return False, None
        if isinstance(node, ast.Attribute):
            ok, base = self._resolve(node.value)
            if ok and isinstance(base, types.ModuleType):
                try:
                    return True, getattr(base, node.attr)
                except AttributeError:
                    return False, None
            return False, None  # a method: a call on a value, never a site
        return False, None

    def _classify_calls(self) -> None:
        """Decide, for every call in the function, whether it is a suspension site.

        A site is a call to a primitive or a program, known from the callee's name, or a call to
        a callable held in a local variable (a program passed as an argument, say), decided when
        it runs. Inside lambdas and comprehensions nothing can suspend: a primitive or program
        called there is an error.
        """

        def visit(node: ast.AST, shadowed: frozenset[str], nested: bool) -> None:
            if isinstance(node, _SCOPES):
                shadowed = shadowed | _bound_in(node)
                nested = True
            if isinstance(node, ast.Call):
                site = False
                func = node.func
                if isinstance(func, ast.Name) and func.id in shadowed:
                    site = False
                elif isinstance(func, ast.Name) and func.id in self.locals:
                    site = not nested
                else:
                    ok, target = self._resolve(func)
                    site = ok and _is_suspending(target)
                    if site and nested:
                        self.error(
                            node,
                            f"a call to `{ast.unparse(func)}` inside a lambda or comprehension",
                        )
                self.site_nodes[id(node)] = site
            for child in ast.iter_child_nodes(node):
                visit(child, shadowed, nested)

        for stmt in self.tree.body:
            visit(stmt, frozenset(), False)

    def is_site(self, call: ast.Call) -> bool:
        return self.site_nodes.get(id(call), False)

    def has_site(self, node: ast.AST | None) -> bool:
        if node is None:
            return False
        return any(
            isinstance(n, ast.Call) and self.site_nodes.get(id(n), False) for n in ast.walk(node)
        )

    def escapes(self, stmt: ast.stmt) -> bool:
        """Does `stmt` hold a `break`/`continue` for a loop outside it?"""

        def visit(n: ast.AST, in_loop: bool) -> bool:
            if isinstance(n, (ast.Break, ast.Continue)):
                return not in_loop
            if isinstance(n, _SCOPES):
                return False
            for field, value in ast.iter_fields(n):
                children = value if isinstance(value, list) else [value]
                inner = in_loop or (isinstance(n, _LOOPS) and field == "body")
                for c in children:
                    if isinstance(c, ast.AST) and visit(c, inner):
                        return True
            return False

        return visit(stmt, False)

    # -- blocks --------------------------------------------------------------------------------

    def new_block(self) -> int:
        self.blocks.append([])
        self.closed.append(False)
        return len(self.blocks) - 1

    def emit(self, stmt: ast.stmt) -> None:
        if self.closed[self.cur]:
            self.cur = self.new_block()  # code after return/break: unreachable, still compiled
        self.blocks[self.cur].append(ast.copy_location(stmt, self.loc))

    def terminate(self, *stmts: ast.stmt) -> None:
        for s in stmts:
            self.emit(s)
        self.closed[self.cur] = True

    def goto(self, target: int) -> None:
        self.terminate(ast.Return(ast.Constant(target)))

    def branch(self, test: ast.expr, then: int, orelse: int) -> None:
        self.terminate(
            ast.If(test, [ast.Return(ast.Constant(then))], []), ast.Return(ast.Constant(orelse))
        )

    def new_tmp(self) -> str:
        return f"__t{next(self.tmp)}"

    @staticmethod
    def local(name: str, ctx: ast.expr_context | None = None) -> ast.expr:
        return ast.Subscript(ast.Name(_L, ast.Load()), ast.Constant(name), ctx or ast.Load())

    # -- expressions ---------------------------------------------------------------------------

    def expr(self, node: ast.expr, target: str | None = None) -> ast.expr:
        """Lower `node`, suspending at its sites; returns the expression of its value."""
        if not self.has_site(node):
            return self.rw.visit(node)
        if isinstance(node, ast.Call) and self.is_site(node):
            parts = self.operands([node.func, *node.args, *(k.value for k in node.keywords)])
            func, args = parts[0], parts[1 : 1 + len(node.args)]
            kwvalues = parts[1 + len(node.args) :]
            tup = ast.Tuple(args, ast.Load())
            kw = ast.Dict([k.arg and ast.Constant(k.arg) for k in node.keywords], kwvalues)
            site_id = len(self.sites)
            self.sites.append(
                Site(
                    self.filename,
                    node.lineno,
                    self.tree.name,
                    self.source.line(node.lineno),
                )
            )
            resume = self.new_block()
            name = target or self.new_tmp()
            saved, self.loc = self.loc, node
            self.terminate(
                ast.Return(
                    ast.Tuple(
                        [
                            ast.Constant(resume),
                            ast.Constant(name),
                            ast.Constant(site_id),
                            func,
                            tup,
                            kw,
                        ],
                        ast.Load(),
                    )
                )
            )
            self.loc = saved
            self.cur = resume
            return self.local(name)
        if isinstance(node, ast.BoolOp):
            return self.boolop(node)
        if isinstance(node, ast.IfExp):
            return self.ifexp(node)
        # any other expression: its operands in evaluation order
        node = copy.copy(node)
        slots = []
        for field, value in ast.iter_fields(node):
            if isinstance(value, ast.expr):
                slots.append((field, None, value))
            elif isinstance(value, list):
                for i, v in enumerate(value):
                    if isinstance(v, ast.expr):
                        slots.append((field, i, v))
                    elif isinstance(v, ast.keyword):
                        slots.append((field, i, v))
        exprs = [s[2].value if isinstance(s[2], ast.keyword) else s[2] for s in slots]
        lowered = self.operands(exprs)
        lists: dict[str, list] = {}
        for (field, i, orig), new in zip(slots, lowered):
            if i is None:
                setattr(node, field, new)
            else:
                lst = lists.setdefault(field, list(getattr(node, field)))
                lst[i] = ast.keyword(orig.arg, new) if isinstance(orig, ast.keyword) else new
        for field, lst in lists.items():
            setattr(node, field, lst)
        return node

    def operands(self, exprs: list[ast.expr]) -> list[ast.expr]:
        """Lower operands left to right; an operand evaluated before a later site is saved."""
        out = []
        for i, e in enumerate(exprs):
            later = any(self.has_site(x) for x in exprs[i + 1 :])
            value = self.expr(e)
            if later and not isinstance(e, (ast.Constant, ast.Name)):
                tmp = self.new_tmp()
                self.emit(ast.Assign([self.local(tmp, ast.Store())], value))
                value = self.local(tmp)
            out.append(value)
        return out

    def boolop(self, node: ast.BoolOp) -> ast.expr:
        tmp, join = self.new_tmp(), self.new_block()
        self.emit(ast.Assign([self.local(tmp, ast.Store())], self.expr(node.values[0])))
        for value in node.values[1:]:
            nxt = self.new_block()
            test = self.local(tmp)
            if isinstance(node.op, ast.And):
                self.branch(test, nxt, join)
            else:
                self.branch(test, join, nxt)
            self.cur = nxt
            self.emit(ast.Assign([self.local(tmp, ast.Store())], self.expr(value)))
        self.goto(join)
        self.cur = join
        return self.local(tmp)

    def ifexp(self, node: ast.IfExp) -> ast.expr:
        tmp, then, orelse, join = (
            self.new_tmp(),
            self.new_block(),
            self.new_block(),
            self.new_block(),
        )
        self.branch(self.expr(node.test), then, orelse)
        for block, value in ((then, node.body), (orelse, node.orelse)):
            self.cur = block
            self.emit(ast.Assign([self.local(tmp, ast.Store())], self.expr(value)))
            self.goto(join)
        self.cur = join
        return self.local(tmp)

    # -- statements ----------------------------------------------------------------------------

    def body(self, stmts: list[ast.stmt]) -> None:
        for s in stmts:
            self.stmt(s)

    def stmt(self, s: ast.stmt) -> None:
        self.loc = s
        if not self.has_site(s) and not self.escapes(s):
            self.emit(self.rw.visit(s))  # plain Python, kept whole
            return
        method = getattr(self, f"stmt_{type(s).__name__}", None)
        if method is None:
            what = {ast.Try: "`try`", ast.With: "`with`"}.get(type(s), f"`{type(s).__name__}`")
            self.error(s, f"a primitive or program call inside {what}")
        method(s)

    def stmt_Expr(self, s: ast.Expr) -> None:
        value = self.expr(s.value, target="__discard")
        if not (
            isinstance(value, ast.Subscript) and getattr(value.slice, "value", None) == "__discard"
        ):
            self.emit(ast.Expr(value))

    def stmt_Assign(self, s: ast.Assign) -> None:
        if any(self.has_site(t) for t in s.targets):
            self.error(s, "a primitive or program call inside an assignment target")
        direct = (
            s.targets[0].id if len(s.targets) == 1 and isinstance(s.targets[0], ast.Name) else None
        )
        if direct is not None and isinstance(s.value, ast.Call) and self.is_site(s.value):
            self.expr(s.value, target=direct)  # the site writes L[name] itself
            return
        value = self.expr(s.value)
        self.emit(ast.Assign([self.rw.visit(t) for t in s.targets], value))

    def stmt_AugAssign(self, s: ast.AugAssign) -> None:
        if self.has_site(s.target):
            self.error(s, "a primitive or program call inside an assignment target")
        value = self.expr(s.value)
        self.emit(ast.AugAssign(self.rw.visit(s.target), s.op, value))

    def stmt_AnnAssign(self, s: ast.AnnAssign) -> None:
        if s.value is not None:
            self.stmt_Assign(ast.copy_location(ast.Assign([s.target], s.value), s))

    def stmt_Return(self, s: ast.Return) -> None:
        value = self.expr(s.value) if s.value is not None else ast.Constant(None)
        self.terminate(ast.Return(ast.Tuple([ast.Constant(-1), value], ast.Load())))

    def stmt_Assert(self, s: ast.Assert) -> None:
        test = self.expr(s.test)
        self.emit(ast.Assert(test, self.expr(s.msg) if s.msg is not None else None))

    def stmt_Pass(self, s: ast.Pass) -> None:
        pass

    def stmt_Break(self, s: ast.Break) -> None:
        self.goto(self.loops[-1][1])

    def stmt_Continue(self, s: ast.Continue) -> None:
        self.goto(self.loops[-1][0])

    def stmt_If(self, s: ast.If) -> None:
        test = self.expr(s.test)
        then, join = self.new_block(), self.new_block()
        orelse = self.new_block() if s.orelse else join
        self.branch(test, then, orelse)
        self.cur = then
        self.body(s.body)
        self.goto(join)
        if s.orelse:
            self.cur = orelse
            self.body(s.orelse)
            self.goto(join)
        self.cur = join

    def stmt_While(self, s: ast.While) -> None:
        header = self.new_block()
        self.goto(header)
        self.cur = header
        self.loc = s
        test = self.expr(s.test)
        body, after = self.new_block(), self.new_block()
        orelse = self.new_block() if s.orelse else after
        self.branch(test, body, orelse)
        self.loop(s, header, body, after, orelse)

    def stmt_For(self, s: ast.For) -> None:
        seq, idx = self.new_tmp(), self.new_tmp()
        iterable = self.expr(s.iter)
        self.emit(
            ast.Assign(
                [self.local(seq, ast.Store())],
                ast.Call(ast.Name("__ppl_sequence", ast.Load()), [iterable], []),
            )
        )
        self.emit(ast.Assign([self.local(idx, ast.Store())], ast.Constant(0)))
        header, body, after = self.new_block(), self.new_block(), self.new_block()
        orelse = self.new_block() if s.orelse else after
        self.goto(header)
        self.cur = header
        length = ast.Call(ast.Name("len", ast.Load()), [self.local(seq)], [])
        self.branch(ast.Compare(self.local(idx), [ast.Lt()], [length]), body, orelse)
        self.cur = body
        item = ast.Subscript(self.local(seq), self.local(idx), ast.Load())
        self.emit(ast.Assign([self.rw.visit(s.target)], item))
        self.emit(ast.AugAssign(self.local(idx, ast.Store()), ast.Add(), ast.Constant(1)))
        self.loop(s, header, body, after, orelse)

    def loop(self, s: ast.For | ast.While, header: int, body: int, after: int, orelse: int) -> None:
        self.cur = body
        self.loops.append((header, after))
        self.body(s.body)
        self.loops.pop()
        self.goto(header)
        if s.orelse:
            self.cur = orelse
            self.body(s.orelse)
            self.goto(after)
        self.cur = after

    # -- code generation -----------------------------------------------------------------------

    def compile(self) -> Code:
        self.cur = self.new_block()
        self.body(self.tree.body)
        self.loc = self.tree.body[-1] if self.tree.body else self.tree
        self.terminate(ast.Return(ast.Tuple([ast.Constant(-1), ast.Constant(None)], ast.Load())))

        fn_name = self.tree.name
        defs: list[ast.stmt] = []
        for i, stmts in enumerate(self.blocks):
            if not self.closed[i]:  # allocated but never reached by lowering
                stmts = [
                    *stmts,
                    ast.Return(ast.Tuple([ast.Constant(-1), ast.Constant(None)], ast.Load())),
                ]
            args = ast.arguments(
                posonlyargs=[], args=[ast.arg(_L)], kwonlyargs=[], kw_defaults=[], defaults=[]
            )
            d = ast.FunctionDef(f"__block{i}", args, stmts or [ast.Pass()], [], None)
            defs.append(ast.copy_location(d, stmts[0] if stmts else self.tree))
        cells = [
            ast.Assign(
                [ast.Name(f"__cell_{name}", ast.Store())],
                ast.Subscript(ast.Name("__cells", ast.Load()), ast.Constant(i), ast.Load()),
            )
            for i, name in enumerate(self.fn.__code__.co_freevars)
        ]
        blocks_list = ast.List(
            [ast.Name(f"__block{i}", ast.Load()) for i in range(len(self.blocks))], ast.Load()
        )
        factory_args = ast.arguments(
            posonlyargs=[],
            args=[ast.arg("__cells"), ast.arg("__ppl_sequence")],
            kwonlyargs=[],
            kw_defaults=[],
            defaults=[],
        )
        factory = ast.FunctionDef(
            "__ppl_factory", factory_args, [*cells, *defs, ast.Return(blocks_list)], [], None
        )
        module = ast.Module([ast.copy_location(factory, self.tree)], [])
        ast.fix_missing_locations(module)
        namespace: dict[str, Any] = {}
        exec(compile(module, self.filename, "exec"), namespace)
        # rebind to the user's module globals so global names are looked up live
        made = types.FunctionType(namespace["__ppl_factory"].__code__, self.fn.__globals__)
        blocks = made(tuple(self.fn.__closure__ or ()), _sequence)
        for b in blocks:
            b.__code__ = (
                b.__code__.replace(co_name=fn_name, co_qualname=self.fn.__qualname__)
                if hasattr(b.__code__, "co_qualname")
                else b.__code__.replace(co_name=fn_name)
            )
        return Code(fn_name, blocks, self.sites, inspect.signature(self.fn))


def _sequence(iterable: Any) -> Any:
    """What a `for` loop iterates over, in a form that forks by value (an index into it)."""
    if isinstance(iterable, (range, tuple, str, bytes)):
        return iterable
    return tuple(iterable)


def _is_suspending(obj: Any) -> bool:
    try:
        return isinstance(obj, Program) or obj in PRIMITIVES
    except TypeError:  # unhashable callables
        return False
