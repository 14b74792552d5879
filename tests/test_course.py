"""The course (tutorials/course/): each lesson's `main()` runs with small settings and the claim it
prints holds against the exact answer, within Monte Carlo error where it is an estimate; the
lessons open as notebooks; `@ppl.program` compiles from a notebook cell.

Tolerances: an estimate is compared with the exact value in units of its standard error (the
exact one where the lesson can compute it, else the spread of independent runs or chains),
at 4 standard errors. Every run is seeded, so each test is deterministic; the margins say how
unlikely a failure would be for a correct sampler.
"""

from __future__ import annotations

import itertools
import json
import linecache
import math
import re
from functools import cache
from pathlib import Path

import pytest

import ppl

COURSE = Path(__file__).resolve().parent.parent / "tutorials" / "course"
LESSONS = sorted(COURSE.glob("[0-9][0-9]_*.py"))


@cache
def lesson(number: int):
    """The lesson module (loading it runs its cheap top-level cells)."""
    import importlib.util

    (path,) = [p for p in LESSONS if p.name.startswith(f"{number:02d}_")]
    spec = importlib.util.spec_from_file_location(f"course_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_course_has_its_seven_lessons_and_a_readme():
    assert [p.name[:3] for p in LESSONS] == [f"{i:02d}_" for i in range(1, 8)]
    readme = (COURSE / "README.md").read_text()
    for path in LESSONS:
        source = path.read_text()
        assert path.name in readme, path.name
        assert source.startswith("# %% [markdown]\n# # Lesson"), path.name
        assert "\ndef main(" in source and '\nif __name__ == "__main__":\n' in source, path.name


# -- 1: Bayes' rule by enumeration ----------------------------------------------------------------


def test_01_bayes_by_enumeration(capsys):
    m = lesson(1)
    out = m.main()
    assert "Claim:" in capsys.readouterr().out
    prior, post = out["prior"], out["posterior"]
    assert len(prior) == 1 + 3 + 9 + 27 + 81
    assert math.fsum(prior.values()) == pytest.approx(1.0, abs=1e-6)
    assert math.fsum(post.values()) == pytest.approx(1.0, abs=1e-12)
    assert out["gap"] < 1e-9  # the program scores every text as the enumeration does

    # an independent count, straight from the table: every token sequence, in float64
    z = 0.0
    for n in range(m.MAX_TOKENS + 1):
        for letters in itertools.product("abc", repeat=n):
            p, last = 1.0, "<s>"
            for x in letters:
                p, last = p * m.NEXT[last][m.VOCAB.index(x)], x
            if n < m.MAX_TOKENS:
                p *= m.NEXT[last][m.VOCAB.index("<eos>")]
            z += p * m.likelihood("".join(letters))
    assert out["log_evidence"] == pytest.approx(math.log(z), abs=1e-6)


# -- 2: importance sampling -----------------------------------------------------------------------


@pytest.mark.statistical
def test_02_importance_sampling_error_shrinks_like_one_over_root_n(capsys):
    m = lesson(2)
    repeats = 30
    out = m.main(sizes=(10, 100, 1000), repeats=repeats)
    assert "Claim:" in capsys.readouterr().out
    exact, rows = out["exact"], out["rows"]
    assert exact["log_evidence"] == pytest.approx(lesson(1).main()["log_evidence"], abs=1e-9)
    for r in rows:
        # unbiased: the standard error of the mean of `repeats` Z-hats is exact here
        assert abs(r["mean_ratio"] - 1) < 4 * r["theory"] / math.sqrt(repeats), r
        # the measured error is the exact one (30 runs give its rms within about ±15%)
        assert 0.5 < r["rms_relative_error"] / r["theory"] < 2.0, r
    errors = [r["rms_relative_error"] for r in rows]
    assert errors[0] > errors[1] > errors[2]
    assert errors[0] / errors[2] > 5  # 1/sqrt(N) predicts 10
    big = rows[-1]
    assert abs(big["ess_fraction"] - exact["ess_fraction"]) < 4 * big["ess_fraction_se"] + 0.01


# -- 3: why SMC resamples -------------------------------------------------------------------------


@pytest.mark.statistical
def test_03_smc_beats_importance_sampling_when_most_paths_die(capsys):
    m = lesson(3)
    repeats = 20
    out = m.main(particles=200, repeats=repeats)
    assert "Claim:" in capsys.readouterr().out

    # the exact evidence by a forward recursion over the last letter, independent of the walk
    alpha = {x: 1 / 3 for x in "abc"}
    for _ in range(m.MAX_TOKENS - 1):
        alpha = {
            y: sum(a * (1 - m.STOP - m.REPEAT[x]) / 2 for x, a in alpha.items() if x != y)
            for y in "abc"
        }
    assert out["log_evidence"] == pytest.approx(math.log(sum(alpha.values())), abs=1e-5)

    is_, smc, exact_var = out["importance"], out["smc"], out["exact_is_relative_variance"]
    assert abs(is_["mean_ratio"] - 1) < 4 * math.sqrt(exact_var / repeats)
    assert abs(smc["mean_ratio"] - 1) < 4 * math.sqrt(smc["relative_variance"] / repeats)
    # SMC's variance is several times below IS's exact one; a correct SMC exceeds half of it
    # only if 20 runs overestimate its variance some 2.5-fold (chi-square: p < 1e-3)
    assert smc["relative_variance"] < exact_var / 2
    assert smc["log_variance"] < is_["log_variance"]
    assert smc["final_ess"] > 10 * is_["final_ess"]


# -- 4: MCMC over texts ---------------------------------------------------------------------------


@pytest.mark.statistical
def test_04_mcmc_agrees_with_the_exact_posterior(capsys):
    m = lesson(4)
    out = m.main(chains=12, steps=150, warmup=20, pimh_sizes=(2, 16), pimh_steps=40)
    assert "Claim:" in capsys.readouterr().out
    exact_post = lesson(1).main()["posterior"]
    assert out["p_has_b"] == pytest.approx(sum(p for t, p in exact_post.items() if "b" in t))
    for name, r in out["mh"].items():
        assert 0.2 < r["acceptance"] < 1, name
        assert abs(r["estimate"] - out["p_has_b"]) < 4 * r["se"], (name, r)
    for n, r in out["pimh"].items():
        assert abs(r["estimate"] - out["p_has_b"]) < 4 * r["se"], (n, r)
        assert abs(r["z_ratio"] - 1) < 4 * r["z_ratio_se"], (n, r)
    # 12 chains x 40 steps: each rate has a standard error of about 0.02
    assert out["pimh"][16]["acceptance"] > out["pimh"][2]["acceptance"] + 0.1


# -- 5: constraints as conditioning ---------------------------------------------------------------


@pytest.mark.statistical
def test_05_masking_distorts_and_ppl_does_not(capsys):
    m = lesson(5)
    out = m.main(particles=2000, seed=0)
    assert "Claim:" in capsys.readouterr().out
    exact, masked, estimate, se = out["exact"], out["masked"], out["estimate"], out["se"]
    assert set(exact) == {"b", "ab", "cb", "aab", "acb", "cab", "ccb"}  # the strings of L
    assert set(masked) == set(exact)
    assert math.fsum(masked.values()) == pytest.approx(1.0)
    # p("aab" | L) by hand: the model's probability of each string of L, renormalised
    t = m.NEXT

    def p(s):
        prob, last = 1.0, "<s>"
        for x in s:
            prob, last = prob * t[last][m.VOCAB.index(x)], x
        return prob * t[last][m.VOCAB.index("<eos>")]

    assert exact["aab"] == pytest.approx(p("aab") / sum(map(p, exact)), rel=1e-5)

    for text in exact:
        assert abs(estimate.get(text, 0.0) - exact[text]) < 4 * se[text], text
    assert out["tv_masked"] > 0.3  # exact: no sampling
    assert out["tv_ppl"] < 0.5 * sum(4 * s for s in se.values()) < out["tv_masked"] / 3


def test_05_plot_is_written_when_asked(tmp_path):
    pytest.importorskip("matplotlib")
    m = lesson(5)
    path = tmp_path / "plot.png"
    m.plot_distributions(["b"], {"b": 1.0}, {"b": 1.0}, {"b": 1.0}, {"b": 0.0}, path)
    assert path.stat().st_size > 0


# -- 6: latent variables --------------------------------------------------------------------------


@pytest.mark.statistical
def test_06_latent_topic_and_nuts(capsys):
    m = lesson(6)
    repeats = 20
    out = m.main(particles=100, repeats=repeats, samples=600, warmup=300)
    assert "Claim:" in capsys.readouterr().out
    topic, runs = out["topic"], out["topic"]["runs"]

    # p(2 b | topic) straight from the tables, for an independent exact posterior
    def evidence(topic_token):
        rows, total = m.NEXT[topic_token], 0.0
        for n in range(m.MAX_TOKENS + 1):
            for letters in itertools.product("abc", repeat=n):
                p, last = 1.0, "start"
                for x in letters:
                    p, last = p * rows[last]["abc".index(x)], x
                if n < m.MAX_TOKENS:
                    p *= rows[last][3]
                total += p * (letters.count("b") >= 2)
        return total

    joint_wild = m.PRIOR_WILD * evidence("<wild>")
    z = joint_wild + (1 - m.PRIOR_WILD) * evidence("<calm>")
    assert topic["z"] == pytest.approx(z, rel=1e-5)
    assert topic["p_wild"] == pytest.approx(joint_wild / z, rel=1e-5)
    # Z-hat and Z-hat * p-hat(wild) are unbiased for Z and p(wild, evidence)
    for estimates, exact in ((runs["z"], z), (runs["joint"], joint_wild)):
        assert abs(estimates.mean() - exact) < 4 * estimates.std(ddof=1) / math.sqrt(repeats)

    normal = out["normal"]
    mean, sd, draws, ess = normal["mean"], normal["sd"], normal["draws"], normal["ess"]
    data = m.DATA
    precision = 1 / m.PRIOR_SD**2 + len(data) / m.NOISE_SD**2
    assert mean == pytest.approx(data.sum() / m.NOISE_SD**2 / precision)
    assert ess > 100
    assert abs(draws.mean() - mean) < 4 * sd / math.sqrt(ess)
    assert abs(draws.std(ddof=1) - sd) < 4 * sd / math.sqrt(2 * ess)


# -- 7: proposals and twists ----------------------------------------------------------------------


@pytest.mark.statistical
def test_07_a_better_proposal_and_a_twist_raise_the_ess(capsys):
    m = lesson(7)
    out = m.main(particles=100, repeats=15, strength=5.0)
    assert "Claim:" in capsys.readouterr().out
    assert out["log_evidence"] == pytest.approx(lesson(3).exact_log_evidence(12), abs=1e-9)
    props, twists = out["proposals"], out["twists"]
    plain, smc, guided = (
        props["IS, model as proposal"],
        props["SMC, model as proposal"],
        props["IS, guide as proposal"],
    )
    late, twisted = twists["SMC, late check"], twists["SMC, late check + twist"]
    for name, r in {**props, **twists}.items():
        if name != "IS, model as proposal" and name != "SMC, late check":
            assert abs(r["mean_ratio"] - 1) < 4 * r["ratio_se"], (name, r)
    assert guided["final_ess"] > 10 * plain["final_ess"]
    assert guided["log_variance"] < smc["log_variance"] / 2
    # a late check is IS in disguise: its Z-hat has IS's exact variance; the twist cuts it
    assert twisted["relative_variance"] < out["exact_is_relative_variance"] / 2
    assert twisted["final_ess"] > 5 * late["final_ess"]


# -- notebooks ------------------------------------------------------------------------------------


def test_a_lesson_converts_to_a_notebook():
    jupytext = pytest.importorskip("jupytext")
    for path in LESSONS:
        nb = jupytext.read(path)
        assert nb.metadata["jupytext"]["text_representation"]["format_name"] == "percent"
        kinds = {cell.cell_type for cell in nb.cells}
        assert kinds == {"markdown", "code"}, path.name
    notebook = json.loads(jupytext.writes(jupytext.read(LESSONS[0]), fmt="ipynb"))
    assert notebook["cells"][0]["cell_type"] == "markdown"
    assert "".join(notebook["cells"][0]["source"]).startswith("# Lesson 1")
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert any("@program" in "".join(c["source"]) for c in code)


CELL = """\
import ppl
from ppl.models import FunctionLM

lm = FunctionLM(["<s>", "a", "b", "<eos>"], lambda p: [0.0, 0.5, 0.3, 0.2], eos="<eos>", bos="<s>")

@ppl.program
def no_b(n=3):
    ctx = lm.context("")
    for _ in range(n):
        tok = ppl.sample(ctx.next_token())
        ctx = ctx + tok
        ppl.condition(tok.text != "b")
        if tok.is_eos:
            break
    return ctx.text

@ppl.program
def unsupported():
    class Local:
        x = 1
    return ppl.sample(ppl.distributions.Bernoulli(0.5))
"""


def run_cell(source: str, filename: str) -> dict:
    """Run `source` as IPython runs a cell: compiled under a file name of its own
    (`<ipython-input-N-hash>` in IPython, `/tmp/ipykernel_PID/hash.py` in Jupyter's kernel)
    whose lines it keeps in `linecache`, where `inspect.getsourcelines` finds them."""
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict = {"__name__": "__main__"}
    try:
        exec(compile(source, filename, "exec"), namespace)
    finally:
        del linecache.cache[filename]
    return namespace


@pytest.mark.parametrize(
    "filename", ["<ipython-input-3-0c1d2e3f4a5b>", "/tmp/ipykernel_4242/2871934312.py"]
)
def test_a_program_compiles_from_a_notebook_cell(filename):
    with pytest.raises(ppl.CompileError, match=re.escape(filename) + ":19: .*nested `class`"):
        run_cell(CELL, filename)  # errors name the cell and its line
    namespace = run_cell(CELL[: CELL.index("@ppl.program\ndef unsupported")], filename)
    post = ppl.importance(namespace["no_b"], particles=1000, seed=0)
    z = 0.2 + 0.5 * 0.2 + 0.25 * 0.2 + 0.125  # EOS after 0, 1, 2 "a"s, or "aaa"
    assert abs(math.exp(post.log_evidence) / z - 1) < 4 * math.sqrt((1 / z - 1) / 1000)
    assert set(post.distribution()) == {"", "a", "aa", "aaa"}
