"""Lowering: a program's function rewritten into the blocks of its `Code`.

`_Compiler` lowers one function. It first decides which calls are sites (`_classify_calls`: a
call to a primitive or a program, known from the callee's name, or to a callable held in a
local variable, decided when it runs), then lowers the statements in order, ending a block at
each site, and last compiles every block at once (`_Compiler.compile`): each is a function of
the locals dict `L`, made by one factory function whose parameters are the helpers of
`ppl.compiler.runtime_helpers`. Names are rewritten as they are lowered (`_Rewriter`): a local
`x` becomes `L['x']`, a variable of the program around a nested function is read through that
program's locals, and a closure variable through its cell.

Statements without sites — including whole `if`/`for`/`while`/`try` statements — are kept as
ordinary Python inside one block, so most user code runs at full speed. Expressions holding a
site are split in evaluation order (earlier operands are evaluated into temporaries first).

A `for` holding a site keeps its iterator in `L` and calls `next` before each pass, as CPython
does (`ppl.loops` says how it forks). A `try` holding a site is a region of blocks: an exception
raised in one of them is stored in `L` and the blocks go on at the `try`'s dispatch block
(`Code.catch`; the engine does the same for an exception raised at a site or in a called
program). A `finally` is entered with its pending action in `L` (an exception, a return value,
a jump) and carries it out at its end. `with` is compiled as the `try` that PEP 343 defines, and
a comprehension as its loops. A nested `def` or lambda that makes choices is lowered as a
program of its own, with the program it is in (`NestedProgram`, made when its statement runs).

Generated code keeps the user's file name and line numbers, so a traceback raised inside a
program points at the user's own source line.
"""

from __future__ import annotations

import ast
import builtins
import copy
import inspect
import itertools
import sys
import types
from collections.abc import Callable
from typing import Any

from ppl.compiler.errors import CompileError
from ppl.compiler.runtime_helpers import _RUNTIME
from ppl.compiler.source import _Source
from ppl.compiler.state import Code
from ppl.primitives import PRIMITIVES
from ppl.runtime import BaseProgram
from ppl.trace import Site

# ---------------------------------------------------------------------------------------------
# Scopes


_FORBIDDEN: dict[type, str] = {
    ast.Yield: "`yield`",
    ast.YieldFrom: "`yield from`",
    ast.Await: "`await`",
    ast.AsyncFunctionDef: "a nested `async def`",
    ast.AsyncFor: "`async for`",
    ast.AsyncWith: "`async with`",
    ast.ClassDef: "a nested `class` (define classes at module level)",
    ast.Global: "`global`",
    ast.Nonlocal: "`nonlocal`",
    ast.Import: "`import` (import at module level)",
    ast.ImportFrom: "`import` (import at module level)",
}
if hasattr(ast, "TryStar"):
    _FORBIDDEN[ast.TryStar] = "`except*`"

_SCOPES = (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_FUNCTIONS = (ast.FunctionDef, ast.Lambda)
_LOOPS = (ast.For, ast.While)


def _walrus_targets(node: ast.AST, in_lambda: bool = False) -> set[str]:
    """Names bound by `:=` in the function's scope (also from inside its comprehensions)."""
    out: set[str] = set()
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.NamedExpr) and not in_lambda:
            out.add(child.target.id)
        out |= _walrus_targets(child, in_lambda or isinstance(child, ast.Lambda))
    return out


def _walk_scope(node: ast.AST):
    """Nodes of `node` in the same scope (not inside lambdas, comprehensions or nested `def`s,
    except a `def`'s decorators and defaults, which its scope evaluates)."""
    todo = [node]
    while todo:
        n = todo.pop()
        yield n
        if isinstance(n, ast.FunctionDef):
            todo.extend(_outer_parts(n))
            continue
        for child in ast.iter_child_nodes(n):
            if not isinstance(child, _SCOPES):
                todo.append(child)


def _outer_parts(fn: ast.FunctionDef) -> list[ast.expr]:
    """The parts of a `def` evaluated where it is defined: decorators, defaults, annotations."""
    a = fn.args
    parts = [*fn.decorator_list, *a.defaults, *(d for d in a.kw_defaults if d is not None)]
    for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg):
        if arg is not None and arg.annotation is not None:
            parts.append(arg.annotation)
    if fn.returns is not None:
        parts.append(fn.returns)
    return parts


def _params(a: ast.arguments) -> set[str]:
    names = {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs}
    return names | {x.arg for x in (a.vararg, a.kwarg) if x is not None}


def _declared(fn: ast.FunctionDef) -> set[str]:
    """The names a `def` declares `nonlocal` or `global`."""
    out: set[str] = set()
    for stmt in fn.body:
        for n in _walk_scope(stmt):
            if isinstance(n, (ast.Nonlocal, ast.Global)):
                out |= set(n.names)
    return out


def _scope_bound(body: list[ast.stmt]) -> set[str]:
    """The names that statements bind in their own scope."""
    names: set[str] = set()
    for stmt in body:
        for n in _walk_scope(stmt):
            if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
                names.add(n.id)
            elif isinstance(n, ast.ExceptHandler) and n.name:
                names.add(n.name)
            elif isinstance(n, (ast.MatchAs, ast.MatchStar)) and n.name:
                names.add(n.name)
            elif isinstance(n, ast.MatchMapping) and n.rest:
                names.add(n.rest)
            elif isinstance(n, ast.FunctionDef):
                names.add(n.name)
            elif isinstance(n, (ast.Import, ast.ImportFrom)):
                names |= {(a.asname or a.name).split(".")[0] for a in n.names}
        names |= _walrus_targets(stmt)
    return names


def _def_bound(fn: ast.FunctionDef) -> set[str]:
    """The local variables of a nested `def`: its parameters and what it binds, less the
    names it declares `nonlocal` or `global`."""
    return (_params(fn.args) | _scope_bound(fn.body)) - _declared(fn)


def _bound_in(node: ast.AST) -> set[str]:
    """Names that a lambda, comprehension or nested `def` binds for its own body."""
    if isinstance(node, ast.FunctionDef):
        return _def_bound(node)
    if isinstance(node, ast.Lambda):  # its parameters, and what `:=` binds in it
        a = node.args
        names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
        names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
        walrus = _walrus_targets(node.body)
        if isinstance(node.body, ast.NamedExpr):
            walrus.add(node.body.target.id)
        return set(names) | walrus
    out: set[str] = set()
    for gen in node.generators:  # type: ignore[attr-defined]
        out |= {n.id for n in ast.walk(gen.target) if isinstance(n, ast.Name)}
    return out


# ---------------------------------------------------------------------------------------------
# Lowering


_L = "L"  # the name of the locals dict inside generated blocks
_OUTER = "__outer"  # a nested function's local holding the locals of the program it is in


class _Rewriter(ast.NodeTransformer):
    """Rewrite variable references: locals to `L['x']`, closure variables to their cells."""

    def __init__(self, compiler: _Compiler) -> None:
        self.c = compiler
        self.shadowed: list[set[str]] = []
        self.native_handlers = 0  # depth inside `except` handlers kept as plain Python
        self.native_catching = 0  # depth inside the bodies of such `try`s with handlers
        self.in_def = 0  # depth inside nested `def`s kept as plain Python

    def visit_Name(self, node: ast.Name) -> ast.AST:
        name = node.id
        if any(name in s for s in self.shadowed):
            return node
        if name in self.c.locals:
            return ast.copy_location(
                ast.Subscript(ast.Name(_L, ast.Load()), ast.Constant(name), node.ctx), node
            )
        if name in self.c.outer_names:  # a variable of the program a nested `def` is in
            scope: ast.expr = ast.Name(_L, ast.Load())
            for _ in range(self.c.outer_depth(name)):
                scope = ast.Subscript(scope, ast.Constant(_OUTER), ast.Load())
            return ast.copy_location(ast.Subscript(scope, ast.Constant(name), node.ctx), node)
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

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _scope

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        for i, d in enumerate(node.args.defaults):
            node.args.defaults[i] = self.visit(d)
        node.args.kw_defaults = [d if d is None else self.visit(d) for d in node.args.kw_defaults]
        self.shadowed.append(_bound_in(node))
        self.in_def += 1
        try:
            node.body = self.visit(node.body)
        finally:
            self.in_def -= 1
            self.shadowed.pop()
        return self.c.made_function(node, node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> Any:
        # decorators, defaults and annotations are evaluated here; the body in its own scope
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        a = node.args
        a.defaults = [self.visit(d) for d in a.defaults]
        a.kw_defaults = [d if d is None else self.visit(d) for d in a.kw_defaults]
        for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg):
            if arg is not None and arg.annotation is not None:
                arg.annotation = self.visit(arg.annotation)
        if node.returns is not None:
            node.returns = self.visit(node.returns)
        self.shadowed.append(_bound_in(node))
        self.in_def += 1
        try:
            body = self._visit_list(node.body)
        finally:
            self.in_def -= 1
            self.shadowed.pop()
        # a `nonlocal` of the program's variable: it is read from the locals dict instead
        node.body = [
            ast.copy_location(ast.Pass(), b)
            if isinstance(b, ast.Nonlocal) and not self._kept_nonlocal(b)
            else b
            for b in body
        ]
        if self.in_def:
            return node
        made = self.c.made_function(node, ast.Name(node.name, ast.Load()))
        store = ast.Assign([self.visit(ast.Name(node.name, ast.Store()))], made)
        return [node, ast.copy_location(store, node)]

    def _kept_nonlocal(self, node: ast.Nonlocal) -> bool:
        rewritten = self.c.locals | self.c.outer_names
        if any(n in rewritten for n in node.names):
            if not all(n in rewritten for n in node.names):
                self.c.error(node, "a `nonlocal` naming the program's and other variables")
            return False
        return True

    def visit_Return(self, node: ast.Return) -> Any:
        if self.in_def:
            return self.generic_visit(node)
        # a `return` inside a statement kept as plain Python returns from the block (through the
        # `finally` blocks around it)
        value = self.visit(node.value) if node.value is not None else ast.Constant(None)
        return [ast.copy_location(s, node) for s in self.c.return_stmts(value)]

    def visit_NamedExpr(self, node: ast.NamedExpr) -> ast.AST:
        name = node.target.id
        if name not in self.c.locals or any(name in s for s in self.shadowed):
            if name in self.c.outer_names and not any(name in s for s in self.shadowed):
                self.c.error(node, "`:=` assigning a variable of the enclosing program")
            return self.generic_visit(node)
        return ast.copy_location(self.c.walrus(name, self.visit(node.value)), node)

    def visit_match_case(self, node: ast.match_case) -> ast.AST:
        # a capture binds a plain variable of the block; the case copies it into the locals
        # before its guard (Python keeps a capture even when the guard fails)
        if self.in_def:
            return self.generic_visit(node)
        node.pattern = self.visit(node.pattern)
        guard = self.visit(node.guard) if node.guard is not None else None
        captured = sorted(_captures(node.pattern) & self.c.locals)
        if captured:
            bind = self.c.bind_captures(captured)
            guard = bind if guard is None else ast.BoolOp(ast.And(), [bind, guard])
        node.guard = guard
        node.body = self._visit_list(node.body)
        return node

    def visit_Raise(self, node: ast.Raise) -> ast.AST:
        node = self.generic_visit(node)  # type: ignore[assignment]
        if node.exc is None and self.c.handling and not self.native_handlers and not self.in_def:
            # a bare `raise` in an `except` or `finally` that the compiler split: the exception
            # being handled is held in a local
            if self.native_catching:  # a `try` in this statement may catch it
                return ast.copy_location(ast.Raise(self.c.reraise(), None), node)
            return ast.copy_location(self.c.carry_on(self.c.reraise()), node)
        return node

    def visit_Try(self, node: ast.Try) -> ast.AST:
        # a `try` kept as plain Python: a bare `raise` in its handlers is Python's own
        catching = bool(node.handlers)
        self.native_catching += catching
        try:
            node.body = self._visit_list(node.body)
        finally:
            self.native_catching -= catching
        self.native_handlers += 1
        try:
            node.handlers = self._visit_list(node.handlers)
        finally:
            self.native_handlers -= 1
        node.orelse = self._visit_list(node.orelse)
        node.finalbody = self._visit_list(node.finalbody)
        return node

    def _visit_list(self, nodes: list) -> list:
        out = []
        for n in nodes:
            r = self.visit(n)
            out.extend(r if isinstance(r, list) else [r])
        return out

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        # annotations of locals are dropped: `x: int = v` is `x = v`, `x: int` is nothing
        if node.value is None:
            return ast.copy_location(ast.Pass(), node)
        return self.visit(ast.copy_location(ast.Assign([node.target], node.value), node))

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.AST:
        node = self.generic_visit(node)  # type: ignore[assignment]
        if node.name is not None and node.name in self.c.locals and not self.in_def:
            tmp = f"__exc_{node.name}"
            store = ast.Assign(
                [ast.Subscript(ast.Name(_L, ast.Load()), ast.Constant(node.name), ast.Store())],
                ast.Name(tmp, ast.Load()),
            )
            node.body.insert(0, ast.copy_location(store, node))
            node.name = tmp
        return node


def _captures(pattern: ast.AST) -> set[str]:
    out: set[str] = set()
    for n in ast.walk(pattern):
        if isinstance(n, (ast.MatchAs, ast.MatchStar)) and n.name:
            out.add(n.name)
        elif isinstance(n, ast.MatchMapping) and n.rest:
            out.add(n.rest)
    return out


_CONSUMERS = (
    "sum", "any", "all", "min", "max", "sorted", "list", "tuple", "set", "frozenset", "dict"
)  # fmt: skip


class _Yield(ast.stmt):
    """Where a generator expression compiled as a coroutine hands back its item `value`: into
    local `into`, resuming next at the block stored in local `at`, going on at block `cont`."""

    _fields = ("value",)

    def __init__(self, value: ast.expr, at: str, into: str, cont: int) -> None:
        super().__init__(value)
        self.at, self.into, self.cont = at, into, cont


class _Renamer(ast.NodeTransformer):
    """Rename a comprehension's variables, except where a scope inside binds them again."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names

    def visit_Name(self, node: ast.Name) -> ast.AST:
        new = self.names.get(node.id)
        return ast.copy_location(ast.Name(new, node.ctx), node) if new else node

    def _scope(self, node: ast.AST) -> ast.AST:
        inner = {k: v for k, v in self.names.items() if k not in _bound_in(node)}
        if inner == self.names:
            return self.generic_visit(node)
        return _Renamer(inner).visit(node) if inner else node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        return self._scope(node)

    def visit_ListComp(self, node: ast.AST) -> ast.AST:
        # a nested comprehension's first iterable is in this scope; the rest in its own
        return self._scope(node)

    visit_SetComp = visit_DictComp = visit_GeneratorExp = visit_ListComp


class _Compiler:
    """Lowers one function: a program, or (with `outer`) a `def` or lambda nested in one that
    makes choices, which reads the program's variables from its locals (`_OUTER`)."""

    def __init__(
        self,
        source: _Source,
        fn: types.FunctionType,
        tree: ast.FunctionDef | None = None,
        outer: _Compiler | None = None,
    ) -> None:
        self.filename = source.filename
        self.source = source
        self.tree = copy.deepcopy(source.tree) if tree is None else tree
        self.fn = fn
        self.outer = outer
        self.freevars = set(fn.__code__.co_freevars)
        self.outer_names: set[str] = set()
        self.locals = self._find_locals()
        if outer is not None:
            self.outer_names = (outer.locals | outer.outer_names) - self.locals
            self.freevars -= self.locals
        self.rw = _Rewriter(self)
        self.blocks: list[list[ast.stmt]] = []
        self.closed: list[bool] = []
        self.sites: list[Site] = []
        self.site_nodes: dict[int, bool] = {}  # id(Call node) -> is a site
        # nested functions that make choices (by id of their node), compiled as programs
        self.nested_programs: dict[int, ast.FunctionDef | ast.Lambda] = {}
        self.nested_codes: list[Code] = []
        self.nested_index: dict[int, int] = {}
        # names of nested functions that make choices, seen here and from the program around
        self.inherited_programs = outer.program_names - self.locals if outer is not None else set()
        self.program_names: set[str] = set(self.inherited_programs)
        # (continue target, break target, number of `finally` blocks around the loop)
        self.loops: list[tuple[int, int, int]] = []
        # exception regions: the `try` catching in the blocks being made, and for each block
        self.region: tuple[str, int] | None = None
        self.block_regions: list[tuple[str, int] | None] = []
        # locals holding the exceptions being handled around the code being made, and per block
        self.handling: list[str] = []
        self.block_handling: list[str | None] = []
        # the `finally` blocks around the code being made: (local of its pending action, entry)
        self.finals: list[tuple[str, int]] = []
        self.loop_slots: list[tuple[str, str]] = []  # (local holding a for's iterator, file:line)
        self.tmp = itertools.count()
        self.yields: set[int] = set()  # ids of the `_Yield` points of generators compiled here
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
        if self.outer is not None:  # a nested function: `nonlocal` names the program's variables
            for stmt in self.tree.body:
                for n in _walk_scope(stmt):
                    if isinstance(n, ast.Global):
                        self.error(n, "`global` in a nested function that makes choices")
            declared = _declared(self.tree)
        else:
            declared = set()
        a = self.tree.args
        names = {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs}
        names |= {x.arg for x in (a.vararg, a.kwarg) if x is not None}
        for stmt in self.tree.body:
            for n in _walk_scope(stmt):
                if isinstance(n, ast.FunctionDef):
                    names.add(n.name)
                    continue
                if isinstance(n, ast.Nonlocal) and self.outer is not None:
                    continue
                for kind, what in _FORBIDDEN.items():
                    if isinstance(n, kind):
                        self.error(n, what)
                if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
                    names.add(n.id)
                elif isinstance(n, ast.ExceptHandler) and n.name:
                    names.add(n.name)
                elif isinstance(n, (ast.MatchAs, ast.MatchStar)) and n.name:
                    names.add(n.name)  # a capture pattern binds a local
                elif isinstance(n, ast.MatchMapping) and n.rest:
                    names.add(n.rest)
            for n in ast.walk(stmt):  # yield/await inside lambdas and comprehensions too
                if isinstance(n, (ast.Yield, ast.YieldFrom, ast.Await)):
                    self.error(n, _FORBIDDEN[type(n)])
            names |= _walrus_targets(stmt)
        return names - declared

    def _resolve(self, node: ast.expr) -> tuple[bool, Any]:
        """Evaluate a callee made of names and attributes, if it does not depend on locals."""
        if isinstance(node, ast.Name):
            if node.id in self.locals or node.id in self.outer_names:
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
        it runs. Inside a comprehension, a call known to be a primitive or a program is a site
        (the comprehension is compiled as its loops); a local callable called there is not (a
        program held in it says so when called). A nested `def` or lambda holding a site is a
        program of its own (`nested_programs`), and a call of it by its name is a site.
        """

        def visit(node: ast.AST, shadowed: frozenset[str], nested: bool, function: Any) -> None:
            if isinstance(node, ast.FunctionDef):
                for part in _outer_parts(node):  # evaluated where the `def` stands
                    visit(part, shadowed, nested, function)
                children: list[ast.AST] = list(node.body)
            else:
                children = list(ast.iter_child_nodes(node))
            if isinstance(node, (*_SCOPES, ast.FunctionDef)):
                shadowed = shadowed | _bound_in(node)
                nested = True
                if isinstance(node, _FUNCTIONS) and function is None:
                    function = node
            for child in children:
                visit(child, shadowed, nested, function)
            if isinstance(node, ast.Call):
                site = False
                func = node.func
                if isinstance(func, ast.Lambda):
                    site = id(func) in self.nested_programs  # called where it is made
                elif isinstance(func, ast.Name) and func.id in shadowed:
                    site = False
                elif isinstance(func, ast.Name) and func.id in self.program_names:
                    site = True  # a nested function known to make choices
                elif isinstance(func, ast.Name) and (
                    func.id in self.locals or func.id in self.outer_names
                ):
                    site = not nested
                else:
                    ok, target = self._resolve(func)
                    site = ok and _is_suspending(target)
                if site and function is not None:
                    # a choice in a nested function: it is compiled as a program of its own
                    self.nested_programs[id(function)] = function
                    site = False
                self.site_nodes[id(node)] = site

        # A nested function that calls one that makes choices, by the name its `def` binds,
        # makes choices too, and such a call is a site wherever it stands: classify again until
        # those names are known.
        bindings: dict[str, list[ast.AST]] = {}
        for stmt in self.tree.body:
            for n in _walk_scope(stmt):
                if isinstance(n, ast.FunctionDef):
                    bindings.setdefault(n.name, []).append(n)
                elif isinstance(n, ast.Assign) and len(n.targets) == 1:
                    t = n.targets[0]
                    if isinstance(t, ast.Name) and isinstance(n.value, ast.Lambda):
                        bindings.setdefault(t.id, []).append(n.value)
                if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
                    bindings.setdefault(n.id, []).append(n)
        while True:
            self.site_nodes.clear()
            self.nested_programs.clear()
            for stmt in self.tree.body:
                visit(stmt, frozenset(), False, None)
            names = set(self.inherited_programs)
            for name, bound in bindings.items():
                made = [b for b in bound if isinstance(b, _FUNCTIONS)]
                # a name bound by `f = lambda ...` is also a Name store: count it once
                stores = [b for b in bound if isinstance(b, ast.Name)]
                lambdas = sum(isinstance(b, ast.Lambda) for b in made)
                if (
                    made
                    and len(stores) == lambdas
                    and all(id(b) in self.nested_programs for b in made)
                ):
                    names.add(name)
            if names == self.program_names:
                break
            self.program_names = names
        self.check_lambdas()

    def check_lambdas(self) -> None:
        """A lambda that makes choices must be called by the program itself: called where it
        is made, or assigned to a name. Passed to a plain function (`sorted(key=...)`), it
        could not be suspended there."""
        allowed: set[int] = set()
        for stmt in self.tree.body:
            for n in ast.walk(stmt):
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Lambda):
                    allowed.add(id(n.func))
                elif (
                    isinstance(n, ast.Assign)
                    and len(n.targets) == 1
                    and isinstance(n.targets[0], ast.Name)
                    and isinstance(n.value, ast.Lambda)
                ):
                    allowed.add(id(n.value))
        for key, node in self.nested_programs.items():
            if isinstance(node, ast.Lambda) and key not in allowed:
                self.error(
                    node,
                    "a lambda that makes choices, other than called where it is made or "
                    "assigned to a name (a plain function given it could not suspend it; use a "
                    "nested `def` and call it from the program)",
                )

    def is_site(self, call: ast.Call) -> bool:
        return self.site_nodes.get(id(call), False)

    def has_site(self, node: ast.AST | None) -> bool:
        if node is None:
            return False
        return any(
            isinstance(n, ast.Call) and self.site_nodes.get(id(n), False) for n in ast.walk(node)
        )

    def holds_yield(self, stmt: ast.stmt) -> bool:
        """Does `stmt` hold the point where a generator compiled here hands back an item?"""
        return bool(self.yields) and any(id(n) in self.yields for n in ast.walk(stmt))

    def escapes(self, stmt: ast.stmt) -> bool:
        """Does `stmt` hold a `break`/`continue` for a loop outside it?"""

        def visit(n: ast.AST, in_loop: bool) -> bool:
            if isinstance(n, (ast.Break, ast.Continue)):
                return not in_loop
            if isinstance(n, (*_SCOPES, ast.FunctionDef)):
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
        self.block_regions.append(self.region)
        self.block_handling.append(self.handling[-1] if self.handling else None)
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
        if isinstance(node, ast.NamedExpr):
            return self.walrus(node.target.id, self.expr(node.value))
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp)):
            return self.comprehension(node)
        if isinstance(node, ast.GeneratorExp) or self.pulled(node) is not None:
            self.error(
                node,
                "a generator expression holding a primitive or program call, other than as the "
                f"first argument of {', '.join(_CONSUMERS)}, or looped over by `for` (alone or "
                "in zip or enumerate) (write a list comprehension)",
            )
        if isinstance(node, ast.Call) and self.consumes_generator(node):
            return self.consumer(node)
        if isinstance(node, ast.Compare) and len(node.ops) > 1:
            return self.chained(node)
        if isinstance(node, ast.Dict):
            # each key, then its value, as Python evaluates a display
            pairs = [
                e for k, v in zip(node.keys, node.values) for e in ((v,) if k is None else (k, v))
            ]
            lowered = iter(self.operands(pairs))
            keys, values = [], []
            for k in node.keys:
                keys.append(next(lowered) if k is not None else None)
                values.append(next(lowered))
            return ast.Dict(keys, values)
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
            rest = exprs[i + 1 :]
            later = any(self.has_site(x) for x in rest)
            value = self.expr(e)
            stable = isinstance(e, ast.Constant) or (
                # a variable keeps its value across a site, unless a later `:=` assigns it
                isinstance(e, ast.Name)
                and not any(
                    isinstance(n, ast.NamedExpr) and n.target.id == e.id
                    for x in rest
                    for n in ast.walk(x)
                )
            )
            if later and not stable:
                tmp = self.new_tmp()
                self.emit(ast.Assign([self.local(tmp, ast.Store())], value))
                value = self.local(tmp)
            out.append(value)
        return out

    # -- comprehensions ----------------------------------------------------------------------

    def is_builtin(self, func: ast.expr, names: tuple[str, ...]) -> bool:
        """Does `func` name one of the builtins `names` (not shadowed where it stands)?"""
        if not isinstance(func, ast.Name) or func.id not in names:
            return False
        ok, target = self._resolve(func)
        return ok and target is getattr(builtins, func.id)

    def consumes_generator(self, call: ast.Call) -> bool:
        """Is `call` a builtin that consumes a generator expression holding a site?

        `zip(...)` or `enumerate(...)` of such generators, given to one, counts as the generator
        of their items (`list(zip(xs, (sample(...) for x in xs)))`).
        """
        if not call.args or not self.is_builtin(call.func, _CONSUMERS):
            return False
        first = call.args[0]
        if isinstance(first, ast.GeneratorExp):
            return self.has_site(first)
        if self.pulled(first) is not None:
            item = ast.Name(f"__ppl_z{next(self.tmp)}", ast.Load())
            gen = ast.GeneratorExp(
                item, [ast.comprehension(ast.Name(item.id, ast.Store()), first, [], 0)]
            )
            call.args[0] = ast.copy_location(gen, first)
            return True
        return False

    def pulled(self, node: ast.expr) -> tuple[str, list[ast.expr], ast.expr | None] | None:
        """A generator expression holding a site, or `zip`/`enumerate` of one or more: what a
        `for` over it pulls, as (kind, the iterables in order, enumerate's start)."""
        if isinstance(node, ast.GeneratorExp):
            return ("gen", [node], None) if self.has_site(node) else None
        if not isinstance(node, ast.Call) or not self.is_builtin(node.func, ("zip", "enumerate")):
            return None
        if not any(isinstance(a, ast.GeneratorExp) and self.has_site(a) for a in node.args):
            return None
        kind = node.func.id  # type: ignore[attr-defined]
        if any(isinstance(a, ast.Starred) for a in node.args):
            self.error(node, f"`*` arguments to {kind}() beside a generator that makes choices")
        if kind == "zip":
            if node.keywords:
                self.error(node, "zip(strict=...) of a generator that makes choices")
            return kind, list(node.args), None
        start = node.args[1] if len(node.args) > 1 else None
        for k in node.keywords:
            if k.arg != "start" or start is not None:
                return None  # a wrong call: left to fail as Python's would
            start = k.value
        if len(node.args) > 2 or not node.args:
            return None
        return kind, node.args[:1], start

    def generator_for(
        self, s: ast.For, kind: str, iterables: list[ast.expr], start: ast.expr | None
    ) -> None:
        """`for` over a generator expression that makes choices (alone, or in zip/enumerate).

        Each such generator is compiled in place as a coroutine of this frame: a pull jumps to
        where it last stopped (a local), and it jumps back with its next item, so its choices are
        made between the loop's passes, interleaved with the other iterables as zip pulls them.
        """
        where = f"{self.filename}:{s.lineno}"
        parts: list[tuple[str, Any]] = []
        # the call's arguments, in order: a generator evaluates its first iterable when made
        for a in iterables:
            if isinstance(a, ast.GeneratorExp) and self.has_site(a):
                parts.append(("gen", self.coroutine(a)))
            else:
                tmp = self.new_tmp()
                value = self.expr(a)
                self.emit(ast.Assign([self.local(tmp, ast.Store())], value))
                parts.append(("it", tmp))
        count = None
        if kind == "enumerate":
            count = self.new_tmp()
            first = self.expr(start) if start is not None else ast.Constant(0)
            self.emit(
                ast.Assign(
                    [self.local(count, ast.Store())],
                    ast.Call(ast.Name("__ppl_enum_start", ast.Load()), [first], []),
                )
            )
        # zip and enumerate take an iterator of each argument, in order
        for what, slot in parts:
            if what == "it":
                iterator = ast.Call(ast.Name("__ppl_iter", ast.Load()), [self.local(slot)], [])
                self.emit(ast.Assign([self.local(slot, ast.Store())], iterator))
                self.loop_slots.append((slot, where))
        header, after = self.new_block(), self.new_block()
        orelse = self.new_block() if s.orelse else after
        self.goto(header)
        self.cur = header
        done = ast.Name("__ppl_done", ast.Load())
        values: list[ast.expr] = []
        for what, slot in parts:
            if what == "it":
                value = self.new_tmp()
                self.emit(
                    ast.Assign(
                        [self.local(value, ast.Store())],
                        ast.Call(ast.Name("__ppl_next", ast.Load()), [self.local(slot), done], []),
                    )
                )
            else:
                at, value, cont = slot
                self.terminate(ast.Return(self.local(at)))
                self.cur = cont
            self.emit(
                ast.If(
                    ast.Compare(self.local(value), [ast.Is()], [done]),
                    [ast.Return(ast.Constant(orelse))],
                    [],
                )
            )
            values.append(self.local(value))
        if kind == "zip":
            item: ast.expr = ast.Tuple(values, ast.Load())
        elif kind == "enumerate":
            assert count is not None
            item = ast.Tuple([self.local(count), values[0]], ast.Load())
        else:
            item = values[0]
        self.emit(ast.Assign([ast.Name("__ppl_item", ast.Store())], item))
        if count is not None:
            self.emit(ast.AugAssign(self.local(count, ast.Store()), ast.Add(), ast.Constant(1)))
        self.emit(ast.Assign([self.rw.visit(s.target)], ast.Name("__ppl_item", ast.Load())))
        self.loop(s, header, self.cur, after, orelse)
        # the loop is over: it lets go of its iterators
        for what, slot in parts:
            for name in (slot,) if what == "it" else slot[:2]:
                self.emit(ast.Assign([self.local(name, ast.Store())], ast.Constant(None)))

    def coroutine(self, gen: ast.GeneratorExp) -> tuple[str, str, int]:
        """Make generator `gen` here, compiled out of line as a coroutine of this frame.

        Returns (local holding the block a pull resumes at, local receiving each item or
        `__ppl_done`, the block a pull goes on at). Its first iterable is evaluated and its
        iterator taken now, as Python makes a generator.
        """
        first = self.new_tmp()
        at, value = self.new_tmp(), self.new_tmp()
        self.locals |= {first, at, value}
        iterable = self.expr(gen.generators[0].iter)
        self.emit(
            ast.Assign(
                [self.local(first, ast.Store())],
                ast.Call(ast.Name("__ppl_iter", ast.Load()), [iterable], []),
            )
        )
        start, cont, ended = self.new_block(), self.new_block(), self.new_block()
        self.emit(ast.Assign([self.local(at, ast.Store())], ast.Constant(start)))
        resume = self.cur
        self.cur = start
        # Python's generator loops, with the item handed back where the body would be
        made = copy.copy(gen)
        outer = copy.copy(gen.generators[0])
        outer.iter = ast.Name(first, ast.Load())
        made.generators = [outer, *gen.generators[1:]]
        hand = _Yield(gen.elt, at, value, cont)
        self.yields.add(id(hand))
        self.comprehension_loops(made, [hand])
        self.goto(ended)
        self.cur = ended
        self.emit(ast.Assign([self.local(at, ast.Store())], ast.Constant(ended)))
        self.emit(ast.Assign([self.local(value, ast.Store())], ast.Name("__ppl_done", ast.Load())))
        self.goto(cont)
        self.cur = resume
        return at, value, cont

    def stmt__Yield(self, s: _Yield) -> None:
        item = self.expr(s.value)
        self.emit(ast.Assign([self.local(s.into, ast.Store())], item))
        after = self.new_block()
        self.emit(ast.Assign([self.local(s.at, ast.Store())], ast.Constant(after)))
        self.goto(s.cont)
        self.cur = after

    def consumer(self, call: ast.Call) -> ast.expr:
        """`sum(... for ...)` and the like: the generator's items in order, then the call.

        `any` and `all` stop at the first item that decides them, as Python's do, so no later
        choice is made. The others take every item, so the items are gathered in a list first
        (the builtin's own work has no effects to interleave with them).
        """
        gen = call.args[0]
        name = call.func.id  # type: ignore[attr-defined]
        if name in ("any", "all") and len(call.args) == 1 and not call.keywords:
            result = self.new_tmp()
            self.locals.add(result)
            found = name == "any"
            item = gen.elt  # type: ignore[attr-defined]
            test = item if found else ast.UnaryOp(ast.Not(), item)
            hit = [
                ast.Assign([ast.Name(result, ast.Store())], ast.Constant(found)),
                ast.Break(),
            ]
            self.emit(ast.Assign([self.local(result, ast.Store())], ast.Constant(not found)))
            self.comprehension_loops(gen, [ast.If(test, hit, [])], stop=result, found=found)
            return self.local(result)
        items = self.comprehension(
            ast.copy_location(ast.ListComp(gen.elt, gen.generators), gen)  # type: ignore[attr-defined]
        )
        rest = self.operands([*call.args[1:], *(k.value for k in call.keywords)])
        args, kwvalues = rest[: len(call.args) - 1], rest[len(call.args) - 1 :]
        keywords = [ast.keyword(k.arg, v) for k, v in zip(call.keywords, kwvalues)]
        return ast.Call(self.rw.visit(call.func), [items, *args], keywords)

    def comprehension(self, node: ast.ListComp | ast.SetComp | ast.DictComp) -> ast.expr:
        """A comprehension holding a site, compiled as the loops it stands for."""
        acc = self.new_tmp()
        self.locals.add(acc)
        make = {ast.ListComp: "list", ast.SetComp: "set", ast.DictComp: "dict"}[type(node)]
        self.emit(
            ast.Assign(
                [self.local(acc, ast.Store())],
                ast.Call(ast.Name(f"__ppl_{make}", ast.Load()), [], []),
            )
        )
        target = ast.Name(acc, ast.Load())
        if isinstance(node, ast.DictComp):  # the key, then the value, as Python evaluates them
            add = ast.Call(
                ast.Attribute(target, "__setitem__", ast.Load()), [node.key, node.value], []
            )
        else:
            method = "append" if make == "list" else "add"
            add = ast.Call(ast.Attribute(target, method, ast.Load()), [node.elt], [])
        self.comprehension_loops(node, [ast.Expr(add)])
        return self.local(acc)

    def comprehension_loops(
        self, node: ast.AST, inner: list[ast.stmt], stop: str | None = None, found: bool = True
    ) -> None:
        """Lower the loops of comprehension `node` around `inner`; its variables are renamed so
        they stay its own. With `stop`, every loop ends once local `stop` holds `found`."""
        n = next(self.tmp)
        names: dict[str, str] = {}
        for gen in node.generators:  # type: ignore[attr-defined]
            if gen.is_async:
                self.error(node, "an async comprehension")
            for t in ast.walk(gen.target):
                if isinstance(t, ast.Name):
                    names[t.id] = f"__comp{n}_{t.id}"
        self.locals |= set(names.values())
        renamer = _Renamer(names)
        body = [renamer.visit(s) for s in inner]
        generators = node.generators  # type: ignore[attr-defined]
        for i in range(len(generators) - 1, -1, -1):
            gen = generators[i]
            for cond in reversed(gen.ifs):
                body = [ast.If(renamer.visit(cond), body, [])]
            # the first iterable is evaluated outside the comprehension's scope
            iterable = gen.iter if i == 0 else renamer.visit(gen.iter)
            loop: list[ast.stmt] = [ast.For(renamer.visit(gen.target), iterable, body, [])]
            if stop is not None and i > 0:
                ended = ast.Compare(ast.Name(stop, ast.Load()), [ast.Is()], [ast.Constant(found)])
                loop.append(ast.If(ended, [ast.Break()], []))
            body = loop
        for s in body:
            for sub in ast.walk(s):
                if "lineno" in sub._attributes and not hasattr(sub, "lineno"):
                    ast.copy_location(sub, node)
            saved, self.loc = self.loc, node
            self.stmt(s)
            self.loc = saved

    def chained(self, node: ast.Compare) -> ast.expr:
        """`a < b < c`: each link as `and` would, so a false link stops the rest."""
        result, join = self.new_tmp(), self.new_block()
        left = self.expr(node.left)
        if not isinstance(node.left, ast.Constant):  # evaluated before the next operand
            left = self.keep(left)
        last = len(node.ops) - 1
        for i, (op, comparator) in enumerate(zip(node.ops, node.comparators)):
            right = self.expr(comparator)
            if i < last:
                right = self.keep(right)  # also the next link's left
            self.emit(
                ast.Assign([self.local(result, ast.Store())], ast.Compare(left, [op], [right]))
            )
            if i < last:
                more = self.new_block()
                self.branch(self.local(result), more, join)
                self.cur = more
            left = right
        self.goto(join)
        self.cur = join
        return self.local(result)

    def keep(self, value: ast.expr) -> ast.expr:
        """An evaluated expression stored in a temporary."""
        tmp = self.new_tmp()
        self.emit(ast.Assign([self.local(tmp, ast.Store())], value))
        return self.local(tmp)

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
        if isinstance(s, ast.Nonlocal) and self.outer is not None:
            return  # its names are read from the program's locals (`_OUTER`)
        if not self.has_site(s) and not self.escapes(s) and not self.holds_yield(s):
            kept = self.rw.visit(s)  # plain Python, kept whole
            for k in kept if isinstance(kept, list) else [kept]:
                self.emit(k)
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
            # the value first, then each target left to right, as Python stores them
            value = self.saved(s.value)
            for t in s.targets:
                self.store(t, value)
            return
        direct = (
            s.targets[0].id if len(s.targets) == 1 and isinstance(s.targets[0], ast.Name) else None
        )
        if direct is not None and isinstance(s.value, ast.Call) and self.is_site(s.value):
            self.expr(s.value, target=direct)  # the site writes L[name] itself
            return
        value = self.expr(s.value)
        self.emit(ast.Assign([self.rw.visit(t) for t in s.targets], value))

    def stmt_AugAssign(self, s: ast.AugAssign) -> None:
        t = s.target
        current = self.new_tmp()
        if isinstance(t, ast.Name):
            # the variable is read before the value is made (which may assign it: `:=`, or a
            # nested function's `nonlocal`), as Python reads it
            load = self.rw.visit(ast.copy_location(ast.Name(t.id, ast.Load()), t))
            self.emit(ast.Assign([self.local(current, ast.Store())], load))
            value = self.expr(s.value)
            self.emit(ast.AugAssign(self.local(current, ast.Store()), s.op, value))
            store = ast.Name(t.id, ast.Store())
            self.emit(ast.Assign([self.rw.visit(store)], self.local(current)))
            return
        # `obj[i] op= v`: obj and i, then the load of obj[i], then v, as Python orders them
        obj = self.saved(t.value)
        if isinstance(t, ast.Subscript):
            index = self.saved(t.slice)
            place: Callable[[ast.expr_context], ast.expr] = lambda ctx: ast.Subscript(
                obj, index, ctx
            )
        else:
            place = lambda ctx: ast.Attribute(obj, t.attr, ctx)  # noqa: E731
        self.emit(ast.Assign([self.local(current, ast.Store())], place(ast.Load())))
        value = self.expr(s.value)
        self.emit(ast.AugAssign(self.local(current, ast.Store()), s.op, value))
        self.emit(ast.Assign([place(ast.Store())], self.local(current)))

    def saved(self, node: ast.expr) -> ast.expr:
        """Lower `node` and keep its value in a temporary, safe across later suspensions."""
        if isinstance(node, ast.Constant):
            return node
        if isinstance(node, ast.Slice):  # `a:b` as an index: the slice object it makes
            parts = [
                ast.Constant(None) if p is None else p for p in (node.lower, node.upper, node.step)
            ]
            node = ast.copy_location(ast.Call(ast.Name("__ppl_slice", ast.Load()), parts, []), node)
        value = self.expr(node)
        tmp = self.new_tmp()
        self.emit(ast.Assign([self.local(tmp, ast.Store())], value))
        return self.local(tmp)

    def store(self, target: ast.expr, value: ast.expr) -> None:
        """Store `value` (a temporary) into `target`, suspending at the sites inside it."""
        if not self.has_site(target):
            self.emit(ast.Assign([self.rw.visit(target)], value))
        elif isinstance(target, ast.Subscript):
            obj, index = self.operands([target.value, target.slice])
            self.emit(ast.Assign([ast.Subscript(obj, index, ast.Store())], value))
        elif isinstance(target, ast.Attribute):
            obj = self.expr(target.value)
            self.emit(ast.Assign([ast.Attribute(obj, target.attr, ast.Store())], value))
        elif isinstance(target, (ast.Tuple, ast.List)):
            # unpacked at once, then stored element by element
            slots = [self.new_tmp() for _ in target.elts]
            pattern = [
                ast.Starred(self.local(t, ast.Store()), ast.Store())
                if isinstance(e, ast.Starred)
                else self.local(t, ast.Store())
                for t, e in zip(slots, target.elts)
            ]
            self.emit(ast.Assign([ast.Tuple(pattern, ast.Store())], value))
            for t, e in zip(slots, target.elts):
                self.store(e.value if isinstance(e, ast.Starred) else e, self.local(t))
        else:
            self.error(target, "a primitive or program call inside this assignment target")

    def stmt_AnnAssign(self, s: ast.AnnAssign) -> None:
        if s.value is not None:
            self.stmt_Assign(ast.copy_location(ast.Assign([s.target], s.value), s))

    def stmt_Return(self, s: ast.Return) -> None:
        value = self.expr(s.value) if s.value is not None else ast.Constant(None)
        self.terminate(*self.return_stmts(value))

    def return_stmts(self, value: ast.expr) -> list[ast.stmt]:
        """Return `value`: at once, or through the `finally` blocks around this point."""
        if not self.finals:
            return [ast.Return(ast.Tuple([ast.Constant(-1), value], ast.Load()))]
        slot, entry = self.finals[-1]
        pending = ast.Tuple([ast.Constant("return"), value], ast.Load())
        return [
            ast.Assign([self.local(slot, ast.Store())], pending),
            ast.Return(ast.Constant(entry)),
        ]

    def jump(self, target: int, depth: int) -> None:
        """Go to `target`, a block outside all but `depth` of the `finally` blocks around."""
        if len(self.finals) <= depth:
            self.goto(target)
            return
        slot, entry = self.finals[-1]
        pending = ast.Tuple(
            [ast.Constant("jump"), ast.Constant(target), ast.Constant(depth)], ast.Load()
        )
        self.terminate(
            ast.Assign([self.local(slot, ast.Store())], pending), ast.Return(ast.Constant(entry))
        )

    def qualname(self) -> str:
        if self.outer is None:
            return self.fn.__qualname__
        return f"{self.outer.qualname()}.<locals>.{self.tree.name}"

    def outer_depth(self, name: str) -> int:
        """How many programs out the variable `name` of a nested function lives."""
        depth, c = 1, self.outer
        while c is not None and name not in c.locals:
            depth, c = depth + 1, c.outer
        return depth

    def made_function(self, node: ast.AST, value: ast.expr) -> ast.expr:
        """What a `def` or lambda makes: the function, or a program if it makes choices."""
        index = self.nested_index.get(id(node))
        if index is None:  # a plain function: named as Python names it
            name = node.name if isinstance(node, ast.FunctionDef) else "<lambda>"
            qualname = ast.Constant(f"{self.qualname()}.<locals>.{name}")
            return ast.Call(ast.Name("__ppl_named", ast.Load()), [value, qualname], [])
        code = ast.Subscript(ast.Name("__ppl_codes", ast.Load()), ast.Constant(index), ast.Load())
        return ast.Call(
            ast.Name("__ppl_nested", ast.Load()), [value, code, ast.Name(_L, ast.Load())], []
        )

    def compile_nested(self) -> None:
        """Compile the nested functions that make choices, before the body is lowered."""
        for key, node in self.nested_programs.items():
            if isinstance(node, ast.Lambda):
                body: list[ast.stmt] = [ast.copy_location(ast.Return(node.body), node.body)]
                tree = ast.FunctionDef("<lambda>", node.args, body, [], None)
                tree = copy.deepcopy(ast.copy_location(tree, node))
            else:
                if node.decorator_list:
                    self.error(
                        node.decorator_list[0], "a decorated nested function that makes choices"
                    )
                tree = copy.deepcopy(node)
            self.nested_index[key] = len(self.nested_codes)
            self.nested_codes.append(_Compiler(self.source, self.fn, tree, self).compile())

    def walrus(self, name: str, value: ast.expr) -> ast.expr:
        """`name := value` for a local: stores it in the locals and gives the value."""
        return ast.Call(
            ast.Name("__ppl_walrus", ast.Load()),
            [ast.Name(_L, ast.Load()), ast.Constant(name), value],
            [],
        )

    def bind_captures(self, names: list[str]) -> ast.expr:
        """A guard that copies the variables a `case` pattern captured into the locals."""
        pairs = ast.Tuple(
            [ast.Tuple([ast.Constant(n), ast.Name(n, ast.Load())], ast.Load()) for n in names],
            ast.Load(),
        )
        return ast.Call(ast.Name("__ppl_bind", ast.Load()), [ast.Name(_L, ast.Load()), pairs], [])

    def stmt_Match(self, s: ast.Match) -> None:
        """`match` with choices in its cases: a plain `match` picks the case, then its body."""
        subject = self.saved(s.subject)
        if any(self.has_site(c.guard) or self.has_site(c.pattern) for c in s.cases):
            self.error(s, "a primitive or program call in a `case` pattern or guard")
        targets = [self.new_block() for _ in s.cases]
        join = self.new_block()
        cases = []
        for c, target in zip(s.cases, targets):
            case = self.rw.visit(ast.match_case(c.pattern, c.guard, [ast.Pass()]))
            case.body = [ast.Return(ast.Constant(target))]
            cases.append(case)
        self.emit(ast.Match(subject, cases))
        self.goto(join)  # no case matched
        for c, target in zip(s.cases, targets):
            self.cur = target
            self.body(c.body)
            self.goto(join)
        self.cur = join

    @staticmethod
    def carry_on(exc: ast.expr) -> ast.stmt:
        """Raise `exc` again from `Code.run`: as Python's re-raise, it adds no line of the
        user's to the exception's traceback."""
        return ast.Return(ast.Tuple([ast.Constant(-2), exc], ast.Load()))

    def reraise(self) -> ast.expr:
        """The exception a bare `raise` re-raises in the handler or `finally` being made."""
        return ast.Call(ast.Name("__ppl_reraise", ast.Load()), [self.local(self.handling[-1])], [])

    def stmt_Assert(self, s: ast.Assert) -> None:
        if sys.flags.optimize:  # `python -O` drops asserts
            return
        test = self.expr(s.test)
        failed, join = self.new_block(), self.new_block()
        self.branch(test, join, failed)
        self.cur = failed  # the message is evaluated only when the assertion fails
        error: ast.expr = ast.Name("__ppl_assertion", ast.Load())
        if s.msg is not None:
            error = ast.Call(error, [self.expr(s.msg)], [])
        self.terminate(ast.Raise(error, None))
        self.cur = join

    def stmt_Pass(self, s: ast.Pass) -> None:
        pass

    def stmt_Break(self, s: ast.Break) -> None:
        self.jump(self.loops[-1][1], self.loops[-1][2])

    def stmt_Continue(self, s: ast.Continue) -> None:
        self.jump(self.loops[-1][0], self.loops[-1][2])

    def stmt_Raise(self, s: ast.Raise) -> None:
        exc = self.expr(s.exc) if s.exc is not None else None
        cause = self.expr(s.cause) if s.cause is not None else None
        if exc is None and self.handling:  # a bare `raise`: the exception being handled
            self.terminate(self.carry_on(self.reraise()))
            return
        self.terminate(ast.Raise(exc, cause))

    # -- try and with ----------------------------------------------------------------------------

    def stmt_Try(self, s: ast.Try) -> None:
        if s.finalbody:
            self.try_finally(s)
        else:
            self.try_except(s.body, s.handlers, s.orelse)

    def try_except(
        self, body: list[ast.stmt], handlers: list[ast.ExceptHandler], orelse: list[ast.stmt]
    ) -> None:
        """`try`/`except`/`else`: an exception raised in a block of the body is stored in a
        local and the blocks go on at a dispatch block, which tests the handlers in order."""
        exc = self.new_tmp()
        dispatch, join = self.new_block(), self.new_block()
        orelse_block = self.new_block() if orelse else join
        outer, self.region = self.region, (exc, dispatch)
        start = self.new_block()
        self.goto(start)
        self.cur = start
        self.body(body)
        self.goto(orelse_block)
        self.region = outer
        targets = []
        self.cur = dispatch
        for h in handlers:
            self.loc = h
            if self.has_site(h.type):
                self.error(h, "a primitive or program call in an `except` clause's type")
            target = self.new_block()
            targets.append(target)
            if h.type is None:
                self.emit(ast.Return(ast.Constant(target)))
                break
            matches = ast.Call(
                ast.Name("__ppl_matches", ast.Load()), [self.local(exc), self.rw.visit(h.type)], []
            )
            self.emit(ast.If(matches, [ast.Return(ast.Constant(target))], []))
        self.terminate(self.carry_on(self.local(exc)))  # no handler matched
        self.handling.append(exc)
        for h, target in zip(handlers, targets):
            self.cur = target
            self.loc = h
            if h.name is not None:
                self.emit(ast.Assign([self.local(h.name, ast.Store())], self.local(exc)))
            self.body(h.body)
            if h.name is not None:  # Python deletes the name when its handler ends
                pop = ast.Attribute(ast.Name(_L, ast.Load()), "pop", ast.Load())
                self.emit(ast.Expr(ast.Call(pop, [ast.Constant(h.name), ast.Constant(None)], [])))
            self.emit(ast.Assign([self.local(exc, ast.Store())], ast.Constant(None)))
            self.goto(join)
        self.handling.pop()
        if orelse:
            self.cur = orelse_block
            self.body(orelse)
            self.goto(join)
        self.cur = join

    def try_finally(self, s: ast.Try) -> None:
        """`finally`: every way out of the protected part (falling through, an exception,
        `return`, `break`, `continue`) stores its pending action in a local and goes to the
        `finally` body, whose end carries the action out."""
        slot = self.new_tmp()
        entry, join = self.new_block(), self.new_block()
        self.emit(ast.Assign([self.local(slot, ast.Store())], ast.Constant(None)))
        outer, self.region = self.region, (slot, entry)
        self.finals.append((slot, entry))
        start = self.new_block()
        self.goto(start)
        self.cur = start
        if s.handlers:
            self.try_except(s.body, s.handlers, s.orelse)
        else:
            self.body(s.body)
        self.goto(entry)
        self.finals.pop()
        self.region = outer
        self.cur = entry
        self.handling.append(slot)
        self.body(s.finalbody)
        self.handling.pop()
        self.loc = s.finalbody[-1]
        pending = ast.Name("__ppl_pending", ast.Load())
        self.emit(ast.Assign([ast.Name("__ppl_pending", ast.Store())], self.local(slot)))
        self.emit(ast.Assign([self.local(slot, ast.Store())], ast.Constant(None)))
        self.emit(
            ast.If(
                ast.Compare(pending, [ast.Is()], [ast.Constant(None)]),
                [ast.Return(ast.Constant(join))],
                [],
            )
        )
        is_exc = ast.Call(
            ast.Name("isinstance", ast.Load()), [pending, ast.Name("BaseException", ast.Load())], []
        )
        self.emit(ast.If(is_exc, [self.carry_on(pending)], []))
        kind = ast.Subscript(pending, ast.Constant(0), ast.Load())
        value = ast.Subscript(pending, ast.Constant(1), ast.Load())
        self.emit(
            ast.If(
                ast.Compare(kind, [ast.Eq()], [ast.Constant("return")]),
                self.return_stmts(value),
                [],
            )
        )
        # a jump (break, continue): to its target, or first through the next `finally` out
        if self.finals:
            depth = ast.Subscript(pending, ast.Constant(2), ast.Load())
            outer_slot, outer_entry = self.finals[-1]
            self.emit(
                ast.If(
                    ast.Compare(depth, [ast.Lt()], [ast.Constant(len(self.finals))]),
                    [
                        ast.Assign([self.local(outer_slot, ast.Store())], pending),
                        ast.Return(ast.Constant(outer_entry)),
                    ],
                    [],
                )
            )
        self.terminate(ast.Return(value))
        self.cur = join

    def stmt_With(self, s: ast.With) -> None:
        """`with` as Python defines it (PEP 343), in terms of `try`/`except`/`finally`."""
        item, rest = s.items[0], s.items[1:]
        n = next(self.tmp)
        mgr, exit_, ok, err = (f"__with{n}_{x}" for x in ("mgr", "exit", "ok", "err"))
        self.locals |= {mgr, exit_, ok, err}

        def name(x: str, ctx: ast.expr_context | None = None) -> ast.Name:
            return ast.Name(x, ctx or ast.Load())

        value = self.expr(item.context_expr)
        self.loc = s
        self.emit(ast.Assign([self.local(mgr, ast.Store())], value))
        entered = ast.Call(ast.Name("__ppl_enter", ast.Load()), [self.local(mgr)], [])
        self.emit(
            ast.Assign(
                [
                    ast.Tuple(
                        [self.local(exit_, ast.Store()), name("__ppl_entered", ast.Store())],
                        ast.Store(),
                    )
                ],
                entered,
            )
        )
        body: list[ast.stmt] = []
        if item.optional_vars is not None:
            self.emit(ast.Assign([self.rw.visit(item.optional_vars)], name("__ppl_entered")))
        body += [ast.With(rest, s.body)] if rest else s.body
        self.emit(ast.Assign([self.local(ok, ast.Store())], ast.Constant(True)))
        call_exit = ast.Call(
            name(exit_),
            [
                name(mgr),
                ast.Call(name("type"), [name(err)], []),
                name(err),
                ast.Attribute(name(err), "__traceback__", ast.Load()),
            ],
            [],
        )
        handler = ast.ExceptHandler(
            name("BaseException"),
            err,
            [
                ast.Assign([name(ok, ast.Store())], ast.Constant(False)),
                ast.If(ast.UnaryOp(ast.Not(), call_exit), [ast.Raise(None, None)], []),
            ],
        )
        final = ast.If(
            name(ok),
            [ast.Expr(ast.Call(name(exit_), [name(mgr), *[ast.Constant(None)] * 3], []))],
            [],
        )
        tree = ast.Try([ast.Try(body, [handler], [], [])], [], [], [final])
        for node in ast.walk(tree):
            if "lineno" in node._attributes and not hasattr(node, "lineno"):
                ast.copy_location(node, s)
        self.stmt(tree)

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
        pulled = self.pulled(s.iter)
        if pulled is not None:
            self.generator_for(s, *pulled)
            return
        # as CPython runs it: iter() once, next() before each pass (see `ppl.loops`)
        it = self.new_tmp()
        iterable = self.expr(s.iter)
        self.emit(
            ast.Assign(
                [self.local(it, ast.Store())],
                ast.Call(ast.Name("__ppl_iter", ast.Load()), [iterable], []),
            )
        )
        self.loop_slots.append((it, f"{self.filename}:{s.lineno}"))
        header, after = self.new_block(), self.new_block()
        orelse = self.new_block() if s.orelse else after
        self.goto(header)
        self.cur = header
        item = ast.Name("__ppl_item", ast.Load())
        self.emit(
            ast.Assign(
                [ast.Name("__ppl_item", ast.Store())],
                ast.Call(
                    ast.Name("__ppl_next", ast.Load()),
                    [self.local(it), ast.Name("__ppl_done", ast.Load())],
                    [],
                ),
            )
        )
        self.emit(
            ast.If(
                ast.Compare(item, [ast.Is()], [ast.Name("__ppl_done", ast.Load())]),
                [ast.Return(ast.Constant(orelse))],
                [],
            )
        )
        self.emit(ast.Assign([self.rw.visit(s.target)], item))
        self.loop(s, header, header, after, orelse)
        # the loop is over (exhausted or left by `break`): it lets go of its iterator
        self.emit(ast.Assign([self.local(it, ast.Store())], ast.Constant(None)))

    def loop(self, s: ast.For | ast.While, header: int, body: int, after: int, orelse: int) -> None:
        self.cur = body
        self.loops.append((header, after, len(self.finals)))
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
        self.compile_nested()
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
            args=[
                ast.arg("__cells"),
                *(ast.arg(name) for name in _RUNTIME),
                ast.arg("__ppl_codes"),
            ],
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
        blocks = made(tuple(self.fn.__closure__ or ()), *_RUNTIME.values(), self.nested_codes)
        qualname = self.qualname()
        for b in blocks:
            b.__code__ = (
                b.__code__.replace(co_name=fn_name, co_qualname=qualname)
                if hasattr(b.__code__, "co_qualname")
                else b.__code__.replace(co_name=fn_name)
            )
        regions = any(r is not None for r in self.block_regions) or any(self.block_handling)
        return Code(
            fn_name,
            blocks,
            self.sites,
            inspect.signature(self.fn) if self.outer is None else inspect.Signature(),
            tuple(self.loop_slots),
            tuple(self.block_regions) if regions else (),
            tuple(self.block_handling) if regions else (),
            qualname,
        )


def _is_suspending(obj: Any) -> bool:
    try:
        # `BaseProgram`: `Program`, its only subclass, sits above this module
        return isinstance(obj, BaseProgram) or obj in PRIMITIVES
    except TypeError:  # unhashable callables
        return False
