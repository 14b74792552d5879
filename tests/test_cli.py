"""The `ppl` command: `ppl run` is `ppl.map` from the shell, with exit statuses a script can use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import ppl
from ppl import cli
from ppl.cli import main

TOY = """
from ppl import condition, program, sample
from ppl.models import FunctionLM

lm = FunctionLM(
    ["a", "b", "c", "<eos>"], lambda prefix: [1.0 + len(prefix) % 3, 2.0, 1.0, 0.6], eos="<eos>"
)


@program
def letters(prompt: str, n: int = 4):
    if prompt == "fail":
        raise ValueError("this input always fails")
    ctx = lm.context(prompt)
    for _ in range(n):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        condition("cc" not in ctx.text)
        if tok.is_eos:
            break
    return ctx.text


@program
def with_lm(lm, prompt: str):
    return lm.context(prompt).text


def helper():
    return 1


if __name__ == "__main__":
    raise SystemExit("the __main__ block ran")
"""

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    path = tmp_path / "toy.py"
    path.write_text(TOY)
    return path


def jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def item_lines(text: str) -> list[str]:
    """The per-item part of the output (without totals, which hold timings)."""
    return [line for line in text.splitlines() if line.startswith(("[", "    "))]


def test_one_item_from_arg_is_the_python_call(toy, capsys):
    rc = main(["run", f"{toy}:letters", "--arg", "prompt=ab", "--arg", "n=3",
               "--particles", "5", "--seed", "7", "--no-progress"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    letters = cli.load_program(f"{toy}:letters")[1]
    alone = ppl.smc(letters, prompt="ab", n=3, particles=5, seed=(7, 0))
    assert f"[0] log evidence {alone.log_evidence:.4f}  ESS {alone.final_ess:.2f} of 5" in out
    top, weight = next(iter(alone.distribution().items()))
    assert f"{weight:6.3f}  {top}" in out
    assert "1 items, 0 failed, 0 resumed" in out


def test_inputs_with_out_then_a_rerun_resumes(toy, tmp_path, capsys):
    # objects and arrays, a blank line, and a line that overrides --arg
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"prompt": "a"}\n["b"]\n\n{"prompt": "ab", "n": 1}\n["c", 2]\n')
    out = tmp_path / "results.jsonl"
    argv = ["run", f"{toy}:letters", "--inputs", str(inputs), "--arg", "n=3",
            "--particles", "4", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "4 items, 0 failed, 0 resumed" in first
    assert f"results in {out}: a rerun of this command resumes from it" in first
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["index"] for r in records) == [0, 1, 2, 3]
    posteriors = {r["index"]: ppl.Posterior.from_dict(r["posterior"]) for r in records}
    assert max(len(v) for v in posteriors[0].values) == 3  # n=3 from --arg
    assert max(len(v) for v in posteriors[2].values) == 1  # the line's n=1 wins
    assert max(len(v) for v in posteriors[3].values) == 2  # ["c", 2]: n by position

    assert main(argv) == 0
    second = capsys.readouterr().out
    assert "4 items, 0 failed, 4 resumed" in second
    assert len(out.read_text().splitlines()) == 4  # nothing ran again
    assert item_lines(second) == item_lines(first)


def test_a_failing_item_gives_exit_1_and_its_error_line(toy, tmp_path, capsys):
    inputs = jsonl(tmp_path / "in.jsonl", [["ab"], ["fail"], ["ba"]])
    rc = main(["run", f"{toy}:letters", "--inputs", str(inputs), "--particles", "3",
               "--no-progress"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 1
    assert f"[1] FAILED ({inputs}, line 2)  ValueError: this input always fails" in out
    assert "[0] log evidence" in out and "[2] log evidence" in out
    assert "3 items, 1 failed, 0 resumed" in out


def test_mh_with_chains_and_steps(toy, capsys):
    rc = main(["run", f"{toy}:letters", "--method", "mh", "--chains", "2", "--steps", "5",
               "--arg", "prompt=ab", "--no-progress"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    letters = cli.load_program(f"{toy}:letters")[1]
    alone = ppl.mh(letters, prompt="ab", chains=2, steps=5, seed=(0, 0))
    assert f"[0] log evidence n/a  acceptance {alone.acceptance_rate:.3f}" in out


def test_html_writes_one_page_per_item(toy, tmp_path, capsys):
    inputs = jsonl(tmp_path / "in.jsonl", [["a"], ["b"]])
    page = tmp_path / "run.html"
    rc = main(["run", f"{toy}:letters", "--inputs", str(inputs), "--particles", "3",
               "--html", str(page), "--no-progress"])  # fmt: skip
    assert rc == 0
    for i in (0, 1):
        assert (tmp_path / f"run-{i}.html").read_text().startswith("<!DOCTYPE html>")
    assert main(["run", f"{toy}:letters", "--arg", "prompt=a", "--html", str(page),
                 "--no-progress"]) == 0  # fmt: skip
    assert page.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["run", "{dir}/missing.py:letters"], "missing.py: no such file"),
        (
            ["run", "{toy}"],
            "name the program to run as {toy}:PROGRAM (its programs: letters, with_lm)",
        ),
        (["run", "{toy}:nope"], "has no 'nope' (its programs: letters, with_lm)"),
        (["run", "{toy}:helper"], "{toy}:helper is a function, not a @ppl.program"),
        (["run", "{toy}:letters", "--arg", "prompt"], "'prompt': write NAME=VALUE"),
        (["run", "{toy}:letters", "--arg", "size=3"], "letters() has no parameter 'size'"),
        (
            ["run", "{toy}:letters", "--inputs", "{dir}/bad.jsonl"],
            "bad.jsonl, line 3: not JSON",
        ),
        (["run", "{toy}:letters", "--inputs", "{dir}/missing.jsonl"], "missing.jsonl: No such"),
        (
            ["run", "{toy}:letters", "--chains", "2", "--arg", "prompt=a"],
            "smc() has no option 'chains'",
        ),
        (["run", "{toy}:letters", "--particles", "0"], "'0' is not a positive integer"),
        (
            ["run", "{toy}:letters", "--model", "gpt", "--arg", "prompt=a"],
            "cannot read the model 'gpt'",
        ),
    ],
)
def test_mistakes_give_exit_2_and_a_message_without_traceback(toy, tmp_path, capsys, argv, message):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n\n{"prompt": "b"\n')
    fill = {"toy": str(toy), "dir": str(tmp_path)}
    assert main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message.format(**fill) in err
    assert "Traceback" not in err


def test_a_file_that_raises_shows_its_own_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("import ppl\n\nraise RuntimeError('boom')\n")
    assert main(["run", f"{bad}:p"]) == 2
    err = capsys.readouterr().err
    assert f'File "{bad}", line 3' in err and "RuntimeError: boom" in err
    assert "importlib" not in err and "cli.py" not in err


def test_the_model_is_embedded_only_for_programs_with_lm(toy, monkeypatch, capsys):
    seen = []

    class Done:
        def results(self):
            return ppl.workloads.Results([], {})

    def fake_imap(method, program, inputs, **settings):
        seen.append(settings["model"])
        return Done()

    monkeypatch.setattr(ppl, "imap", fake_imap)
    assert main(["run", f"{toy}:with_lm", "--arg", "prompt=a"]) == 0
    assert main(["run", f"{toy}:letters", "--arg", "prompt=a"]) == 0
    assert main(["run", f"{toy}:with_lm", "--arg", "prompt=a", "--model", "hf:some/model"]) == 0
    assert seen == ["embedded", None, "hf:some/model"]


def test_a_model_that_cannot_load_is_a_failed_run_that_names_it(toy, tmp_path, capsys):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    rc = main(["run", f"{toy}:with_lm", "--arg", "prompt=a", "--model", f"hf:{empty}",
               "--no-progress"])  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err
    assert "Traceback" in err  # the cause, not a usage message
    assert f"while loading the model ModelSpec('hf', '{empty}'" in err
    assert "ppl run: the run failed: " in err and "usage" not in err


def test_an_error_of_ppl_during_the_run_keeps_its_traceback(toy, monkeypatch, capsys):
    from ppl.workloads import batch

    def broken(self, jobs):
        raise TypeError("an internal fault")
        yield  # a generator, as the real one

    monkeypatch.setattr(batch.SharedSteps, "run", broken)
    assert main(["run", f"{toy}:letters", "--arg", "prompt=a", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "batch.SharedSteps" not in err
    assert "ppl run: the run failed: TypeError: an internal fault" in err


def test_a_checkpoint_of_other_work_is_a_mistake_in_the_command(toy, tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    argv = ["run", f"{toy}:letters", "--arg", "prompt=a", "--out", str(out), "--no-progress"]
    assert main([*argv, "--particles", "3"]) == 0
    capsys.readouterr()
    assert main([*argv, "--particles", "4"]) == 2
    err = capsys.readouterr().err
    assert "what changed: option 'particles'" in err and "Traceback" not in err


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ppl {ppl.__version__}"
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "run" in out and "demo" in out


def test_demo_passes_its_options_to_main(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "short_words.py"
    fake.write_text(
        "def main(particles=16, max_tokens=40, seed=0, lm=None):\n"
        "    print('demo', particles, max_tokens, seed)\n"
    )
    monkeypatch.setattr(cli, "DEMO", fake)
    assert main(["demo", "--particles", "4", "--max-tokens", "9"]) == 0
    assert capsys.readouterr().out == "demo 4 9 0\n"
    monkeypatch.setattr(cli, "DEMO", tmp_path / "gone.py")
    assert main(["demo"]) == 2
    assert "run it from a clone of the repository" in capsys.readouterr().err


def test_the_installed_script(toy, tmp_path):
    script = Path(sys.executable).with_name("ppl")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "ppl.cli"]
    inputs = jsonl(tmp_path / "in.jsonl", [["ab"], ["fail"]])
    done = subprocess.run(
        [*command, "run", f"{toy}:letters", "--inputs", str(inputs), "--particles", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "[0] log evidence" in done.stdout
    assert "[1] FAILED" in done.stdout and "ValueError: this input always fails" in done.stdout
    assert "2 items, 1 failed, 0 resumed" in done.stdout


@pytest.mark.slow
def test_short_words_on_the_embedded_model(tmp_path, capsys):
    inputs = jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Once upon a time"}, ["A cat"]])
    out = tmp_path / "results.jsonl"
    argv = ["run", f"{REPO / 'tutorials' / 'short_words.py'}:short_words",
            "--inputs", str(inputs), "--particles", "2", "--arg", "max_tokens=3",
            "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "[0] log evidence" in text and "[1] log evidence" in text
    assert "2 items, 0 failed, 0 resumed" in text
    assert len(out.read_text().splitlines()) == 2
    assert main(argv) == 0
    assert "2 items, 0 failed, 2 resumed" in capsys.readouterr().out


def test_an_interrupted_run_says_what_was_saved(toy, tmp_path, monkeypatch, capsys):
    out = tmp_path / "results.jsonl"
    argv = ["run", f"{toy}:letters", "--arg", "prompt=a", "--out", str(out), "--no-progress"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ppl, "imap", interrupted)
    assert main(argv) == 130
    assert f"no item had finished, so nothing was saved to {out}" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(argv) == 0
    monkeypatch.setattr(ppl, "imap", interrupted)
    assert main(argv) == 130
    assert f"{out} holds 1 finished item: a rerun" in capsys.readouterr().err


FRACTIONS = """
from fractions import Fraction
from ppl import program, sample
from ppl.distributions import Bernoulli


@program
def third():
    return Fraction(int(sample(Bernoulli(0.5))), 3)
"""


def test_a_result_out_cannot_hold_is_named_and_allow_pickle_keeps_it(tmp_path, capsys):
    script = tmp_path / "fractions_program.py"
    script.write_text(FRACTIONS)
    out = tmp_path / "results.jsonl"
    argv = ["run", f"{script}:third", "--particles", "2", "--out", str(out), "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "ppl run: the run failed: SaveError: ppl.map: item 0's result cannot be written" in err
    assert "values[0] is a fractions.Fraction" in err and "--allow-pickle" in err
    assert "Traceback" not in err
    assert main([*argv, "--allow-pickle"]) == 0
    assert main([*argv, "--allow-pickle"]) == 0
    assert "1 resumed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "arg,message",
    [
        ("max_tokens=twenty", "--arg: max_tokens='twenty' (str) does not fit short_words()'s "
         "parameter max_tokens: int"),
        ("max_tokens=2.5", "max_tokens=2.5 (float) does not fit"),
        ("prompt=42", "prompt: str; for the text, write it as a JSON string: prompt='\"42\"'"),
    ],
)  # fmt: skip
def test_argument_types_are_checked_before_the_model_loads(monkeypatch, capsys, arg, message):
    from ppl.models.spec import ModelSpec

    def build(self):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(ModelSpec, "build", build)
    argv = ["run", f"{REPO / 'tutorials' / 'short_words.py'}:short_words",
            "--arg", "prompt=Hello", "--arg", arg]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_input_line_of_the_wrong_type_is_named(toy, tmp_path, capsys):
    inputs = jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}, {"prompt": "b", "n": "four"}])
    assert main(["run", f"{toy}:letters", "--inputs", str(inputs)]) == 2
    err = capsys.readouterr().err
    assert "in.jsonl, line 2: n='four' (str) does not fit letters()'s parameter n: int" in err
