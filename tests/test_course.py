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
import subprocess
import sys
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
    # `ppl.exact`, which the later lessons use as their reference, against the same count
    assert out["exact_gap"] < 1e-9 and out["exact_log_gap"] < 1e-9
    assert out["exact"].log_evidence == pytest.approx(math.log(z), abs=1e-6)
    assert out["exact"].distribution() == pytest.approx({t: p for t, p in post.items() if p > 0})


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
    check_claim_02(out, repeats)


def words(text: str) -> str:
    """`text` with its line breaks and runs of spaces as single spaces."""
    return " ".join(text.split())


def check_claim_02(out: dict, repeats: int) -> None:
    """Lesson 2's claim says what its own numbers say."""
    claim, rows = words(out["claim"]), out["rows"]
    assert "nan" not in claim and "inf" not in claim, claim
    z = max(abs(r["mean_ratio"] - 1) / (r["theory"] / math.sqrt(repeats)) for r in rows)
    if z < 3:
        assert f"within {z:.1f} standard errors of 1" in claim, claim
    else:
        assert f"is {z:.1f} standard errors from 1, more than" in claim, claim
    first = min(rows, key=lambda r: r["particles"])
    last = max(rows, key=lambda r: r["particles"])
    measured = first["rms_relative_error"] / last["rms_relative_error"]
    predicted = math.sqrt(last["particles"] / first["particles"])
    moved = f"fell {measured:.1f}-fold" if measured >= 1 else f"rose {1 / measured:.1f}-fold"
    assert f"rms relative error {moved}, where 1/√N predicts a {predicted:.1f}-fold" in claim
    # the explanation: the Monte Carlo error of each rms, and how far the fall is from 1/√N
    assert f"from only {repeats} runs" in claim, claim
    for r in (first, last):
        assert f"{r['rms_relative_se']:.0%} at N = {r['particles']}" in claim, claim
    spread = math.hypot(first["rms_relative_se"], last["rms_relative_se"])
    assert f"scatters around {predicted:.1f} by about ±{spread:.0%}" in claim, claim
    away = abs(math.log(measured / predicted)) / spread
    if away < 1:
        assert "within one such error of it" in claim, claim
    elif away < 3:
        assert f"is {away:.1f} such errors from it, a difference that Monte Carlo" in claim
    else:
        assert f"is {away:.1f} such errors from it, more than Monte Carlo" in claim


@pytest.mark.statistical
def test_02_the_claim_follows_the_numbers_at_other_settings(capsys):
    m = lesson(2)
    for sizes, repeats in (((10, 40), 5), ((1000, 10), 3)):  # few runs; sizes out of order
        out = m.main(sizes=sizes, repeats=repeats)
        assert words(out["claim"]) in words(capsys.readouterr().out)
        check_claim_02(out, repeats)
    out = m.main(sizes=(20,), repeats=2)
    assert "With a single N the fall of the error cannot be judged." in out["claim"]


def test_02_the_prose_gives_the_default_error_of_the_error():
    m = lesson(2)
    m2 = m.EXACT["relative_variance"]
    source = words(LESSONS[1].read_text().replace("# ", ""))
    assert "With the default 50 runs it is about 10% at every N" in source
    for n in (10, 100, 1000):
        assert round(m.rms_relative_se(n, 50), 2) == 0.10, n
    spread = math.hypot(m.rms_relative_se(10, 50), m.rms_relative_se(1000, 50))
    assert f"1/√N's 10-fold by about ±{spread:.0%}." in source
    assert m2 > 0


# -- 3: why SMC resamples -------------------------------------------------------------------------


@pytest.mark.statistical
def test_03_smc_beats_importance_sampling_when_most_paths_die(capsys):
    m = lesson(3)
    repeats = 20
    out = m.main(particles=200, repeats=repeats)
    assert "Claim:" in capsys.readouterr().out

    assert out["log_evidence"] == pytest.approx(no_repeat_log_evidence(m), abs=1e-5)

    is_, smc, exact_var = out["importance"], out["smc"], out["exact_is_relative_variance"]
    assert abs(is_["mean_ratio"] - 1) < 4 * math.sqrt(exact_var / repeats)
    assert abs(smc["mean_ratio"] - 1) < 4 * math.sqrt(smc["relative_variance"] / repeats)
    # SMC's variance is several times below IS's exact one; a correct SMC exceeds half of it
    # only if 20 runs overestimate its variance some 2.5-fold (chi-square: p < 1e-3)
    assert smc["relative_variance"] < exact_var / 2
    assert smc["log_variance"] < is_["log_variance"]
    assert smc["final_ess"] > 10 * is_["final_ess"]
    check_claim_03(out, particles=200, repeats=repeats)


def no_repeat_log_evidence(m) -> float:
    """log Z of the no-repeat task of lessons 3 and 7 by a forward recursion over the last
    letter, independent of `ppl.exact`, which the lessons use."""
    alpha = {x: 1 / 3 for x in "abc"}
    for _ in range(m.MAX_TOKENS - 1):
        alpha = {
            y: sum(a * (1 - m.STOP - m.REPEAT[x]) / 2 for x, a in alpha.items() if x != y)
            for y in "abc"
        }
    return math.log(sum(alpha.values()))


def check_claim_03(out: dict, particles: int, repeats: int) -> None:
    """Lesson 3's claim says what its own numbers say: each "X times smaller/larger" is so."""
    claim = words(out["claim"])
    is_, smc = out["importance"], out["smc"]
    assert "0.0 times" not in claim and "nan" not in claim, claim
    assert f"kills {1 - math.exp(out['log_evidence']):.1%} of the prior's paths" in claim
    assert f"with N = {particles} particles" in claim, claim
    compared = re.findall(
        r"\(([\d.]+)[^()]*\) is ([\d.]+) times (smaller|larger) than [^(]*\(([\d.]+)\)", claim
    )
    assert compared, claim
    for a, ratio, word, b in compared:
        a, b, ratio = float(a), float(b), float(ratio)
        assert (a < b) == (word == "smaller"), (a, word, b)
        assert ratio >= 1.05 and ratio == pytest.approx(max(a, b) / min(a, b), rel=0.05, abs=0.1)
    exact_var = out["exact_is_relative_variance"]
    assert f"SMC's variance of Ẑ/Z ({smc['relative_variance']:.4f} over {repeats} runs)" in claim
    assert f"IS's exact variance ({exact_var:.4f})" in claim
    if is_["lost"] and not smc["lost"]:
        assert is_["log_variance"] == math.inf
        assert f"IS lost every particle in {is_['lost']} of {repeats} runs" in claim, claim
        assert "its variance of log Ẑ is infinite" in claim, claim
    elif not is_["lost"] and not smc["lost"]:
        assert "neither lost a run" in claim, claim
        assert f"SMC's variance of log Ẑ ({smc['log_variance']:.4f}) is" in claim, claim
    assert f"final ESS is {smc['final_ess']:.1f} of {particles} against IS's" in claim


@pytest.mark.statistical
def test_03_the_claim_follows_the_numbers_when_importance_sampling_loses_most_runs(capsys):
    m = lesson(3)
    out = m.main(particles=20, repeats=20)
    assert words(out["claim"]) in words(capsys.readouterr().out)
    assert out["importance"]["lost"] > 10 and out["smc"]["lost"] == 0  # IS lost most runs
    check_claim_03(out, particles=20, repeats=20)
    out = m.main(particles=50, repeats=1, max_tokens=3)
    assert "one run of each cannot measure a variance" in out["claim"]


def test_03_the_prose_gives_the_computed_death_rates():
    m = lesson(3)
    dead, per_step = m.death_rates(m.LOG_Z)
    source = words(LESSONS[2].read_text().replace("# ", ""))
    assert f"kills about a third of the paths ({per_step:.0%} on average)" in source
    assert f"and {dead:.1%} of all paths die somewhere" in source


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


def test_05_runs_without_matplotlib_and_says_how_to_add_the_plot(tmp_path):
    # a fresh `make demo` installs no matplotlib: the lesson still runs, and says what to install
    hide = "import sys, runpy; sys.modules['matplotlib'] = None; "
    run = f"runpy.run_path({str(LESSONS[4])!r}, run_name='__main__')"
    result = subprocess.run(
        [sys.executable, "-c", hide + run], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Claim:" in result.stdout
    assert "(no plot: it needs matplotlib" in result.stdout
    assert "pip install -e '.[plot]'" in result.stdout
    assert not (tmp_path / "build").exists()


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
    assert out["log_evidence"] == pytest.approx(no_repeat_log_evidence(m), abs=1e-5)
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
