"""The inference-time scaling gallery program: its questions, reward, and a tiny run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parent.parent / "tutorials" / "gallery" / "scaling_reasoning.py"


def load():
    spec = importlib.util.spec_from_file_location("gallery_scaling_reasoning", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_questions_have_their_answers():
    scaling = load()
    for question, (a, b), answer in scaling.problems(50, seed=1):
        problem = question.split("Problem: ")[1]  # after the worked example
        assert f" {a} " in problem and f" {b} " in problem
        assert answer == (a + b if "more" in problem else a - b) and answer >= 0


def test_the_reward_checks_arithmetic_not_answers():
    scaling = load()
    known = {3, 4}
    assert scaling.step_reward("3 + 4 = 7 apples", known) == 1.0 and 7 in known
    assert scaling.step_reward("then 7 - 4 = 3", known) == 1.0
    assert scaling.step_reward("3 + 4 = 8", {3, 4}) == 0.1  # wrong sum
    assert scaling.step_reward("5 + 2 = 7", {3, 4}) == 0.1  # numbers from nowhere
    assert scaling.step_reward("Tom buys more apples.", {3, 4}) == 0.5
    assert scaling.answer_of("so 3 + 4 = 7.\nAnswer: 7") == 7
    assert scaling.answer_of("the total is 12 apples") == 12
    assert scaling.answer_of("no number here") is None
    assert scaling.final_reward("3 + 4 = 7\nAnswer: 7", {7}) == 1.0
    assert scaling.final_reward("Answer: 4", {7}) == 0.3  # not derived by an equation
    assert scaling.final_reward("3 + 4 = 7", {7}) == 0.1


@pytest.mark.slow
def test_every_method_runs_at_every_budget(embedded_lm, capsys):
    scaling = load()
    accuracy = scaling.main(budgets=(1, 4), questions=2, steps=1, step_tokens=5, lm=embedded_lm)
    out = capsys.readouterr().out
    assert set(accuracy) == {"best-of-N", "beam search", "particle filter"}
    for by_budget in accuracy.values():
        assert set(by_budget) == {1, 4} and all(0 <= a <= 1 for a in by_budget.values())
    assert "At N=4: particle filter" in out and "tokens fed per question" in out
    assert "Claim (measured): from N=1 to N=4" in out
