"""The compiler: every supported construct runs the same compiled and direct; the rest is a
clear compile error; tracebacks point at the user's line; forks never share state."""

import math
import pickle
import traceback

import pytest

import ppl
from ppl import condition, factor, observe, program, sample
from ppl.distributions import Bernoulli, Categorical
from ppl.inference.engine import Engine
from ppl.models import FunctionLM

ONE = Categorical([1])  # a choice that always gives 1: a suspension point with a known value
lm = FunctionLM(["a", "b", "<eos>"], lambda prefix: [0.5, 0.3, 0.2], eos="<eos>")


def compiled(prog, *args, **kwargs):
    """The return value of one compiled execution."""
    post = ppl.importance(prog, *args, particles=1, seed=0, **kwargs)
    assert post.failure is None
    return post.values[0]


def both(prog, *args, **kwargs):
    """Compiled and direct runs agree; returns the value."""
    value = compiled(prog, *args, **kwargs)
    assert value == prog(*args, **kwargs)
    return value


# -- constructs ----------------------------------------------------------------------------------


@program
def assignments(a, b=2):
    x = sample(ONE)
    y, (z, w) = x + a, (sample(ONE) * 10, b)
    first, *rest = [x, y, z]
    x += sample(ONE)
    x *= 3
    total: int = x + y + z + w
    d = {"k": sample(ONE)}
    d["k"] += 5
    return total, first, rest, d


def test_assignments_unpacking_and_augmented():
    assert both(assignments, 4) == (6 + 5 + 10 + 2, 1, [5, 10], {"k": 6})


@program
def branches(n):
    out = []
    for i in range(n):
        v = sample(ONE) + i
        if v % 3 == 0:
            out.append("fizz")
        elif v % 3 == 1:
            out.append(sample(ONE) * 100 + v)
        else:
            if sample(ONE) == 1:
                out.append("two")
    return out


def test_if_elif_else():
    assert both(branches, 5) == [101, "two", "fizz", 104, "two"]


@program
def loops(xs):
    total = 0
    for x in xs:  # a list
        total += x * sample(ONE)
    for k, v in sorted({"a": 1, "b": 2}.items()):  # tuple targets over a sequence  # noqa: B007
        total += v * sample(ONE)
    i = 0
    while i < 10:
        i += sample(ONE)
        if i == 2:
            continue
        if i == 7:
            break
        total += 100
    else:
        total = -1  # not reached: the loop breaks
    for j in range(3):  # noqa: B007
        sample(ONE)
    else:
        total += 1000  # reached: no break
    return total, i, k, j


def test_for_while_break_continue_else():
    assert both(loops, [1, 2, 3]) == (6 + 3 + 500 + 1000, 7, "b", 2)


@program
def early_return(n):
    for i in range(n):
        x = sample(ONE)
        while True:
            if i == 2:
                return i * 10 + x
            break
    return -1


def test_return_from_inside_loops():
    assert both(early_return, 5) == 21
    assert both(early_return, 2) == -1


@program
def expressions(n):
    # sites nested in expressions: evaluated in Python's order, short-circuits respected
    a = [n, sample(ONE) + n, n * sample(ONE)]
    b = (n > 100) and sample(Categorical(["never"]))
    c = (n > 100) or sample(ONE) + 1
    d = "yes" if sample(ONE) == 1 else sample(Categorical(["no"]))
    e = f"{sample(ONE)}-{n}"
    f = max(sample(ONE), n, key=lambda v: -v)
    g = [len(w) for w in ["ab", "c"]] + [sample(ONE)]
    return a, b, c, d, e, f, g


def test_sites_inside_expressions():
    assert both(expressions, 3) == ([3, 4, 3], False, 2, "yes", "1-3", 1, [2, 1, 1])


def helper_plain(x):
    return x * 2


@program
def inner(x):
    y = sample(ONE)
    factor(-1.0)
    return helper_plain(x) + y


@program
def outer(x):
    a = inner(x)
    b = inner(a) + inner(1)
    return a, b


def test_calls_to_functions_and_programs():
    assert both(outer, 5) == (11, 23 + 3)
    post = ppl.importance(outer, 5, particles=1, seed=0)
    assert post.log_weights[0] == pytest.approx(-3.0)  # factors from all three sub-calls


@program
def countdown(n):
    if n == 0:
        return []
    x = sample(ONE)
    return [n * x] + countdown(n - 1)


def test_recursion():
    assert both(countdown, 4) == [4, 3, 2, 1]


@program
def apply_twice(f, x):
    return f(f(x))


@program
def add_one(x):
    return x + sample(ONE)


def test_programs_and_functions_passed_as_arguments():
    assert both(apply_twice, add_one, 1) == 3
    assert both(apply_twice, helper_plain, 1) == 4


def test_closure_and_nested_program():
    offset = 100

    @program
    def local_recursive(n):
        if n == 0:
            return offset
        return sample(ONE) + local_recursive(n - 1)

    assert both(local_recursive, 3) == 103


@program
def with_try_and_with(s):
    x = sample(ONE)
    try:  # no site inside: kept as plain Python
        n = int(s)
    except ValueError as err:
        n = len(str(err)) * 0 - x
    return n


def test_plain_try_is_allowed():
    assert both(with_try_and_with, "12") == 12
    assert both(with_try_and_with, "x") == -1


# -- errors --------------------------------------------------------------------------------------


def _line_of(fn, text):
    import inspect

    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, line in enumerate(lines) if text in line)


@pytest.mark.parametrize(
    "source, construct",
    [
        (
            "    @staticmethod\n    def g():\n        return sample(ONE)\n",
            "decorated nested function",
        ),
        ("    xs = zip(sample(ONE) for _ in range(3))\n", "generator expression"),
        ("    class C:\n        pass\n", "nested `class`"),
        ("    xs = sorted([1], key=lambda v: sample(ONE))\n", "lambda that makes choices"),
        ("    global ONE\n", "`global`"),
        ("    import os\n", "`import`"),
        ("    yield 1\n", "`yield`"),
        ("    try:\n        pass\n    except* ValueError:\n        pass\n", "`except*`"),
    ],
)
def test_unsupported_constructs_name_file_line_and_construct(tmp_path, source, construct):
    path = tmp_path / "user_prog.py"
    path.write_text(
        "from ppl import program, sample\nfrom ppl.distributions import Categorical\n"
        "ONE = Categorical([1])\n\n@program\ndef bad(x):\n" + source + "    return 0\n"
    )
    namespace = {"__name__": "user_prog"}
    with pytest.raises(ppl.CompileError) as info:
        exec(compile(path.read_text(), str(path), "exec"), namespace)
    assert f"{path}:7" in str(info.value)
    assert construct in str(info.value)


@program
def divides(n):
    x = sample(ONE)
    y = n / (x - 1)  # the line the traceback must show
    return y


def test_exception_points_at_user_line():
    with pytest.raises(ZeroDivisionError) as info:
        ppl.smc(divides, 1, particles=2, seed=0)
    last = traceback.extract_tb(info.tb)[-1]
    assert last.filename == __file__
    assert last.lineno == _line_of(divides.fn, "y = n / (x - 1)")
    assert last.name == "divides"


def uses_sample_without_program():
    return sample(ONE)


@program
def calls_plain_sampler():
    return uses_sample_without_program()


def test_primitive_in_plain_function_is_a_clear_error():
    with pytest.raises(RuntimeError, match="@ppl.program"):
        ppl.importance(calls_plain_sampler, particles=1, seed=0)


def test_inference_needs_a_program():
    def plain():
        return 1

    with pytest.raises(TypeError, match="decorate the function"):
        ppl.smc(plain, particles=2)


def test_wrong_arguments_are_reported_with_the_program_name():
    with pytest.raises(TypeError, match="countdown"):
        ppl.smc(countdown, 1, 2, 3, particles=2)


# -- direct runs ---------------------------------------------------------------------------------


@program
def coin_and_observation():
    heads = sample(Bernoulli(0.5))
    observe(Bernoulli(0.9 if heads else 0.1), True)
    condition(True)
    return heads


def test_direct_call_is_ancestral_simulation():
    values = {coin_and_observation() for _ in range(50)}
    assert values == {True, False}


# -- forking -------------------------------------------------------------------------------------


@program
def appender(prompt, steps):
    ctx = lm.context(prompt)
    seen = []
    log = {"tokens": seen}
    for _ in range(steps):
        tok = sample(ctx.next_token())
        seen.append(tok.id)
        ctx = ctx + tok
        factor(0.7 * tok.id)  # unequal weights: resampling happens and duplicates particles
    return log, ctx.tokens


def test_fork_copies_state_by_value():
    engine = Engine(appender, ("a", 3), {}, seed=0)
    [p] = engine.new_particles(1)
    engine.advance([p])
    engine.resolve([p])  # p has sampled its first token and is about to append it
    engine.advance([p])
    q = p.fork()
    q.frames[-1].L["seen"].append("only in q")
    assert "only in q" not in p.frames[-1].L["seen"]
    # aliasing inside one particle survives the copy
    assert q.frames[-1].L["log"]["tokens"] is q.frames[-1].L["seen"]


def test_resampled_siblings_never_see_each_others_mutations():
    post = ppl.smc(appender, "a", 6, particles=64, ess_threshold=1.0, seed=3)
    assert len(post.resampled) >= 3
    for log, tokens in post.values:
        assert log["tokens"] == tokens  # exactly its own six tokens, nothing from a sibling


def test_fork_cost_does_not_replay():
    # a fork after many steps must not re-run the program: the step counter of a forked
    # particle's program is the same object state, and no block runs during fork
    engine = Engine(appender, ("a", 50), {}, seed=0)
    [p] = engine.new_particles(1)
    for _ in range(30):
        engine.advance([p])
        engine.resolve([p])
    calls = []
    code = p.frames[-1].code
    original = list(code.blocks)
    code.blocks[:] = [lambda L, b=b: calls.append(1) or b(L) for b in original]
    try:
        p.fork()
    finally:
        code.blocks[:] = original
    assert calls == []


def test_condition_false_stops_particle_and_reports_statement():
    @program
    def impossible():
        x = sample(ONE)
        condition(x == 2)  # always false
        return x

    with pytest.warns(ppl.InferenceWarning, match="zero weight"):
        post = ppl.smc(impossible, particles=8, seed=0)
    assert post.log_evidence == -math.inf
    assert not any(math.isnan(w) for w in post.weights)
    assert "condition(x == 2)" in post.failure
    assert "8 rejected" in post.failure


def test_a_function_without_source_is_told_where_programs_live():
    namespace: dict = {}
    exec("def typed_at_a_prompt(x):\n    return x\n", namespace)
    with pytest.raises(ppl.CompileError, match=r"a \.py file or a notebook cell"):
        ppl.program(namespace["typed_at_a_prompt"])


def test_a_notebook_cell_compiles(tmp_path):
    # IPython compiles each cell under its own file name and keeps the source in linecache
    import linecache

    source = (
        "import ppl\n"
        "@ppl.program\n"
        "def cell_program(p):\n"
        "    x = ppl.sample(ppl.distributions.Bernoulli(p))\n"
        "    return x\n"
    )
    name = "<ipython-input-7-0123456789ab>"
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    try:
        namespace: dict = {}
        exec(compile(source, name, "exec"), namespace)
        post = ppl.importance(namespace["cell_program"], 1.0, particles=3, seed=0)
        assert post.values == [True, True, True]
    finally:
        del linecache.cache[name]


# -- the source read is the function's own -------------------------------------------------------

STORY = """import ppl
from ppl.distributions import Bernoulli

RAN = []


def short_words(p, max_tokens=3):
    RAN.append("short_words")
    x = ppl.sample(Bernoulli(p))
    return x
"""
STORY_LINE = 7  # the line of `def short_words`


@pytest.fixture
def story(tmp_path, monkeypatch):
    """`story.py` written in `tmp_path` and imported: (its path, the module)."""
    import importlib
    import sys

    path = tmp_path / "story.py"
    path.write_text(STORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "story", raising=False)
    importlib.invalidate_caches()
    module = importlib.import_module("story")
    yield path, module
    sys.modules.pop("story", None)


def _edited(path, text):
    import linecache
    import os

    path.write_text(text)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later time, surely
    linecache.checkcache(str(path))


@pytest.mark.parametrize(
    "edit, what",
    [
        # lines shifted: another function now stands at the old line
        (
            lambda s: s.replace(
                "RAN = []\n",
                "RAN = []\n\n\ndef other(p, max_tokens=3):\n    RAN.append('other')\n"
                "    return 1\n",
            ),
            "the definition found there is `def other` at line 7",
        ),
        # the same name at the same line, with other parameters
        (
            lambda s: s.replace("def short_words(p, max_tokens=3):", "def short_words(p, n):"),
            r"its parameters are now \(p, n\), were \(p, max_tokens=\)",
        ),
        # the same name and parameters at the same line, with another body
        (
            lambda s: s.replace('RAN.append("short_words")', "RAN.append('edited')"),
            "the code there differs from the code that was imported",
        ),
        # the file is now shorter than the function's line
        (lambda s: "import ppl\n", "the file no longer has that line"),
    ],
)
def test_a_function_whose_file_changed_is_never_replaced_by_other_code(story, edit, what):
    path, module = story
    _edited(path, edit(STORY))
    with pytest.raises(ppl.CompileError, match=what) as info:
        ppl.program(module.short_words)
    message = str(info.value)
    assert f"the source of short_words at {path}:{STORY_LINE} changed since it was imported" in (
        message
    )
    assert "Reload the module" in message
    assert module.RAN == []  # neither the function nor the code now in its place ran


def test_a_program_compiles_when_its_file_changed_elsewhere(story):
    path, module = story
    _edited(path, STORY + "\n\ndef added_later():\n    return 2\n")
    prog = ppl.program(module.short_words)
    assert ppl.importance(prog, 1.0, particles=2, seed=0).values == [True, True]
    assert module.RAN == ["short_words", "short_words"]
    # to another process as the function and its verified source: not read from the file again
    _edited(path, "import ppl\n")
    again = pickle.loads(pickle.dumps(prog))
    assert ppl.importance(again, 1.0, particles=1, seed=0).values == [True]


def test_a_program_keeps_the_source_it_was_decorated_with(story):
    # decorated at import; the file is edited before the first inference run compiles it
    path, module = story
    prog = ppl.program(module.short_words)
    _edited(path, STORY.replace("Bernoulli(p)", "Bernoulli(0.0)"))
    assert ppl.importance(prog, 1.0, particles=2, seed=0).values == [True, True]
    assert module.RAN == ["short_words", "short_words"]
    assert [s.source for s in prog.code.sites] == ["x = ppl.sample(Bernoulli(p))"]


def test_a_program_follows_its_function_when_a_reload_replaces_its_code(story):
    path, module = story
    prog = ppl.program(module.short_words)
    edited = STORY.replace('RAN.append("short_words")', "RAN.append('edited')")
    _edited(path, edited)
    namespace: dict = {}
    exec(compile(edited, str(path), "exec"), namespace)
    module.short_words.__code__ = namespace["short_words"].__code__  # as IPython's autoreload
    assert ppl.importance(prog, 1.0, particles=1, seed=0).values == [True]
    assert module.RAN == ["edited"]


def test_a_closure_with_an_imported_module_is_verified(tmp_path, monkeypatch):
    # compiled in its own context: `math.floor(...)` on an imported name, a free variable
    import importlib
    import sys

    (tmp_path / "closures.py").write_text(
        "import math\nimport ppl\nfrom ppl.distributions import Categorical\n\n\n"
        "def make(k):\n"
        "    @ppl.program\n"
        "    def prog(x):\n"
        "        y = ppl.sample(Categorical([1]))\n"
        "        return math.floor(x) + k + y\n"
        "    return prog\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        module = importlib.import_module("closures")
        assert compiled(module.make(10), 2.5) == 13
    finally:
        sys.modules.pop("closures", None)
