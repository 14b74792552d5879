"""The run state of `ppl.runtime` is per context: nested runs, threads, greenlets and asyncio
tasks each see their own, and whoever changes it restores what it found."""

from __future__ import annotations

import asyncio
import threading

import pytest
from greenlet import greenlet

import ppl
from ppl import factor, observe, program, sample
from ppl.distributions import Bernoulli, Categorical
from ppl.handlers import seed, trace
from ppl.runtime import _IN_COMPILED, _SCOPE, _STACK

DIGIT = Categorical(range(10))
PLAIN_SAMPLE = "sample\\(\\) was called from a plain function inside a program under inference"


@program
def coin():
    return sample(Bernoulli(0.5))


def nested_inference():
    """A plain helper that runs inference on another program."""
    return ppl.importance(coin, particles=4, seed=0).values


def plain_sampler():
    return sample(Bernoulli(0.5))


@program
def calls_plain_sampler(nested):
    if nested:
        nested_inference()
    return plain_sampler()


@pytest.mark.parametrize("method", [ppl.importance, ppl.smc])
def test_a_nested_inference_call_leaves_the_compiled_flag_set(method):
    with pytest.raises(RuntimeError, match=PLAIN_SAMPLE) as alone:
        method(calls_plain_sampler, False, particles=2, seed=0)
    with pytest.raises(RuntimeError, match=PLAIN_SAMPLE) as nested:
        method(calls_plain_sampler, True, particles=2, seed=0)
    assert str(nested.value) == str(alone.value)
    assert _IN_COMPILED.get() is False


# what a run calls at each pass of its loop, by key (program arguments are copied)
SYNC: dict = {}


def sync_point(key):
    if key is not None:
        SYNC[key]()


@program
def digits(n, nested, sync=None):
    xs = []
    for _ in range(n):
        xs.append(sample(DIGIT))
        if nested:
            nested_inference()
        sync_point(sync)
        observe(Bernoulli(0.9 if xs[-1] % 2 else 0.2), True)
    factor(-0.1 * sum(xs))
    return xs, sample("last", Bernoulli(0.3))


def choices(tr):
    return [(c.address, c.value, c.log_prob) for c in tr], tr.log_likelihood


def test_a_nested_inference_call_in_a_direct_run_keeps_its_handlers_and_scopes():
    alone = trace(seed(digits, 3)).get_trace(4, False)
    nested = trace(seed(digits, 3)).get_trace(4, True)
    assert choices(nested) == choices(alone)
    assert len(alone) == 5 and alone.addresses()[-1] == "last"
    assert _STACK.get() == () and _SCOPE.get() is None


# -- threads, greenlets, asyncio tasks ----------------------------------------------------------

N = 12


def direct(s, sync=None):
    return choices(trace(seed(digits, s)).get_trace(N, False, sync))


def inferred(s, sync=None):
    post = ppl.importance(digits, N, False, sync, particles=1, seed=s)
    return post.values[0], [(c.address, c.value) for c in post.traces[0]]


@pytest.mark.parametrize(
    "runs",
    [(direct, direct), (direct, inferred), (inferred, inferred)],
    ids=["direct+direct", "direct+inference", "inference+inference"],
)
def test_two_threads_at_once_give_what_each_gives_alone(runs):
    seeds = (1, 2)
    expected = [run(s) for run, s in zip(runs, seeds)]
    # the threads run in lockstep: each waits for the other at every loop pass, inside the
    # program, so each run's handlers, scopes and compiled flag are live while the other runs
    barrier = threading.Barrier(2, timeout=30)
    got: list = [None, None]

    SYNC["threads"] = barrier.wait

    def worker(i):
        try:
            got[i] = runs[i](seeds[i], "threads")
        except BaseException as e:
            got[i] = e
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for g in got:
        if isinstance(g, BaseException):
            raise g
    assert got == expected


def runs_switch_to(runs, i):
    def switch():
        if not runs[i].dead:
            runs[i].switch()

    return switch


def test_greenlets_switching_mid_run_keep_their_own_state():
    expected = [direct(s) for s in (5, 6)]
    runs: list[greenlet] = []
    got: list = [None, None]

    for i in range(2):
        SYNC[f"greenlet{i}"] = runs_switch_to(runs, 1 - i)  # to the other, mid-run

    def body(i):
        got[i] = direct(5 + i, f"greenlet{i}")

    runs.extend(greenlet(lambda i=i: body(i)) for i in range(2))
    for r in runs:  # a run that ends returns here; the other then goes on to its end
        if not r.dead:
            r.switch()
    assert all(r.dead for r in runs)
    assert got == expected
    assert _STACK.get() == ()


def test_asyncio_tasks_do_not_see_each_others_handlers():
    expected = direct(7)

    async def holds_a_handler(entered, done):
        with trace() as tr:  # on this task's stack while the other task runs
            entered.set()
            await done.wait()
        return len(tr.trace)

    async def runs_a_program(entered, done):
        await entered.wait()
        result = direct(7)
        done.set()
        return result

    async def main():
        entered, done = asyncio.Event(), asyncio.Event()
        return await asyncio.gather(holds_a_handler(entered, done), runs_a_program(entered, done))

    recorded, result = asyncio.run(main())
    assert recorded == 0 and result == expected
