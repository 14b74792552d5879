"""`try`/`except`/`else`/`finally` and `with` holding choices run as CPython runs them.

Every program here is run under the engine with particles forked at its token choices (both
the fork and the original go on); each particle must return, and raise, what CPython does
when the function runs directly with that particle's choices replayed.
"""

import pytest

import ppl
from ppl import distributions as dist
from ppl import factor, observe, program, sample
from ppl.models import FunctionLM
from tests.forked import assert_as_cpython

lm = FunctionLM(["a", "b", "c"], lambda prefix: [0.5, 0.3, 0.2])


class Manager:
    def __init__(self, log, swallow=()):
        self.log = log
        self.swallow = swallow

    def __enter__(self):
        self.log.append("enter")
        return len(self.log)

    def __exit__(self, kind, value, tb):
        self.log.append(("exit", kind.__name__ if kind else None))
        return kind is not None and issubclass(kind, self.swallow)


@program
def handlers():
    ctx = lm.context("a")
    log = []
    for i in range(4):
        try:
            tok = sample(ctx.next_token())
            ctx = ctx + tok
            if tok.id == 1:
                raise ValueError(f"one at {i}")
            if tok.id == 2:
                log.append({}["missing"])
            log.append(("ok", i))
        except ValueError as err:
            log.append(("caught", str(err)))
            extra = sample(ctx.next_token())
            if extra.id == 2:
                break
            continue
        except KeyError:
            log.append("key")
        else:
            log.append("else")
        finally:
            log.append(("finally", i))
    return log


@program
def finally_on_return():
    ctx = lm.context("a")
    log = []
    try:
        for i in range(3):
            try:
                tok = sample(ctx.next_token())
                if tok.id == 0:
                    return log, "early"
            finally:
                log.append(("inner", i))
    finally:
        log.append("outer")
    return log, "end"


@program
def managers():
    ctx = lm.context("a")
    log = []
    with Manager(log, swallow=(ZeroDivisionError,)) as first:
        tok = sample(ctx.next_token())
        log.append(first)
        if tok.id == 0:
            log.append(1 / 0)  # swallowed by __exit__
        with Manager(log) as second:
            tok = sample(ctx.next_token())
            log.append(second)
            if tok.id == 1:
                return log
    log.append("after")
    tok = sample(ctx.next_token())
    with Manager(log):
        if tok.id == 2:
            raise RuntimeError("not swallowed")
    return log


@program
def reraised():
    ctx = lm.context("a")
    try:
        tok = sample(ctx.next_token())
        if tok.id != 0:
            raise KeyError(tok.id)
    except KeyError:
        sample(ctx.next_token())
        raise
    return "fine"


@program
def raising_helper(n):
    tok = sample(lm.context("b").next_token())
    if tok.id + n > 1:
        raise IndexError(f"too far: {tok.id + n}")
    return tok.id


@program
def caller_catches():
    out = []
    for n in range(3):
        try:
            out.append(raising_helper(n))
        except IndexError as err:
            out.append(str(err))
            observe(dist.Bernoulli(0.5), True)
    return out


@pytest.mark.parametrize("prog", [handlers, finally_on_return, managers, reraised, caller_catches])
def test_try_and_with_run_as_cpython(prog):
    outcomes = assert_as_cpython(prog)
    assert len(outcomes) > 1  # the particles went different ways


@program
def site_error_caught():
    try:
        factor("not a number")  # ppl's own error, raised at the site
    except TypeError:
        return "caught"
    return "not caught"


def test_an_error_raised_by_a_primitive_is_caught_by_the_programs_try():
    assert site_error_caught() == "caught"
    assert ppl.importance(site_error_caught, particles=1, seed=0).values == ["caught"]


@program
def unbound():
    if sample(dist.Bernoulli(0.0)):
        y = 1
    return y


def test_reading_an_unassigned_local_is_pythons_error():
    with pytest.raises(UnboundLocalError, match="'y'"):
        unbound()
    with pytest.raises(UnboundLocalError, match="cannot access local variable 'y'"):
        ppl.importance(unbound, particles=1, seed=0)


@program
def token_plus(n):
    tok = sample(lm.context("b").next_token())
    return tok.id + n


@program
def appends_calls():
    out = []
    for n in range(3):
        out.append(token_plus(n))  # `out.append` is evaluated before the call suspends
    return out


def test_a_method_held_across_a_fork_acts_on_the_forks_own_object():
    assert_as_cpython(appends_calls)


@program
def fills(xs, n):
    for _ in range(n):
        xs.append(sample(lm.context("c").next_token()).id)
    return len(xs)


@program
def shares_its_list():
    xs = []
    a = fills(xs, 2)
    b = fills(xs, 1)
    return a, b, xs


def test_a_program_called_by_a_program_changes_the_callers_objects():
    values = assert_as_cpython(shares_its_list)
    assert all("3, [" in v for v in values)


@program
def lambda_across_a_fork():
    ctx = lm.context("a")
    scale = 10
    later = lambda k: k * scale + tok.id  # noqa: E731 - reads the program's variables late
    tok = sample(ctx.next_token())
    scale = sample(ctx.next_token()).id + 1
    return later(2)


def test_a_lambda_reads_the_variables_of_its_own_particle():
    assert len(assert_as_cpython(lambda_across_a_fork)) > 1


class Box:
    def __init__(self):
        self.total = 0


@program
def bump(xs, i):
    xs[i] += 100  # the caller loaded xs[i] before this call: its store overwrites this
    return sample(lm.context("a").next_token()).id


@program
def targets():
    ctx = lm.context("a")
    d, xs, box = {}, [0, 0, 0], Box()
    d[sample(ctx.next_token()).id] = "first"
    xs[sample(ctx.next_token()).id] += sample(ctx.next_token()).id + 1
    xs[0] += bump(xs, 0)
    box.total += sample(ctx.next_token()).id
    (a, *rest), d[sample(ctx.next_token()).id] = [1, 2, 3], "second"
    xs[1:2] = [sample(ctx.next_token()).id] * 2
    return d, xs, box.total, a, rest


def test_choices_inside_assignment_targets_run_in_pythons_order():
    assert len(assert_as_cpython(targets)) > 1


@program
def comprehensions(n):
    ctx = lm.context("a")
    x = "outer"
    ids = [sample(ctx.next_token()).id for x in range(n)]
    pairs = {sample(ctx.next_token()).id: x for x in "pq" if x != "z"}
    evens = {t for t in ids if sample(dist.Bernoulli(0.5))}
    nested = [[y * sample(ctx.next_token()).id for y in range(k)] for k in range(3) if k]
    return x, ids, pairs, evens, nested


@program
def consumers():
    ctx = lm.context("a")
    total = sum(sample(ctx.next_token()).id for _ in range(3))
    # any stops at the first token with id 2: no later choice is made
    seen = any(sample(ctx.next_token()).id == 2 for _ in range(4))
    every = all(sample(ctx.next_token()).id != 0 for _ in range(3))
    top = max((sample(ctx.next_token()).id for _ in range(2)), default=-1)
    order = sorted((sample(ctx.next_token()).id for _ in range(3)), reverse=True)
    return total, seen, every, top, order


@pytest.mark.parametrize("prog, args", [(comprehensions, (3,)), (consumers, ())])
def test_comprehensions_and_generator_consumers_run_as_cpython(prog, args):
    assert len(assert_as_cpython(prog, *args)) > 1


@program
def walrus_and_match():
    ctx = lm.context("a")
    out = []
    while (tok := sample(ctx.next_token())).id != 2 and len(out) < 4:
        ctx = ctx + tok
        out.append(tok.id)
    if any((last := sample(ctx.next_token()).id) == 1 for _ in range(2)):
        out.append(("last", last))
    match out:
        case [first, *rest] if first == 0:
            out.append(("first", first, len(rest), sample(ctx.next_token()).id))
        case [first, *rest]:
            out.append(("other", first))
        case []:
            out.append(("empty", sample(ctx.next_token()).id))
    match {"k": tok.id}:  # no choice inside: kept as plain Python
        case {"k": 2, **others}:
            out.append(("two", others))
        case _:
            pass
    return out


def test_walrus_and_match_run_as_cpython():
    assert len(assert_as_cpython(walrus_and_match)) > 1


@program
def nested_functions(n):
    ctx = lm.context("a")
    calls = 0
    offset = 10

    def step(k, scale=2):
        nonlocal calls
        calls += 1
        tok = sample(ctx.next_token())
        return tok.id * scale + k + offset

    def twice(k):  # makes choices through `step`
        return step(k) + step(k, scale=1)

    def plain(v):  # no choice: an ordinary closure
        return v - offset

    pick = lambda: sample(dist.Bernoulli(0.5))  # noqa: E731 - a lambda that makes a choice
    out = [step(i) for i in range(n)]
    offset = 100  # read late, as a closure does
    out.append(twice(1))
    out.append(plain(5))
    out.append(pick())
    return out, calls


def test_nested_functions_and_lambdas_make_choices_as_cpython():
    assert len(assert_as_cpython(nested_functions, 2)) > 1


def _names(ids):
    for i in ids:  # a plain generator, zipped beside one that makes choices
        yield f"n{i}"


@program
def zipped(names):
    ctx = lm.context("a")
    out = []
    # the generator's choices come between the loop's passes, as zip pulls them
    for i, t in enumerate((sample(ctx.next_token()).id for _ in range(3)), start=10):
        out.append((i, t))
        if t == 2:
            continue
        out.append("after")
    # zip pulls the list first: once it ends, the generator makes no more choices
    for k, t in zip(names[:2], (sample(ctx.next_token()).id for _ in range(5))):
        out.append((k, t))
    # the generator first: it is pulled once more than the list is long
    for t, k in zip((sample(ctx.next_token()).id for _ in range(5)), "ab"):
        out.append((t, k))
    # two generators, interleaved; nested clauses and a choice in a condition
    for p, q in zip(
        (
            (j, sample(ctx.next_token()).id)
            for j in range(3)
            for m in range(j)
            if sample(dist.Bernoulli(0.7))
        ),
        (sample(ctx.next_token()).id * 2 for _ in range(4)),
    ):
        out.append((p, q))
        if q == 4:
            break
    else:
        out.append("exhausted")
    seen = []
    # the body changes what the generator iterates over, and it sees the change
    for t in (sample(ctx.next_token()).id + x for x in seen or [0]):
        if len(seen) < 2:
            seen.append(t)
    out.append(seen)
    out.append(dict(zip(names, (sample(ctx.next_token()).id for n in names))))
    out.append(list(enumerate(sample(ctx.next_token()).id for _ in range(2))))
    out.append([a + b for a, b in zip(range(2), (sample(ctx.next_token()).id for _ in "xyz"))])
    return out


@program
def zipped_plain_generator():
    ctx = lm.context("a")
    return [(n, t) for n, t in zip(_names(range(3)), (sample(ctx.next_token()).id for _ in "ab"))]


def test_zip_and_enumerate_of_generators_that_make_choices_run_as_cpython():
    assert len(assert_as_cpython(zipped, ["x", "y", "z"])) > 1


def test_a_fork_inside_zip_over_a_plain_generator_names_the_loop():
    from ppl.loops import LoopForkError
    from tests.forked import run_forked

    # run without forks, it is Python's answer; forked there, the engine says where and why
    assert len(assert_as_cpython(zipped_plain_generator, fork_at=())) > 1
    with pytest.raises(LoopForkError, match=r"test_control_flow\.py:\d+: .*generator"):
        run_forked(zipped_plain_generator, fork_at=(0,), errors="raise")
