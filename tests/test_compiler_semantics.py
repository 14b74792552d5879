"""Regression tests: each is one divergence between a compiled program and CPython.

Every test was found by the differential check (`tests/differential.py`) and shrunk by hand to
the smallest program that shows it. Each asserts what CPython does: the program run directly
(`prog(...)`, plain Python under the handler stack) and the program run compiled under inference
(`ppl.importance`) must both do it. Choices are made from one-value distributions, so both runs
make the same choices without replaying them.
"""

import contextlib
import copy
import itertools
import re

import pytest

import ppl
from ppl import condition, program, sample
from ppl.distributions import Bernoulli, Categorical
from ppl.inference.engine import Engine
from ppl.models import FunctionLM


def compiled(prog, *args, particles=2):
    """The return values of `particles` compiled runs of `prog(*args)`."""
    return ppl.importance(prog, *args, particles=particles, seed=0).values


def direct(prog, *args):
    return prog(*copy.deepcopy(args))


def addresses(prog, *args):
    """The addresses and values of the choices of a direct run and of a compiled run."""
    t = ppl.handlers.trace(prog)
    t(*copy.deepcopy(args))
    mine = ppl.importance(prog, *args, particles=1, seed=0).traces[0]
    return [(c.address, c.value) for c in t.trace], [(c.address, c.value) for c in mine]


def raised(fn, *args):
    """(type, message) of what `fn(*args)` raises."""
    with pytest.raises(Exception) as info:
        fn(*args)
    return type(info.value), str(info.value)


def bump(log, v):
    """A plain helper with a side effect: it records `v` and returns it."""
    log.append(v)
    return v


# -- for loops: CPython iterates lazily ---------------------------------------------------------


@program
def grow():
    xs, n = [0], 0
    for x in xs:  # the body appends to the list it loops over
        sample(Bernoulli(0.5))
        n += 1
        if n < 4:
            xs.append(x + 1)
    return n, xs


def test_for_sees_items_appended_to_its_list_in_the_body():
    assert direct(grow) == (4, [0, 1, 2, 3])
    assert compiled(grow) == [(4, [0, 1, 2, 3])] * 2


@program
def shrink():
    xs, seen = [1, 2, 3, 4], []
    for x in xs:  # the body removes the list's last item
        seen.append(sample(Categorical([x])))
        xs.pop()
    return seen


def test_for_stops_early_when_its_list_is_shortened_in_the_body():
    assert direct(shrink) == [1, 2]
    assert compiled(shrink) == [[1, 2]] * 2


@program
def grow_dict():
    d = {0: 0}
    for k, v in d.items():  # the body adds a key
        d[k + 1] = sample(Categorical([v]))
    return d


def test_for_over_a_dict_changed_in_size_raises_runtime_error():
    expected = (RuntimeError, "dictionary changed size during iteration")
    assert raised(direct, grow_dict) == expected
    assert raised(compiled, grow_dict) == expected


@program
def first_heads():
    for i in itertools.count():
        if sample(Categorical([i >= 2])):
            return i
    return -1


@contextlib.contextmanager
def memory_cap(extra=1 << 30):
    """Fail allocations past the process's current size plus `extra` bytes (Linux), so that a
    compiled loop that copies an infinite iterator raises MemoryError instead of filling the
    machine."""
    resource = pytest.importorskip("resource")
    with open("/proc/self/status") as f:
        size = int(re.search(r"VmSize:\s+(\d+) kB", f.read()).group(1)) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = size + extra if hard == resource.RLIM_INFINITY else min(size + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_for_over_itertools_count_ends_at_return():
    assert direct(first_heads) == 2
    with memory_cap():
        assert compiled(first_heads) == [2, 2]


def numbers(log):
    for i in range(3):
        log.append(f"yield {i}")
        yield i


@program
def interleaved():
    log = []
    for i in numbers(log):  # the generator's side effects come between the passes
        log.append(f"body {sample(Categorical([i]))}")
    return log


def test_for_runs_a_generator_between_the_passes_of_its_body():
    expected = ["yield 0", "body 0", "yield 1", "body 1", "yield 2", "body 2"]
    assert direct(interleaved) == expected
    assert compiled(interleaved) == [expected] * 2


# -- calls to other programs: arguments are passed by reference ------------------------------


@program
def append_one(xs):
    xs.append(sample(Categorical([1])))
    return xs


@program
def caller_sees_mutation():
    xs = []
    ys = append_one(xs)
    return xs, ys is xs


def test_a_called_program_mutates_the_callers_list():
    # CPython passes the caller's list itself: the callee's append is seen by the caller
    assert direct(caller_sees_mutation) == ([1], True)
    assert compiled(caller_sees_mutation) == [([1], True)] * 2


# -- evaluation order and short-circuits --------------------------------------------------------


@program
def chained(a):
    return 0 > a > sample(Categorical([3]))


def test_a_chained_comparison_stops_at_its_first_false_link():
    # `0 > 5` is False: CPython never evaluates the sample
    direct_choices, compiled_choices = addresses(chained, 5)
    assert direct_choices == []
    assert compiled_choices == []
    assert compiled(chained, 5) == [False, False]


@program
def checked(a):
    assert a, sample(Categorical(["message"]))
    return a


def test_an_assert_message_is_evaluated_only_when_the_assertion_fails():
    direct_choices, compiled_choices = addresses(checked, 1)
    assert direct_choices == []
    assert compiled_choices == []


@program
def assert_order():
    log = []
    assert bump(log, "test"), bump(log, "message") + sample(Categorical([""]))
    return log


def test_an_assert_evaluates_its_test_before_its_message():
    assert direct(assert_order) == ["test"]
    assert compiled(assert_order) == [["test"]] * 2


@program
def dict_display():
    log = []
    d = {bump(log, "k1"): bump(log, "v1"), bump(log, "k2"): sample(Categorical(["v2"]))}
    return log, d


def test_a_dict_display_evaluates_each_key_then_its_value():
    expected = (["k1", "v1", "k2"], {"k1": "v1", "k2": "v2"})
    assert direct(dict_display) == expected
    assert compiled(dict_display) == [expected] * 2


@program
def dict_display_choices():
    return {sample(Categorical([1])): sample(Categorical([2])), sample(Categorical([3])): 4}


def test_a_dict_display_makes_its_choices_in_source_order():
    direct_choices, compiled_choices = addresses(dict_display_choices)
    line = dict_display_choices.fn.__code__.co_firstlineno + 2
    expected = [(f"dict_display_choices:{line}#{k}", v) for k, v in enumerate([1, 2, 3])]
    assert direct_choices == expected
    assert compiled_choices == expected


@program
def augmented_item():
    xs = [10]
    xs[-1] += bump(xs, 1) + sample(Categorical([1]))
    return xs


def test_an_augmented_assignment_reads_its_target_before_the_value():
    # CPython loads xs[-1] (10) first, then appends 1, then stores 10 + 2 into the new last item
    assert direct(augmented_item) == [10, 12]
    assert compiled(augmented_item) == [[10, 12]] * 2


# -- names ---------------------------------------------------------------------------------------


@program
def maybe_bound(flag):
    if sample(Categorical([flag])):
        y = 1
    return y  # noqa: F821 -- unbound when the sample is False: that is the test


def test_reading_an_unbound_local_raises_unbound_local_error():
    expected = (
        UnboundLocalError,
        "cannot access local variable 'y' where it is not associated with a value",
    )
    assert raised(direct, maybe_bound, False) == expected
    assert raised(compiled, maybe_bound, False) == expected


@program
def deleted():
    y = sample(Categorical([1]))
    del y
    condition(True)
    return y  # noqa: F821 -- deleted above: that is the test


def test_reading_a_deleted_local_raises_unbound_local_error():
    expected = (
        UnboundLocalError,
        "cannot access local variable 'y' where it is not associated with a value",
    )
    assert raised(direct, deleted) == expected
    assert raised(compiled, deleted) == expected


@program
def augmented_empty():
    xs = []
    xs[-1] += sample(Categorical([1]))
    return xs


def test_an_augmented_assignment_fails_on_its_target_before_making_the_value_choice():
    # CPython loads xs[-1] first: IndexError, and no choice is made
    t = ppl.handlers.trace(augmented_empty)
    assert raised(t) == (IndexError, "list index out of range")
    assert list(t.trace) == []
    engine = Engine(augmented_empty, (), {}, seed=0)
    (particle,) = engine.new_particles(1)
    with pytest.raises(IndexError):
        engine.advance([particle])
    assert particle.to_trace().addresses() == []


# -- forks: value semantics ----------------------------------------------------------------------

_LM = FunctionLM(["a", "b", "c"], lambda prefix: [1.0, 1.0, 1.0])


@program
def append_token():
    xs = []
    ctx = _LM.context("a")
    xs.append(sample(ctx.next_token()).id)  # `xs.append` is looked up before the choice
    return xs


def test_a_fork_made_in_a_method_call_appends_to_its_own_list():
    engine = Engine(append_token, (), {}, seed=0)
    (original,) = engine.new_particles(1)
    engine.advance([original])  # suspended at the token choice, inside `xs.append(...)`
    forks = [original.fork() for _ in range(3)]
    engine.resolve([original, *forks])
    engine.advance([original, *forks])
    for p in (original, *forks):
        (choice,) = p.to_trace()
        assert p.value == [choice.value.id]


# -- lambdas -------------------------------------------------------------------------------------


def _inline_lambda():
    ctx = _LM.context("a")
    return (lambda q: sample(ctx.next_token()).id + q)(sample(Categorical([10])))


def test_a_lambda_that_samples_runs_when_called_where_it_is_made():
    prog = program(_inline_lambda)  # decorated here: a refusal fails this test only
    assert direct(prog) in (10, 11, 12)
    values = compiled(prog, particles=3)
    assert all(v in (10, 11, 12) for v in values)


def _walrus_in_lambda():
    a = 1
    return (lambda q: (a := a + q))(sample(Categorical([1])))  # noqa: F841


def _walrus_in_lambda_keeps_outer():
    a = 1
    b = (lambda q: (a := q))(sample(Categorical([5])))  # noqa: F841 -- binds the lambda's own `a`
    return a, b


def test_a_walrus_in_a_lambda_binds_a_name_of_the_lambda():
    prog = program(_walrus_in_lambda)
    expected = (
        UnboundLocalError,
        "cannot access local variable 'a' where it is not associated with a value",
    )
    assert raised(direct, prog) == expected
    assert raised(compiled, prog) == expected


def test_a_walrus_in_a_lambda_leaves_the_programs_variable_alone():
    prog = program(_walrus_in_lambda_keeps_outer)
    assert direct(prog) == (1, 5)
    assert compiled(prog) == [(1, 5)] * 2


# -- found by `make fuzz` (20,000 programs) ------------------------------------------------------


@program
def chained_after_a_call():
    log = []
    return bump(log, sample(Categorical([0]))) < len(log) <= sample(Categorical([2])), log


def test_a_chained_comparison_evaluates_each_operand_after_the_one_before():
    # `bump` appends to log before `len(log)` is read: 0 < 1 holds, so the last link is reached
    assert direct(chained_after_a_call) == (True, [0])
    assert compiled(chained_after_a_call) == [(True, [0])] * 2


@program
def augmented_name_with_walrus():
    a = 1
    a ^= (a := 0) or sample(Categorical([0]))
    return a


def test_an_augmented_assignment_reads_its_variable_before_the_value():
    # Python reads a (1) first, then the walrus sets it to 0: a = 1 ^ 0
    assert direct(augmented_name_with_walrus) == 1
    assert compiled(augmented_name_with_walrus) == [1, 1]
