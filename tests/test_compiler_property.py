"""Property: a generated program run compiled and run directly under the same seed makes the
same choices (address, value, log probability, statement), the same score and the same return
value. Programs mix loops, branches, break/continue, named and unnamed choices, NumPyro and
Python distributions, observations, factors and sub-program calls."""

import atexit
import itertools
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ppl
from ppl.handlers import seed, trace

DISTS = [
    "Categorical([0, 1, 2])",
    "Bernoulli(0.3)",
    "Geometric(0.5)",
    "nd.Normal(0.0, 1.0)",
    "nd.Poisson(2.0)",
]
HEADER = """\
import numpyro.distributions as nd
from ppl import condition, factor, observe, program, sample
from ppl.distributions import Bernoulli, Categorical, Geometric


@program
def helper(v):
    w = sample(Categorical([1, 2]))
    observe(Bernoulli(0.6), w == 1)
    return v + w


"""
_DIR = Path(tempfile.mkdtemp(prefix="ppl_generated_"))  # the compiler reads source files
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)
_COUNT = itertools.count()


@st.composite
def statements(draw, depth, in_loop, names):
    """Lines (without indentation) of a block, as (indent, text) pairs."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        kinds = ["sample", "named", "arith", "observe", "factor", "call"]
        if depth < 2:
            kinds += ["if", "for", "while"]
        if in_loop:
            kinds += ["break", "continue"]
        kind = draw(st.sampled_from(kinds))
        d = draw(st.sampled_from(DISTS))
        if kind == "sample":
            out.append((0, f"acc = acc + sample({d})"))
        elif kind == "named":
            name = f"n{len(names)}"
            names.append(name)
            # a named choice inside a loop carries the iteration count in its name
            out.append((0, f'acc = acc + sample(f"{name}_{{steps}}", {d})'))
        elif kind == "arith":
            out.append((0, f"acc = acc * {draw(st.integers(-2, 3))} + steps"))
        elif kind == "observe":
            out.append((0, "observe(Bernoulli(0.7), acc % 2 < 1)"))
        elif kind == "factor":
            out.append((0, "factor(-0.1 * abs(acc) % 1)"))
        elif kind == "call":
            out.append((0, "acc = helper(acc) - sample(Bernoulli(0.5))"))
        elif kind == "break":
            out.append((0, "if acc > 3:"))
            out.append((1, "break"))
        elif kind == "continue":
            out.append((0, "if acc % 2 < 1:"))
            out.append((1, "continue"))
        elif kind == "if":
            out.append((0, f"if sample({d}) % 2 < 1:"))
            out += [(i + 1, t) for i, t in draw(statements(depth + 1, in_loop, names))]
            out.append((0, "else:"))
            out += [(i + 1, t) for i, t in draw(statements(depth + 1, in_loop, names))]
        elif kind == "for":
            out.append((0, f"for _ in range({draw(st.integers(0, 3))}):"))
            out.append((1, "steps += 1"))
            out += [(i + 1, t) for i, t in draw(statements(depth + 1, True, names))]
        else:
            k = f"k{depth}"  # one counter per nesting depth: an inner loop never resets it
            out.append((0, f"{k} = 0"))
            out.append((0, f"while {k} < {draw(st.integers(0, 3))}:"))
            out.append((1, f"{k} += 1"))
            out.append((1, "steps += 1"))
            out += [(i + 1, t) for i, t in draw(statements(depth + 1, True, names))]
    return out


@st.composite
def programs(draw):
    body = draw(statements(0, False, []))
    lines = ["@program", "def generated(start):", "    acc = start", "    steps = 0"]
    lines += ["    " * (i + 1) + text for i, text in body]
    lines.append("    return acc, steps")
    return HEADER + "\n".join(lines) + "\n"


def load(source):
    path = _DIR / f"generated_{next(_COUNT)}.py"
    path.write_text(source)
    namespace = {"__name__": path.stem}
    exec(compile(source, str(path), "exec"), namespace)
    return namespace["generated"]


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(source=programs(), run_seed=st.integers(0, 2**16), start=st.integers(-2, 2))
def test_compiled_and_direct_runs_agree(source, run_seed, start):
    prog = load(source)
    post = ppl.importance(prog, start, particles=1, seed=run_seed)
    direct = trace(seed(prog, run_seed))
    value = direct(start)
    assert post.values[0] == value, source
    assert list(post.traces[0]) == list(direct.trace), source
    assert post.traces[0].log_likelihood == direct.trace.log_likelihood, source
