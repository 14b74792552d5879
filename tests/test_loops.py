"""`for` loops run as CPython runs them, and fork with their particle (`ppl.loops`).

Each program is run under the engine with particles forked inside its loops (both the fork and
the original go on, with their own choices); every resulting particle must return what CPython
returns when the function runs directly with that particle's choices replayed.
"""

import itertools
from collections import OrderedDict

import pytest

import ppl
from ppl import distributions as dist
from ppl import program, sample
from ppl.handlers import replay, trace
from ppl.loops import LoopForkError
from ppl.models import FunctionLM
from tests.forked import assert_as_cpython, run_forked

lm = FunctionLM(["a", "b", "c"], lambda prefix: [0.5, 0.3, 0.2])


@program
def grow():
    xs, n = [0], 0
    for _x in xs:
        b = sample(dist.Bernoulli(0.5))
        n += 1
        if n < 4:
            xs.append(b)
    return n


def test_a_list_extended_inside_its_loop_is_iterated_to_its_new_end():
    assert grow() == 4
    assert ppl.importance(grow, particles=4, seed=0).values == [4, 4, 4, 4]


@program
def first_success():
    for i in itertools.count():
        if sample(dist.Bernoulli(0.5)):
            return i


def test_an_infinite_iterator_with_return_ends():
    post = ppl.importance(first_success, particles=8, seed=1)
    assert all(isinstance(v, int) and v >= 0 for v in post.values)


@program
def grow_dict():
    d = {1: 2, 3: 4}
    for k, v in d.items():
        sample(dist.Bernoulli(0.5))
        d[k + 10] = v
    return d


def test_a_dict_changed_in_size_during_its_loop_raises_as_in_python():
    with pytest.raises(RuntimeError, match="dictionary changed size during iteration"):
        grow_dict()
    with pytest.raises(RuntimeError, match="dictionary changed size during iteration"):
        ppl.importance(grow_dict, particles=2, seed=0)


def numbers(log):
    for i in range(3):
        log.append(("yield", i))
        yield i


@program
def interleaved():
    log = []
    for i in numbers(log):
        sample(dist.Bernoulli(0.5))
        log.append(("body", i))
    return log


def test_a_generator_runs_between_the_passes_of_its_loop():
    expected = [(k, i) for i in range(3) for k in ("yield", "body")]
    assert interleaved() == expected
    assert ppl.importance(interleaved, particles=2, seed=0).values == [expected, expected]


@program
def list_forks():
    ctx = lm.context("a")
    xs, seen = [0], []
    for x in xs:
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        seen.append((x, tok.id))
        if len(xs) < 4:
            xs.append(tok.id)
    return xs, seen


@program
def dict_forks():
    ctx = lm.context("a")
    d = {"x": 0, "y": 0, "z": 0}
    out = []
    for k, v in d.items():
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        out.append((k, v))
        d["z"] += tok.id  # a value changed during the loop is seen when it is reached
    for i, (k, v) in enumerate(reversed(d.items())):
        tok = sample(ctx.next_token())
        d["x"] += tok.id + i
        out.append((k, v))
    return d, out


@program
def set_forks():
    ctx = lm.context("a")
    out = []
    members = {3, 1, 2, 40}
    for m in members:
        tok = sample(ctx.next_token())
        out.append((m, tok.id))
    return out


@program
def odict_forks():
    ctx = lm.context("a")
    d = OrderedDict(a=1, b=2, c=3)
    out = []
    for v in d.values():
        tok = sample(ctx.next_token())
        d["c"] = tok.id * 10
        out.append(v)
    return out


@program
def count_forks():
    ctx = lm.context("a")
    for i in itertools.count(5, 2):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        if tok.id == 2 or i > 20:
            return i


@program
def zipped_forks(pairs):
    ctx = lm.context("a")
    out = []
    for (a, b), c in zip(pairs.items(), "xyz"):
        tok = sample(ctx.next_token())
        out.append((a, b, c, tok.id))
        pairs[a] = tok.id
    return out, pairs


@pytest.mark.parametrize(
    "prog, args",
    [
        (list_forks, ()),
        (dict_forks, ()),
        (set_forks, ()),
        (odict_forks, ()),
        (count_forks, ()),
        (zipped_forks, ({"p": 1, "q": 2, "r": 3, "s": 4},)),
    ],
)
def test_forked_loops_go_on_as_cpython_would(prog, args):
    outcomes = assert_as_cpython(prog, *args, seeds=[0])
    assert len(outcomes) > 1  # the forks took choices of their own


@program
def dict_forks_then_grows():
    ctx = lm.context("a")
    d = {"x": 0, "y": 0}
    for k in d:
        tok = sample(ctx.next_token())
        if tok.id == 0:
            d[k + "!"] = 1  # CPython raises at the next pass
    return d


def test_a_fork_keeps_the_changed_size_error_of_its_loop():
    for seed in range(6):
        particles = run_forked(dict_forks_then_grows, fork_at=(0,), seed=seed)
        for p in particles:
            recorded = p.to_trace()
            direct = trace(replay(dict_forks_then_grows, recorded))
            if p.error is None:
                assert direct() == p.value
            else:
                with pytest.raises(RuntimeError, match="dictionary changed size"):
                    direct()
                assert str(p.error) == "dictionary changed size during iteration"


def tokens_of(ctx, n):
    for _ in range(n):
        yield ctx


@program
def generator_forks():
    ctx = lm.context("a")
    total = 0
    for c in tokens_of(ctx, 3):
        tok = sample(c.next_token())
        total += tok.id
    return total


def test_forking_inside_a_generator_loop_names_the_loop():
    # without a fork the loop runs
    assert isinstance(ppl.importance(generator_forks, particles=2, seed=0).values[0], int)
    with pytest.raises(LoopForkError, match=r"test_loops\.py:\d+: .*generator"):
        run_forked(generator_forks, fork_at=(1,), errors="raise")


@pytest.mark.parametrize("taken", [0, 1, 3, 4])
def test_a_range_iterator_copies_at_its_position_on_every_python(taken):
    # 3.11 pickles a range iterator as (range, position); 3.12 on as (range left, None)
    from ppl.compiler.state import _copy_range_iterator

    it = iter(range(2, 14, 3))
    for _ in range(taken):
        next(it)
    copied = _copy_range_iterator(it)
    assert list(copied) == list(it)
