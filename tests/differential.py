"""Differential testing of the compiler against its reference, CPython.

A hypothesis strategy (`cases`) writes random modules of `@program`s over the language the
compiler accepts; `check` runs each one

(a) compiled, under the engine (`ppl.inference.engine.Engine`) with a few particles, forking
    pending particles at random language-model steps (the fork and the original both go on and
    draw their own tokens);
(b) for every particle that came out, directly in CPython (the user's function under the handler
    stack) with the particle's recorded choices replayed at their addresses (`ppl.handlers.replay`),
    and, when every choice on its path had probability 1, as the plain undecorated function
    (`prog.fn`) with no handler at all;

and raises a `Divergence` unless they agree on the return value (with the state of the arguments
the program mutated and the objects it created, aliasing included), the choices (addresses,
values, log probabilities and lines, in order), the log weight, and the exception (type,
message, and the user's function and line in the traceback). A module refused at decoration
with a `CompileError` is counted as refused: refusals are allowed, divergences are not.

The generator is a set of registries of cases (`STATEMENTS`, `EXPRESSIONS`, `ITERABLES`): a new
construct is one more function decorated with `@statement(...)`, `@expression(...)` or
`@iterable(...)`. `Language.exclude` drops cases by name, to peel one known divergence off and
look for others.

Run the long fuzz with `make fuzz` (`python -m tests.differential --programs 20000 --jobs 2`).
"""

from __future__ import annotations

import argparse
import atexit
import copy
import dataclasses
import hashlib
import itertools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppl.compiler import CompileError, Program
from ppl.handlers import Messenger, replay, seed, trace
from ppl.inference.engine import Engine, Particle
from ppl.models.toy import FunctionLM
from ppl.trace import Choice, Trace

# ---------------------------------------------------------------------------------------------
# What generated programs use besides their own module's helpers


def _lm_probs(prefix: tuple[int, ...]) -> list[float]:
    """A deterministic toy model: the next token's probabilities depend on the prefix."""
    n = len(prefix)
    return [1.0 + n % 3, 2.0, 1.0 + (sum(prefix) % 2), 0.5]


#: the test language model: tokens a, b, c and an EOS, every one possible at every step
LM = FunctionLM(["a", "b", "c", "<eos>"], _lm_probs, eos="<eos>")
#: a language model that puts all its mass on one token at each step (a choice of probability 1)
DLM = FunctionLM(["a", "b", "<eos>"], lambda p: [1.0, 0.0, 0.0] if len(p) % 2 else [0, 1, 0])


class RunawayLoop(Exception):
    """An infinite iterator was consumed far beyond what any generated program reads."""


class count:  # noqa: N801 -- stands in for itertools.count in generated programs
    """`itertools.count(start)`, except that it raises `RunawayLoop` after 10,000 items.

    Generated programs always leave a `for ... in count()` loop within a few iterations, so in
    CPython it behaves exactly as `itertools.count`. A compiled loop that copied its iterable
    before the first iteration would otherwise fill the memory of the machine.
    """

    LIMIT = 10_000

    def __init__(self, start: int = 0) -> None:
        self.start = start
        self.n = 0

    def __iter__(self) -> count:
        return self

    def __next__(self) -> int:
        if self.n >= self.LIMIT:
            raise RunawayLoop(f"count() consumed past {self.LIMIT} items")
        self.n += 1
        return self.start + self.n - 1

    def __repr__(self) -> str:
        return f"count({self.start + self.n})"


class Box:
    """A mutable object that programs create, mutate and return (compared by value)."""

    def __init__(self, v: int) -> None:
        self.v = v

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Box) and self.v == other.v

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Box({self.v!r})"


# The fixed head of every generated module: imports, plain helper functions (some raise, some
# mutate their argument), a plain generator function and a plain context manager.
HEADER = """\
import itertools

import numpyro.distributions as nd

from ppl import condition, factor, observe, program, sample
from ppl.distributions import Bernoulli, Categorical, Geometric
from tests.differential import DLM, LM, Box, count


class Custom(Exception):
    pass


def note(log, v):
    log.append(v)
    return v


def h_div(a, b):
    return a // b


def h_get(xs, i):
    return xs[i]


def h_key(d, k):
    return d[k]


def h_check(v):
    if v > 3:
        raise Custom(f"too big: {v}")
    return v


def h_push(xs, v):
    if len(xs) < 6:
        xs.append(v)
    return len(xs)


def h_pop(xs):
    return xs.pop() if xs else -1


def h_put(d, k, v):
    d[k % 4] = v
    return len(d)


def h_first(xs, v):
    if xs:
        xs[0] = v
    return v


def gen(n, log):
    for i in range(n):
        log.append(("gen", i))
        yield i


class Manager:
    def __init__(self, log):
        self.log = log

    def __enter__(self):
        self.log.append("enter")
        return len(self.log)

    def __exit__(self, kind, value, tb):
        self.log.append(("exit", kind.__name__ if kind else None))
        return False
"""

# ---------------------------------------------------------------------------------------------
# The generator


@dataclass(frozen=True)
class Language:
    """Which cases the generator may use (`exclude`: case names), and how big programs get."""

    exclude: frozenset[str] = frozenset()
    max_depth: int = 3  # statement nesting
    max_loops: int = 2  # loop nesting
    max_programs: int = 2  # sub-programs besides `main`
    size: int = 4  # top-level statements of `main` (sub-programs: half)


@dataclass(frozen=True)
class Env:
    lang: Language
    program: str  # the program being written
    callees: tuple[str, ...]  # the programs it may call (itself included, with k - 1)
    ints: tuple[str, ...]  # int-valued expressions in scope
    loops: int = 0  # enclosing loops
    depth: int = 0  # enclosing compound statements
    sites: bool = True  # may a primitive or program call go here
    degenerate: bool = False  # all distributions have a single value (probability 1)
    walrus: bool = True  # may `:=` go here (not in a comprehension)
    ids: Any = None  # a shared itertools.count for fresh names
    used: Any = None  # a shared list: the names of the cases drawn

    def fresh(self) -> int:
        return next(self.ids)

    def inner(self, **changes: Any) -> Env:
        return dataclasses.replace(self, depth=self.depth + 1, **changes)


@dataclass(frozen=True)
class Case:
    name: str
    weight: int
    make: Callable[..., Any]
    when: Callable[[Env], bool]
    site: bool  # the case always holds a primitive or program call


STATEMENTS: list[Case] = []
EXPRESSIONS: list[Case] = []
ITERABLES: list[Case] = []

Lines = list[tuple[int, str]]


def _register(registry: list[Case], kind: str) -> Callable[..., Any]:
    def register(
        name: str,
        weight: int = 1,
        when: Callable[[Env], bool] | None = None,
        site: bool = False,
        rare: bool = False,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """`rare`: a third of the weight of a weight-1 case (a construct often refused)."""
        weight = 1 if rare else 3 * weight

        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            registry.append(Case(f"{kind}:{name}", weight, fn, when or (lambda env: True), site))
            return fn

        return deco

    return register


statement = _register(STATEMENTS, "stmt")
expression = _register(EXPRESSIONS, "expr")
iterable = _register(ITERABLES, "for")


_ELIGIBLE: dict[tuple, tuple[list[Case], int]] = {}


def _pick(draw: Any, registry: list[Case], env: Env, leaves_only: bool = False) -> Case:
    """A case of `registry` that may go where `env` says, drawn by weight."""
    key = (id(registry), env.lang, env.sites, env.walrus, env.depth, env.loops, len(env.callees))
    key += (leaves_only,)
    found = _ELIGIBLE.get(key)
    if found is None:
        cases = [
            c
            for c in registry
            if c.name not in env.lang.exclude
            and (env.sites or not c.site)
            and c.when(env)
            and (not leaves_only or c.name in _LEAVES)
        ]
        found = _ELIGIBLE[key] = (cases, sum(c.weight for c in cases))
    cases, total = found
    n = draw(st.integers(0, total - 1))
    for c in cases:
        n -= c.weight
        if n < 0:
            if env.used is not None:
                env.used.append(c.name)
            return c
    raise AssertionError("unreachable")


def expr(draw: Any, env: Env, budget: int = 2) -> str:
    """An int-valued expression (bools count as ints)."""
    case = _pick(draw, EXPRESSIONS, env, leaves_only=budget <= 0)
    return case.make(draw, env, budget - 1)


def block(draw: Any, env: Env, low: int = 1, high: int = 3) -> Lines:
    out: Lines = []
    for _ in range(draw(st.integers(low, high))):
        case = _pick(draw, STATEMENTS, env)
        out += case.make(draw, env)
    return out


def indent(lines: Lines, by: int = 1) -> Lines:
    return [(i + by, t) for i, t in lines]


DISTS = [
    "Categorical([0, 1, 2])",
    "Bernoulli(0.5)",
    "Geometric(0.6)",
    "Categorical([1, 3], [0.25, 0.75])",
    "nd.Bernoulli(0.4)",
    "nd.Poisson(1.0)",
]
DEGENERATE = ["Categorical([1])", "Bernoulli(1.0)", "Bernoulli(0.0)", "Categorical([2])"]


def dist(draw: Any, env: Env) -> str:
    return draw(st.sampled_from(DEGENERATE if env.degenerate else DISTS))


def lm(env: Env) -> str:
    return "DLM" if env.degenerate else "LM"


RETURN = "return (a, b, xs, d, log, ctx.text)"

# -- expressions: leaves first (shrinking goes towards the first cases) -------------------------

_LEAVES = {"expr:const", "expr:var", "expr:len"}


@expression("const", 3)
def _const(draw: Any, env: Env, budget: int) -> str:
    return str(draw(st.integers(-1, 4)))


@expression("var", 5)
def _var(draw: Any, env: Env, budget: int) -> str:
    return draw(st.sampled_from(env.ints))


@expression("len", 2)
def _len(draw: Any, env: Env, budget: int) -> str:
    return draw(st.sampled_from(["len(xs)", "len(d)", "len(log)"]))


@expression("sample", 6, site=True)
def _sample(draw: Any, env: Env, budget: int) -> str:
    return f"sample({dist(draw, env)})"


@expression("sample_named", 2, site=True)
def _sample_named(draw: Any, env: Env, budget: int) -> str:
    # a name used once per run: the log grows by one right after each named choice
    return f'note(log, sample(f"n{{len(log)}}", {dist(draw, env)}))'


@expression("sample_dependent", 2, site=True)
def _sample_dependent(draw: Any, env: Env, budget: int) -> str:
    if env.degenerate:
        return f"sample(Categorical([{expr(draw, env, budget)}]))"
    return f"sample(Categorical([0, {expr(draw, env, budget)}, 2]))"


@expression("token", 4, site=True)
def _token(draw: Any, env: Env, budget: int) -> str:
    return "sample(ctx.next_token()).id"


@expression("observe_value", 1, site=True)
def _observe_value(draw: Any, env: Env, budget: int) -> str:
    return f"observe(Categorical([0, 1, 2, 3]), {expr(draw, env, budget)} % 4)"


@expression("factor_or", 1, site=True)
def _factor_or(draw: Any, env: Env, budget: int) -> str:
    kind = draw(st.sampled_from(["factor(-0.5)", f"condition({expr(draw, env, budget)} < 3)"]))
    return f"({kind} or {expr(draw, env, budget)})"


def _program_call(shared: bool) -> Callable[..., str]:
    # `shared`: the callee gets the caller's own list and dict (CPython passes references)
    options = ["xs, d", "xs, {}"] if shared else ["list(xs), dict(d)", "[], {}"]

    def make(draw: Any, env: Env, budget: int) -> str:
        callee = draw(st.sampled_from(env.callees[:-1]))
        return f"{callee}(k - 1, {draw(st.sampled_from(options))})[{draw(st.integers(0, 1))}]"

    return make


def _recursive_call(shared: bool) -> Callable[..., str]:
    args = "xs, d" if shared else "list(xs), {}"

    def make(draw: Any, env: Env, budget: int) -> str:
        return f"({env.callees[-1]}(k - 1, {args})[0] if k > 0 else {expr(draw, env, budget)})"

    return make


_has_callee = lambda env: len(env.callees) > 1
expression("call_program", 1, when=_has_callee, site=True)(_program_call(shared=False))
expression("call_program_shared", 1, when=_has_callee, site=True)(_program_call(shared=True))
expression("recursion", 1, site=True)(_recursive_call(shared=False))
expression("recursion_shared", 1, site=True)(_recursive_call(shared=True))


@expression("binop", 4)
def _binop(draw: Any, env: Env, budget: int) -> str:
    op = draw(st.sampled_from(["+", "-", "*", "//", "%"]))
    return f"({expr(draw, env, budget)} {op} {expr(draw, env, budget)})"


@expression("compare", 2)
def _compare(draw: Any, env: Env, budget: int) -> str:
    op = draw(st.sampled_from(["<", "==", "!=", ">="]))
    return f"({expr(draw, env, budget)} {op} {expr(draw, env, budget)})"


@expression("compare_chain", 1)
def _compare_chain(draw: Any, env: Env, budget: int) -> str:
    a, b, c = (expr(draw, env, budget) for _ in range(3))
    return f"({a} < {b} <= {c})"


@expression("boolop", 3)
def _boolop(draw: Any, env: Env, budget: int) -> str:
    op = draw(st.sampled_from(["and", "or"]))
    return f"({expr(draw, env, budget)} {op} {expr(draw, env, budget)})"


@expression("not", 1)
def _not(draw: Any, env: Env, budget: int) -> str:
    return f"(not {expr(draw, env, budget)})"


@expression("ifexp", 2)
def _ifexp(draw: Any, env: Env, budget: int) -> str:
    a, t, b = (expr(draw, env, budget) for _ in range(3))
    return f"({a} if {t} else {b})"


@expression("helper", 2)
def _helper(draw: Any, env: Env, budget: int) -> str:
    e = lambda: expr(draw, env, budget)
    return draw(
        st.sampled_from(
            [
                lambda: f"h_div({e()}, {e()})",
                lambda: f"h_get(xs, {e()})",
                lambda: f"h_key(d, {e()})",
                lambda: f"h_check({e()})",
                lambda: f"h_push(xs, {e()})",
                lambda: "h_pop(xs)",
                lambda: f"h_put(d, {e()}, {e()})",
                lambda: f"h_first(xs, {e()})",
            ]
        )
    )()


@expression("subscript", 1)
def _subscript(draw: Any, env: Env, budget: int) -> str:
    e = expr(draw, env, budget)
    return draw(st.sampled_from([f"d.get({e}, -1)", f"xs[{e} % 3]", f"d[{e}]"]))


@expression("display", 2)
def _display(draw: Any, env: Env, budget: int) -> str:
    a, b, c = (expr(draw, env, budget) for _ in range(3))
    return draw(
        st.sampled_from(
            [
                f"sum([{a}, {b}, {c}])",
                f"max(({a}, {b}))",
                f"len({{{a}, {b}}})",
                f"h_get([{a}, {b}], {c})",
                f"len(str({a}) + '-' + str({b}))",
            ]
        )
    )


@expression("dict_display", 1)
def _dict_display(draw: Any, env: Env, budget: int) -> str:
    a, b, c = (expr(draw, env, budget) for _ in range(3))
    return draw(
        st.sampled_from([f"len({{{a}: {b}, {c}: {a}}})", f"sum({{{a}: {b}, {c}: 1}}.values())"])
    )


@expression("comprehension", 1)
def _comprehension(draw: Any, env: Env, budget: int) -> str:
    inner = env.inner(ints=(*env.ints, "q"), sites=False, walrus=False)
    e = expr(draw, inner, budget)
    return draw(
        st.sampled_from(
            [
                f"sum([{e} for q in range(3)])",
                f"len({{q: {e} for q in range(3)}})",
                f"sum({e} for q in xs)",
                f"any({e} for q in range(2))",
            ]
        )
    )


@expression("lambda", 1)
def _lambda(draw: Any, env: Env, budget: int) -> str:
    inner = env.inner(ints=(*env.ints, "q"), sites=False)
    return f"(lambda q: {expr(draw, inner, budget)})({expr(draw, env, budget)})"


@expression("box", 1)
def _box(draw: Any, env: Env, budget: int) -> str:
    return f"note(log, Box({expr(draw, env, budget)})).v"


# -- statements --------------------------------------------------------------------------------


@statement("assign", 6)
def _assign(draw: Any, env: Env) -> Lines:
    target = draw(st.sampled_from(["a", "b", "a, b"]))
    if target == "a, b":
        return [(0, f"a, b = {expr(draw, env)}, {expr(draw, env)}")]
    return [(0, f"{target} = {expr(draw, env)}")]


@statement("augassign", 4)
def _augassign(draw: Any, env: Env) -> Lines:
    target = draw(st.sampled_from(["a", "b"]))
    op = draw(st.sampled_from(["+=", "-=", "*=", "^="]))
    return [(0, f"{target} {op} {expr(draw, env)}")]


@statement("augassign_item", 1)
def _augassign_item(draw: Any, env: Env) -> Lines:
    target = draw(st.sampled_from(["xs[-1]", "xs[len(xs) - 1]", "d[0]", "log[-1]"]))
    return [(0, f"{target} += {expr(draw, env)}")]


@statement("effect", 5)
def _effect(draw: Any, env: Env) -> Lines:
    e = expr(draw, env)
    return [
        (
            0,
            draw(
                st.sampled_from(
                    [
                        f"note(log, {e})",
                        f"log.append({e})",
                        f"h_push(xs, {e})",
                        f"observe(Bernoulli(0.7), {e} % 2 == 0)",
                        f"factor(-0.25 * ({e} % 3))",
                        f"condition({e} != 3)",
                        f"observe(Categorical([0, 1, 2]), {e})",
                    ]
                )
            ),
        )
    ]


@statement("token", 3, site=True)
def _token_stmt(draw: Any, env: Env) -> Lines:
    return [(0, "ctx = ctx + sample(ctx.next_token())")]


@statement("observe_token", 1, site=True)
def _observe_token(draw: Any, env: Env) -> Lines:
    return [(0, f"observe(ctx.next_token(), {expr(draw, env)} % 3)")]


@statement("mutate", 4)
def _mutate(draw: Any, env: Env) -> Lines:
    e = expr(draw, env)
    return draw(
        st.sampled_from(
            [
                [(0, "if len(xs) < 6:"), (1, f"xs.append({e})")],
                [(0, "if xs:"), (1, "xs.pop()")],
                [(0, "if xs:"), (1, "del xs[0]")],
                [(0, "if len(xs) < 6:"), (1, f"xs.insert(0, {e})")],
                [(0, f"d[{e} % 4] = a")],
                [(0, f"d.pop({e} % 4, None)")],
                [(0, "if d:"), (1, "d[next(iter(d))] = b")],
            ]
        )
    )


@statement("if", 3, when=lambda env: env.depth < env.lang.max_depth)
def _if(draw: Any, env: Env) -> Lines:
    out = [(0, f"if {expr(draw, env)}:"), *indent(block(draw, env.inner()))]
    for _ in range(draw(st.integers(0, 1))):
        out += [(0, f"elif {expr(draw, env)}:"), *indent(block(draw, env.inner()))]
    if draw(st.booleans()):
        out += [(0, "else:"), *indent(block(draw, env.inner()))]
    return out


def _loop_ok(env: Env) -> bool:
    return env.depth < env.lang.max_depth and env.loops < env.lang.max_loops


def _else(draw: Any, env: Env) -> Lines:
    if draw(st.integers(0, 3)) == 0:
        return [(0, "else:"), *indent(block(draw, env.inner(), 1, 1))]
    return []


@statement("while", 2, when=_loop_ok)
def _while(draw: Any, env: Env) -> Lines:
    w = f"w{env.fresh()}"
    test = expr(draw, env)
    test = draw(st.sampled_from([f"{w} < 3 and {test}", f"{test} and {w} < 3"]))
    body = block(draw, env.inner(loops=env.loops + 1, ints=(*env.ints, w)))
    return [(0, f"{w} = 0"), (0, f"while {test}:"), (1, f"{w} += 1"), *indent(body)] + _else(
        draw, env
    )


@statement("for", 5, when=_loop_ok)
def _for(draw: Any, env: Env) -> Lines:
    n = env.fresh()
    case = _pick(draw, ITERABLES, env)
    before, header, names, first = case.make(draw, env, n)
    body = block(draw, env.inner(loops=env.loops + 1, ints=(*env.ints, *names)))
    return [*before, (0, header), *indent(first), *indent(body)] + _else(draw, env)


@statement("break", 2, when=lambda env: env.loops > 0)
def _break(draw: Any, env: Env) -> Lines:
    kind = draw(st.sampled_from(["break", "continue"]))
    if draw(st.booleans()):
        return [(0, f"if {expr(draw, env)}:"), (1, kind)]
    return [(0, kind)]


@statement("return", 1)
def _return(draw: Any, env: Env) -> Lines:
    return [(0, f"if {expr(draw, env)}:"), (1, RETURN)]


@statement("raise", 1)
def _raise(draw: Any, env: Env) -> Lines:
    exc = draw(st.sampled_from(["Custom(f'c{a}')", "KeyError(b)", "ValueError('bad')"]))
    return [(0, f"if {expr(draw, env)}:"), (1, f"raise {exc}")]


@statement("assert", 1)
def _assert(draw: Any, env: Env) -> Lines:
    return [(0, f"assert {expr(draw, env)} != 3, {expr(draw, env)}")]


@statement("maybe_unbound", 1, when=lambda env: env.depth > 0)
def _maybe_unbound(draw: Any, env: Env) -> Lines:
    u = f"u{env.fresh()}"
    return [(0, f"if {expr(draw, env)}:"), (1, f"{u} = {expr(draw, env)}"), (0, f"a = {u}")]


@statement("del_local", 1, when=lambda env: env.depth > 0)
def _del_local(draw: Any, env: Env) -> Lines:
    u = f"u{env.fresh()}"
    return [(0, f"{u} = {expr(draw, env)}"), (0, f"if {expr(draw, env)}:"), (1, f"del {u}")] + [
        (0, f"b = {u}")
    ]


@statement("try", 1, when=lambda env: env.depth < env.lang.max_depth)
def _try(draw: Any, env: Env) -> Lines:
    # plain code only: a primitive inside `try` is refused today (a case that allows it is one
    # more registration, with sites=True)
    inner = env.inner(sites=False)
    exc = draw(st.sampled_from(["ZeroDivisionError", "(IndexError, KeyError)", "Custom"]))
    out = [(0, "try:"), *indent(block(draw, inner, 1, 2)), (0, f"except {exc}:")]
    out += indent(block(draw, inner, 1, 1))
    if draw(st.booleans()):
        out += [(0, "finally:"), (1, "log.append('finally')")]
    return out


@statement("with", 1, when=lambda env: env.depth < env.lang.max_depth)
def _with(draw: Any, env: Env) -> Lines:
    inner = env.inner(sites=False, ints=(*env.ints, "m"))
    return [(0, "with Manager(log) as m:"), *indent(block(draw, inner, 1, 2))]


# -- constructs with primitives inside: refused by the compiler before issue 19 (counted as
# refusals there), compiled since; each is one case


@statement("try_sites", 2, when=lambda env: env.depth < env.lang.max_depth)
def _try_sites(draw: Any, env: Env) -> Lines:
    exc = draw(st.sampled_from(["ZeroDivisionError", "(IndexError, KeyError)", "Custom"]))
    out = [(0, "try:"), *indent(block(draw, env.inner(), 1, 2))]
    out += [(0, f"except {exc} as e:"), (1, "log.append(type(e).__name__)")]
    out += indent(block(draw, env.inner(), 1, 1))
    if draw(st.booleans()):
        out += [(0, "else:"), *indent(block(draw, env.inner(), 1, 1))]
    if draw(st.booleans()):
        out += [
            (0, "finally:"),
            (1, "log.append('finally')"),
            *indent(block(draw, env.inner(), 0, 1)),
        ]
    return out


@statement("with_sites", 1, when=lambda env: env.depth < env.lang.max_depth)
def _with_sites(draw: Any, env: Env) -> Lines:
    inner = env.inner(ints=(*env.ints, "m"))
    return [(0, "with Manager(log) as m:"), *indent(block(draw, inner, 1, 2))]


@statement("match", 1, when=lambda env: env.depth < env.lang.max_depth)
def _match(draw: Any, env: Env) -> Lines:
    if draw(st.booleans()):
        out = [(0, f"match {expr(draw, env)}:"), (1, "case 0:")]
        out += indent(block(draw, env.inner(), 1, 1), 2)
        out += [(1, "case 1 | 2:"), *indent(block(draw, env.inner(), 1, 1), 2)]
    else:
        n = env.fresh()
        out = [(0, "match xs:"), (1, f"case [f{n}, *_]:")]
        out += indent(block(draw, env.inner(ints=(*env.ints, f"f{n}")), 1, 1), 2)
    out += [(1, "case _:"), *indent(block(draw, env.inner(), 1, 1), 2)]
    return out


@statement("nested_def", rare=True, when=lambda env: env.depth < env.lang.max_depth)
def _nested_def(draw: Any, env: Env) -> Lines:
    n = env.fresh()
    inner = env.inner(ints=(*env.ints, "q"))
    return [
        (0, f"def f{n}(q):"),
        (1, f"return {expr(draw, inner)}"),
        (0, f"a = f{n}({expr(draw, env)}) + f{n}({expr(draw, env)})"),
    ]


@expression("comprehension_sites", 1)
def _comprehension_sites(draw: Any, env: Env, budget: int) -> str:
    e = expr(draw, env.inner(ints=(*env.ints, "q"), walrus=False), budget)
    n = expr(draw, env.inner(walrus=False), budget)
    return draw(
        st.sampled_from(
            [
                f"sum([{e} for q in range({n} % 3)])",
                f"len({{q: {e} for q in range({n} % 3)}})",
                f"len({{{e} for q in xs}})",
                f"sum({e} for q in range({n} % 3))",
                f"any({e} for q in range(3))",
                f"all({e} for q in xs)",
                f"max([{e} for q in range(2) if {n}], default=-1)",
                f"len(dict(zip(xs, ({e} for q in range({n} % 3)))))",
                f"sum(j * t for j, t in enumerate({e} for q in xs))",
            ]
        )
    )


@expression("lambda_sites", rare=True)
def _lambda_sites(draw: Any, env: Env, budget: int) -> str:
    e = expr(draw, env.inner(ints=(*env.ints, "q")), budget)
    return f"(lambda q: {e})({expr(draw, env, budget)})"


@expression("walrus", rare=True, when=lambda env: env.walrus)
def _walrus(draw: Any, env: Env, budget: int) -> str:
    return f"(a := {expr(draw, env, budget)})"


@statement("box", 1)
def _box_stmt(draw: Any, env: Env) -> Lines:
    return [(0, f"bx = note(log, Box({expr(draw, env)}))"), (0, f"bx.v += {expr(draw, env)}")]


# -- for-loop iterables: (lines before, header, int-valued names, first body lines) ------------


def _simple(text: Callable[[Any, Env], str], target: str = "i", as_int: str = "{}") -> Callable:
    def make(draw: Any, env: Env, n: int) -> tuple:
        name = f"{target}{n}"
        return [], f"for {name} in {text(draw, env)}:", [as_int.format(name)], []

    return make


iterable("range", 4)(_simple(lambda draw, env: f"range({expr(draw, env)} % 4)"))
iterable("list", 3)(_simple(lambda draw, env: "xs", "x"))
iterable("list_copy", 1)(_simple(lambda draw, env: draw(st.sampled_from(["list(xs)", "xs[:]"]))))
iterable("tuple", 1)(_simple(lambda draw, env: "tuple(xs)", "x"))
iterable("display", 2)(
    _simple(lambda draw, env: f"[{expr(draw, env, 1)}, {expr(draw, env, 1)}]", "x")
)
iterable("dict", 2)(_simple(lambda draw, env: draw(st.sampled_from(["d", "d.keys()"])), "k"))
iterable("dict_values", 1)(_simple(lambda draw, env: "d.values()", "v"))
iterable("set", 1)(_simple(lambda draw, env: f"{{{expr(draw, env, 1)}, 1, 5}}", "s"))
iterable("string", 1)(
    _simple(lambda draw, env: f"'ab' * ({expr(draw, env, 1)} % 3)", "ch", "ord({})")
)
iterable("reversed", 1)(_simple(lambda draw, env: "reversed(xs)", "x"))
iterable("generator", 2)(_simple(lambda draw, env: f"gen({expr(draw, env, 1)} % 4, log)", "g"))


@iterable("items", 2)
def _items(draw: Any, env: Env, n: int) -> tuple:
    return [], f"for k{n}, v{n} in d.items():", [f"k{n}", f"v{n}"], []


@iterable("enumerate", 1)
def _enumerate(draw: Any, env: Env, n: int) -> tuple:
    return [], f"for j{n}, x{n} in enumerate(xs):", [f"j{n}", f"x{n}"], []


@iterable("zip", 1)
def _zip(draw: Any, env: Env, n: int) -> tuple:
    return [], f"for x{n}, y{n} in zip(xs, range({expr(draw, env, 1)})):", [f"x{n}", f"y{n}"], []


def _site_generator(draw: Any, env: Env, n: int) -> str:
    """A generator expression whose items (and maybe conditions) make choices."""
    inner = env.inner(ints=(*env.ints, "q"), walrus=False)
    e = expr(draw, inner, 1)
    clause = draw(
        st.sampled_from(
            [
                f"for q in range({expr(draw, env.inner(walrus=False), 1)} % 4)",
                "for q in xs",
                f"for q in xs if {expr(draw, inner, 1)} % 2",
                "for p in range(3) for q in range(p)",
            ]
        )
    )
    return f"({e} {clause})"


@iterable("site_generator", 2)
def _site_generator_loop(draw: Any, env: Env, n: int) -> tuple:
    gen = _site_generator(draw, env, n)
    kind = draw(st.sampled_from(["alone", "enumerate", "zip_first", "zip_second", "zip_both"]))
    if kind == "alone":
        return [], f"for t{n} in {gen}:", [f"t{n}"], []
    if kind == "enumerate":
        start = draw(st.sampled_from(["", ", 1", ", start=-2"]))
        return [], f"for j{n}, t{n} in enumerate({gen}{start}):", [f"j{n}", f"t{n}"], []
    if kind == "zip_first":
        header = f"for t{n}, x{n} in zip({gen}, xs):"
    elif kind == "zip_second":
        header = f"for x{n}, t{n} in zip(xs, {gen}):"
    else:
        header = f"for x{n}, t{n} in zip({_site_generator(draw, env, n)}, {gen}):"
    return [], header, [f"x{n}", f"t{n}"], []


@iterable("count", 2)
def _count(draw: Any, env: Env, n: int) -> tuple:
    limit = expr(draw, env.inner(sites=False), 1)
    stop = draw(st.sampled_from(["break", RETURN]))
    # the first statement of the body leaves the loop within 4 iterations
    first = [(0, f"if j{n} >= 3 or j{n} >= {limit}:"), (1, stop)]
    return [], f"for j{n} in count():", [f"j{n}"], first


@iterable("stored_generator", 1)
def _stored_generator(draw: Any, env: Env, n: int) -> tuple:
    before = [(0, f"g{n} = gen({expr(draw, env, 1)} % 4, log)")]
    return before, f"for x{n} in g{n}:", [f"x{n}"], []


# -- modules -------------------------------------------------------------------------------------


@dataclass
class Generated:
    source: str
    args: tuple  # main's arguments (k, xs, d)
    features: frozenset[str]  # case names used

    def __repr__(self) -> str:  # how hypothesis prints a falsifying example
        return f"Generated(args={self.args!r}, source=<<<\n{self.source}>>>)"


def _function(draw: Any, name: str, callees: tuple[str, ...], env: Env, size: int) -> list[str]:
    env = dataclasses.replace(env, program=name, callees=(*callees, name))
    body = block(draw, env, 1, size)
    lines = [
        "@program",
        f"def {name}(k, xs, d):",
        "    log = []",
        "    a = k",
        "    b = len(xs)",
        f'    ctx = {lm(env)}.context("ab")',
    ]
    lines += ["    " * (i + 1) + text for i, text in body]
    lines.append("    " + RETURN)
    return lines


@st.composite
def modules(draw: Any, lang: Language = Language()) -> Generated:
    degenerate = draw(st.integers(0, 4)) == 0
    used: list[str] = []
    env = Env(
        lang, "", (), ("a", "b", "k"), degenerate=degenerate, ids=itertools.count(), used=used
    )
    names: list[str] = []
    lines: list[str] = []
    for i in range(draw(st.integers(0, lang.max_programs))):
        name = f"p{i}"
        lines += _function(draw, name, tuple(names), env, max(1, lang.size // 2)) + ["", ""]
        names.append(name)
    lines += _function(draw, "main", tuple(names), env, lang.size)
    xs = draw(st.lists(st.integers(0, 3), max_size=3))
    d = draw(st.dictionaries(st.integers(0, 3), st.integers(0, 3), max_size=2))
    args = (draw(st.integers(0, 2)), xs, d)
    return Generated(HEADER + "\n\n" + "\n".join(lines) + "\n", args, frozenset(used))


@dataclass(frozen=True)
class Run:
    """How to run one generated module: its seed, particles and how often to fork."""

    seed: int
    particles: int
    fork: float  # probability that a pending particle forks at a step
    max_particles: int = 8


@st.composite
def cases(draw: Any, lang: Language = Language()) -> tuple[Generated, Run]:
    module = draw(modules(lang))
    run = Run(
        draw(st.integers(0, 2**32 - 1)),
        draw(st.integers(1, 3)),
        draw(st.sampled_from([0.0, 0.25, 0.5, 1.0])),
    )
    return module, run


# ---------------------------------------------------------------------------------------------
# Running


_DIR: Path | None = None
_FILES = itertools.count()


def load(source: str) -> dict[str, Any]:
    """Write `source` to a file of its own (the compiler reads source) and execute it."""
    global _DIR
    if _DIR is None:
        _DIR = Path(tempfile.mkdtemp(prefix="ppl_differential_"))
        atexit.register(shutil.rmtree, _DIR, ignore_errors=True)
    path = _DIR / f"gen_{os.getpid()}_{next(_FILES)}.py"
    path.write_text(source)
    namespace: dict[str, Any] = {"__name__": path.stem, "__file__": str(path)}
    exec(compile(source, str(path), "exec"), namespace)
    return namespace


class Divergence(AssertionError):
    """The compiled program and CPython disagree (a subclass per kind of disagreement)."""

    kind = "divergence"


_KINDS: dict[str, type[Divergence]] = {}


def divergence(kind: str) -> type[Divergence]:
    """The `Divergence` subclass for `kind`: hypothesis shrinks each kind on its own."""
    cls = _KINDS.get(kind)
    if cls is None:
        title = "".join(w.title() for w in kind.replace("-", " ").replace(":", " ").split())
        cls = _KINDS[kind] = type(f"{title}Divergence", (Divergence,), {"kind": kind})
    return cls


class HarnessTimeout(BaseException):
    """A run took far longer than any generated program should."""


class _Killed(BaseException):
    """A direct run reached a weight of -inf, where the engine stops a particle."""

    def __init__(self, lineno: int) -> None:
        self.lineno = lineno


class _StopAtZeroWeight(Messenger):
    """Stop a direct run where the engine stops the particle: its weight reached -inf.

    It raises `_Killed` there, and again at every primitive after it: a `finally` block or an
    `__exit__` that the exception runs on its way out makes no choice the engine would not.
    """

    killed_at: int | None = None

    def process_message(self, msg: Any) -> None:
        if self.killed_at is not None:
            raise _Killed(self.killed_at)

    def postprocess_message(self, msg: Any) -> None:
        if msg["type"] == "factor":
            w = msg["log_weight"]
        elif msg["observed"]:
            w = float(msg["fn"].log_prob(msg["value"]))
        else:
            return
        if w == -math.inf:
            self.killed_at = msg["site"].lineno
            raise _Killed(self.killed_at)


@dataclass
class Outcome:
    """What one execution did."""

    kind: str  # "value", "error" or "killed"
    value: Any = None
    error: tuple | None = None  # (type, message, user frames: (function, line) in the file)
    choices: list[tuple] = field(default_factory=list)  # (address, name, value, log_p, line)
    log_likelihood: float = 0.0
    killed_at: int | None = None

    def describe(self) -> str:
        if self.kind == "value":
            what = f"returned {self.value!r}"
        elif self.kind == "error":
            what = f"raised {self.error[0].__name__}: {self.error[1]} at {self.error[2]}"
        else:
            what = f"was stopped by a zero weight at line {self.killed_at}"
        return (
            f"{what}\n      choices {[(c[0], c[2]) for c in self.choices]}\n"
            f"      log weight {self.log_likelihood!r}"
        )


def _error(e: BaseException, filename: str) -> tuple:
    """(type, message, the (function, line) of each traceback entry in the program's file)."""
    frames = tuple(
        (f.name, f.lineno) for f in traceback.extract_tb(e.__traceback__) if f.filename == filename
    )
    return (type(e), str(e), frames)


def _same_frames(compiled: tuple, cpython: tuple) -> bool:
    """The same innermost user frame (function and line), and the same innermost line in each
    function that both tracebacks show. The engine runs a called program's frame from its own
    loop, so the callers' frames may be missing from a compiled traceback (not wrong: missing),
    and an exception passing through a compiled `try` may show its `except` line too."""
    if not compiled or not cpython:
        return compiled == cpython
    # CPython 3.11 runs a comprehension in a frame of its own (3.12 inlines it); the compiler
    # runs one that makes choices as loops of its function: its line counts as that function's
    compiled, cpython = _inline_comprehensions(compiled), _inline_comprehensions(cpython)
    inner_a, inner_b = dict(compiled), dict(cpython)  # the last (innermost) line of each
    common = inner_a.keys() & inner_b.keys()
    return compiled[-1] == cpython[-1] and all(inner_a[n] == inner_b[n] for n in common)


_COMPREHENSIONS = {"<listcomp>", "<setcomp>", "<dictcomp>", "<genexpr>"}


def _inline_comprehensions(frames: tuple) -> tuple:
    out: list[tuple] = []
    for name, line in frames:
        if name in _COMPREHENSIONS and out:
            name = out[-1][0]
        out.append((name, line))
    return tuple(out)


def _choices(choices: list[Choice]) -> list[tuple]:
    return [
        (c.address, c.name, c.value, c.log_prob, c.site.lineno if c.site else None) for c in choices
    ]


# -- comparing values --------------------------------------------------------------------------


def _shape(value: Any) -> Any:
    """`value` as plain data, with its aliasing: a container seen twice becomes ("alias", i)."""
    seen: dict[int, int] = {}

    def walk(v: Any) -> Any:
        if isinstance(v, float):
            return ("float", "nan" if math.isnan(v) else repr(v))
        if isinstance(v, (list, dict, set, Box)):
            if id(v) in seen:
                return ("alias", seen[id(v)])
            seen[id(v)] = len(seen)
        if isinstance(v, (list, tuple)):
            return (type(v).__name__, [walk(x) for x in v])
        if isinstance(v, dict):
            return ("dict", [(walk(k), walk(x)) for k, x in v.items()])
        if isinstance(v, (set, frozenset)):
            return (type(v).__name__, sorted(repr(x) for x in v))
        if isinstance(v, Box):
            return ("Box", walk(v.v))
        return (type(v).__name__, repr(v))

    return walk(value)


def same(a: Any, b: Any) -> bool:
    """Equal as values, NaN equal to NaN, with the same types and the same aliasing."""
    return _shape(a) == _shape(b)


# -- the compiled run ----------------------------------------------------------------------------


@dataclass
class Stats:
    programs: int = 0
    refused: int = 0
    refused_late: int = 0  # refused when first run instead of at decoration
    particles: int = 0
    forks: int = 0
    fork_errors: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    plain_runs: int = 0
    tokens: int = 0
    features: Counter = field(default_factory=Counter)
    refusals: Counter = field(default_factory=Counter)

    def merge(self, other: dict) -> None:
        for k, v in other.items():
            cur = getattr(self, k)
            if isinstance(cur, Counter):
                cur.update(v)
            else:
                setattr(self, k, cur + v)

    def to_json(self) -> dict:
        return {k: (dict(v) if isinstance(v, Counter) else v) for k, v in vars(self).items()}


def run_compiled(prog: Program, args: tuple, run: Run, stats: Stats) -> list[Particle]:
    """Run `prog` under the engine, forking pending particles at random steps.

    Particles advance one at a time, so that an exception (the user's, or one that ppl judges
    its own) ends only the particle that raised it, whatever `errors=` would do with it.
    """
    engine = Engine(prog, args, {}, run.seed)
    rng = random.Random(run.seed)
    particles = engine.new_particles(run.particles)
    for _ in range(10_000):
        for p in particles:
            if p.alive and p.pending is None:
                try:
                    engine.advance([p])
                except Exception as e:
                    p.error, p.pending, p.log_weight = e, None, -math.inf
        pending = [p for p in particles if p.pending is not None and p.alive]
        if not pending:
            break
        for p in pending:
            if len(particles) < run.max_particles and rng.random() < run.fork:
                try:
                    particles.append(p.fork())
                    stats.forks += 1
                except Exception as e:  # a state that cannot be copied: allowed, counted
                    why = str(e).replace(prog.fn.__code__.co_filename, "<program>")
                    stats.fork_errors[f"{type(e).__name__}: {why}"] += 1
        stats.tokens += engine.resolve(particles)
    else:
        raise divergence("no-end")("the compiled program made 10,000 language-model steps")
    return particles


def compiled_outcome(p: Particle, filename: str) -> Outcome:
    choices = _choices(p.to_trace())
    if p.error is not None:
        err = _error(p.error, filename)
        return Outcome("error", error=err, choices=choices, log_likelihood=p.log_likelihood)
    if p.killed_by is not None:
        return Outcome(
            "killed", choices=choices, log_likelihood=p.log_likelihood, killed_at=p.killed_by.lineno
        )
    if not p.done:
        raise divergence("unfinished")("a particle neither finished nor failed")
    return Outcome("value", value=p.value, choices=choices, log_likelihood=p.log_likelihood)


def direct_outcome(prog: Program, args: tuple, recorded: list[Choice], run_seed: int) -> Outcome:
    """Run `prog` directly with the choices `recorded` replayed at their addresses."""
    filename = prog.fn.__code__.co_filename
    stop = _StopAtZeroWeight(prog)
    t = trace(replay(seed(stop, run_seed), Trace(recorded)))
    try:
        out = Outcome("value", value=t(*copy.deepcopy(args)))
    except _Killed:
        out = Outcome("killed")
    except Exception as e:
        out = Outcome("error", error=_error(e, filename))
    if stop.killed_at is not None:  # whatever a `finally` raised after it
        out = Outcome("killed", killed_at=stop.killed_at)
    out.choices = _choices(t.trace)
    out.log_likelihood = t.trace.log_likelihood
    return out


def plain_outcome(prog: Program, args: tuple) -> Outcome:
    """Run the undecorated function with no handler (only for paths of probability 1)."""
    try:
        return Outcome("value", value=prog.fn(*copy.deepcopy(args)))
    except Exception as e:
        return Outcome("error", error=_error(e, prog.fn.__code__.co_filename))


def _differ(a: Outcome, b: Outcome, with_trace: bool = True) -> str | None:
    """The kind of the first difference between two outcomes, or None."""
    if with_trace:
        if len(a.choices) != len(b.choices) or any(
            x[0] != y[0] or x[1] != y[1] or x[4] != y[4] for x, y in zip(a.choices, b.choices)
        ):
            return "choices"
        for x, y in zip(a.choices, b.choices):
            if not same(x[2], y[2]) or not same(x[3], y[3]):
                return "choice-values"
    if a.kind != b.kind:
        return f"outcome:{a.kind}-vs-{b.kind}"
    if a.kind == "value" and not same(a.value, b.value):
        return "value"
    if a.kind == "error":
        if a.error[0] is not b.error[0]:
            return f"exception-type:{a.error[0].__name__}-vs-{b.error[0].__name__}"
        if a.error[1] != b.error[1]:
            return "exception-message"
        if not _same_frames(a.error[2], b.error[2]):
            return "exception-line"
    if a.kind == "killed" and a.killed_at != b.killed_at:
        return "kill-line"
    if with_trace and not same(a.log_likelihood, b.log_likelihood):
        return "weight"
    return None


def check(generated: Generated, run: Run, stats: Stats | None = None) -> None:
    """Run one generated module compiled and in CPython; raise a `Divergence` if they differ."""
    stats = stats if stats is not None else Stats()
    stats.programs += 1
    stats.features.update(generated.features)
    try:
        namespace = load(generated.source)
    except CompileError as e:
        stats.refused += 1
        stats.refusals[str(e).split(": ", 1)[1].split("\n")[0]] += 1
        return
    prog = namespace["main"]
    filename = prog.fn.__code__.co_filename

    def fail(kind: str, detail: str) -> None:
        raise divergence(kind)(
            f"{kind}: {detail}\n  main{generated.args!r} with {run}\n"
            f"--- program ---\n{generated.source.split(HEADER, 1)[-1].strip()}\n"
        )

    with _time_limit(60):
        try:
            particles = run_compiled(prog, generated.args, run, stats)
        except CompileError as e:
            # refused when it first ran, not at decoration: a call to a program defined after
            # this one (itself, in a recursion) inside a lambda or comprehension, say
            stats.refused_late += 1
            stats.refusals["(at the first run) " + str(e).split(": ", 1)[1].split("\n")[0]] += 1
            return
        for i, p in enumerate(particles):
            stats.particles += 1
            mine = compiled_outcome(p, filename)
            stats.outcomes[mine.kind] += 1
            if mine.kind != "error" and not same(p.log_weight, p.log_likelihood):
                fail("engine-weight", f"log weight {p.log_weight} != {p.log_likelihood}")
            theirs = direct_outcome(prog, generated.args, p.to_trace()._choices, run.seed)
            kind = _differ(mine, theirs)
            if kind is not None:
                fail(
                    kind,
                    f"particle {i}\n  compiled {mine.describe()}\n  CPython  {theirs.describe()}",
                )
            if mine.kind != "killed" and all(c[3] == 0.0 for c in mine.choices):
                stats.plain_runs += 1
                plain = plain_outcome(prog, generated.args)
                kind = _differ(mine, plain, with_trace=False)
                if kind is not None:
                    fail(
                        "plain-" + kind,
                        f"particle {i}\n  compiled {mine.describe()}\n"
                        f"  prog.fn  {plain.describe()}",
                    )


class _time_limit:  # noqa: N801
    """Raise `HarnessTimeout` after `seconds` (main thread, POSIX); nothing elsewhere."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.armed = False

    def __enter__(self) -> None:
        import threading

        if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():

            def handler(signum: int, frame: Any) -> None:
                raise HarnessTimeout(f"a generated program ran for over {self.seconds} s")

            self.old = signal.signal(signal.SIGALRM, handler)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
            self.armed = True

    def __exit__(self, *exc: Any) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)


# ---------------------------------------------------------------------------------------------
# The long run: `python -m tests.differential --programs 20000 --jobs 2`

SETTINGS = dict(
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _worker(
    programs: int, seed_: int, lang: Language, collect: bool, out: Path, dump: str | None
) -> None:
    """Check `programs` programs; report each new kind of divergence shrunk to a minimal one."""
    stats = Stats()
    seen_sources: set[str] = set()
    reported: set[str] = set()
    divergences: list[dict] = []
    collected: dict[str, dict] = {}
    budget = programs
    started = time.time()
    round_ = 0
    while budget > 0:
        round_ += 1
        before = len(seen_sources)

        @settings(max_examples=budget, **SETTINGS)
        @given(case=cases(lang))
        def test(case: tuple[Generated, Run]) -> None:
            generated, run = case
            key = hashlib.sha1(generated.source.encode() + repr(run).encode()).hexdigest()
            new = key not in seen_sources
            seen_sources.add(key)
            try:
                check(generated, run, stats if new else Stats())
            except Divergence as e:
                if dump is not None and new:
                    with open(dump, "a") as f:
                        f.write(json.dumps({"kind": e.kind, "message": str(e)}) + "\n")
                if collect or e.kind in reported:  # already known: note it, go on
                    entry = collected.setdefault(e.kind, {"count": 0, "message": str(e)})
                    entry["count"] += new
                    if len(str(e)) < len(entry["message"]):
                        entry["message"] = str(e)
                    return
                raise

        try:
            hypothesis.seed(seed_ * 1000 + round_)(test)()
        except BaseException as e:  # noqa: BLE001 -- a Divergence or a group of them
            found = _divergences_in(e)
            if not found:
                raise
            for d in found:
                reported.add(d.kind)
                divergences.append({"kind": d.kind, "message": str(d)})
        budget = programs - len(seen_sources)
        if len(seen_sources) == before:
            break  # nothing new could be generated
    result = {
        "stats": stats.to_json(),
        "checked": len(seen_sources),
        "seconds": time.time() - started,
        "divergences": divergences,
        "collected": collected,
    }
    out.write_text(json.dumps(result, default=str))


def _divergences_in(e: BaseException) -> list[Divergence]:
    if isinstance(e, Divergence):
        return [e]
    group = getattr(e, "exceptions", None)  # an exception group: hypothesis found several
    if isinstance(group, (list, tuple)):
        return [d for x in group for d in _divergences_in(x)]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", type=int, default=20_000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=None, help="default: random")
    parser.add_argument(
        "--collect",
        action="store_true",
        help="do not stop to shrink: list every kind of divergence with its smallest program",
    )
    parser.add_argument("--exclude", default="", help="case names to leave out, comma-separated")
    parser.add_argument("--dump", default=None, help="append every divergent program to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    lang = Language(exclude=frozenset(filter(None, args.exclude.split(","))))
    seed_ = args.seed if args.seed is not None else random.randrange(2**31)
    if args.worker:
        _worker(args.programs, seed_, lang, args.collect, Path(args.out), args.dump)
        return 0
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="ppl_fuzz_"))
    procs = []
    for j in range(args.jobs):
        n = args.programs // args.jobs + (j < args.programs % args.jobs)
        cmd = [sys.executable, "-m", "tests.differential", "--worker", "--programs", str(n)]
        cmd += ["--seed", str(seed_ + j), "--out", str(tmp / f"{j}.json"), "--exclude"]
        cmd += [args.exclude] + (["--collect"] if args.collect else [])
        cmd += ["--dump", f"{args.dump}.{j}"] if args.dump else []
        procs.append(subprocess.Popen(cmd))
    failed = [p.wait() for p in procs]
    stats, checked, divergences, collected = Stats(), 0, [], {}
    for j in range(args.jobs):
        path = tmp / f"{j}.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        stats.merge(result["stats"])
        checked += result["checked"]
        divergences += result["divergences"]
        for kind, entry in result["collected"].items():
            mine = collected.setdefault(kind, {"count": 0, "message": entry["message"]})
            mine["count"] += entry["count"]
            if len(entry["message"]) < len(mine["message"]):
                mine["message"] = entry["message"]
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nseed {seed_}: {checked} programs checked in {time.time() - started:.0f} s")
    print(f"  refused at decoration (CompileError): {stats.refused}")
    print(f"  refused at their first run instead (CompileError): {stats.refused_late}")
    for why, n in stats.refusals.most_common():
        print(f"    {n:6d}  {why}")
    print(f"  particles compared: {stats.particles} ({dict(stats.outcomes)})")
    print(f"  forks: {stats.forks}; token steps: {stats.tokens}; plain runs: {stats.plain_runs}")
    for why, n in stats.fork_errors.most_common():
        print(f"  fork refused {n} times: {why}")
    for d in divergences:
        print(f"\n=== DIVERGENCE (shrunk) {d['kind']} ===\n{d['message']}")
    for kind, entry in sorted(collected.items()):
        print(f"\n=== divergence {kind}: {entry['count']} programs; the smallest ===")
        print(entry["message"])
    n_div = len(divergences) + len(collected)
    refused = stats.refused + stats.refused_late
    print(f"\n{checked} programs checked, {refused} refused, {n_div} kinds of divergence")
    return 1 if n_div or any(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
