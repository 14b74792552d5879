"""Run a program under the engine with forks at its token choices, and hold each particle to
what CPython does with the same choices (the tests of loops and control flow share this)."""

import copy

from ppl.handlers import replay, trace
from ppl.inference.engine import Engine


def run_forked(prog, *args, fork_at=(0, 1, 2), seed=0, errors="drop"):
    """Run `prog` under the engine, forking every live particle at the given token steps (the
    fork and the original both go on and draw their own tokens)."""
    engine = Engine(prog, args, {}, seed, errors=errors)
    particles = engine.new_particles(1)
    step = 0
    while any(p.alive for p in particles):
        engine.advance(particles)
        if step in fork_at:
            particles += [p.fork() for p in particles if p.alive]
        engine.resolve(particles)
        step += 1
    return particles


def outcome(fn, *args):
    try:
        return ("value", fn(*args))
    except Exception as e:  # noqa: BLE001 - compared with what the engine recorded
        return ("error", type(e).__name__, str(e))


def assert_as_cpython(prog, *args, seeds=range(4), fork_at=(0, 1, 2)):
    """Each particle, forked or not, ends as CPython ends with the same choices: the same value
    (arguments are copied for each run: programs may change them), the same choices, the same
    exception at the same line of the program's file. Returns the outcomes seen."""
    outcomes = set()
    filename = prog.fn.__code__.co_filename
    for seed in seeds:
        for p in run_forked(prog, *args, seed=seed, fork_at=fork_at):
            recorded = p.to_trace()
            direct = trace(replay(prog, recorded))
            got = outcome(direct, *copy.deepcopy(args))
            if p.error is None:
                assert got == ("value", p.value)
            else:
                assert got == ("error", type(p.error).__name__, str(p.error))
                assert _line_in(p.error, filename) == _line_of_direct(direct, args, filename)
            assert list(direct.trace) == list(recorded)
            outcomes.add(repr(got))
    return outcomes


def _line_in(e, filename):
    """The innermost line of `filename` in the exception's traceback."""
    line, tb = None, e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _line_of_direct(direct, args, filename):
    try:
        direct(*copy.deepcopy(args))
    except Exception as e:  # noqa: BLE001
        return _line_in(e, filename)
    return None
