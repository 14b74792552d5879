"""The tutorials run end to end on the embedded model, with small settings."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

import ppl

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"


def load_tutorial(name: str):
    spec = importlib.util.spec_from_file_location(f"tutorial_{name}", TUTORIALS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_short_words_demo(embedded_lm, capsys):
    tutorial = load_tutorial("short_words")
    post = tutorial.main(particles=16, max_tokens=10, seed=0, lm=embedded_lm)
    out = capsys.readouterr().out
    # side by side: the plain samples, counted and marked, and SMC's stories
    assert "PLAIN SAMPLING: the model as it is" in out and "16 stories, " in out
    assert "SMC: the model, conditioned on the rule" in out and "all obey the rule" in out
    assert f"{len(post.distribution())} distinct stories" in out
    assert "Evidence: log Z = " in out and " of the model's own stories obey the rule" in out
    assert math.isfinite(post.log_evidence) and post.log_evidence <= 0
    texts = [t for t, w in zip(post.values, post.weights) if w > 0]
    assert texts
    for text in texts:
        assert all(tutorial.letters(w) <= 5 for w in text.split()), text
    top = next(iter(post.distribution()))
    assert " ".join(top.split()[:3]) in out  # the most probable story is shown


def test_long_words_are_marked():
    tutorial = load_tutorial("short_words")
    assert (
        tutorial.mark_long('He said: "wonderful!" and left.') == 'He said: "[wonderful]!" and left.'
    )
    assert (
        tutorial.ellipsis("a cut off") == "a cut off ..." and tutorial.ellipsis("Done.") == "Done."
    )


@pytest.mark.slow
def test_short_words_feeds_each_token_once(embedded_lm):
    tutorial = load_tutorial("short_words")
    requested: set[tuple[int, ...]] = set()
    original = embedded_lm.compute_logprobs

    def counting(contexts, *args, **kwargs):
        for ctx in contexts:
            if ctx._logprobs is None:
                requested.add(tuple(ctx.tokens))
        return original(contexts, *args, **kwargs)

    embedded_lm.compute_logprobs = counting
    prompt = embedded_lm.chat(tutorial.PROMPT)
    try:
        post = ppl.smc(
            tutorial.short_words, embedded_lm, prompt, max_tokens=10, particles=16, seed=0
        )
    finally:
        del embedded_lm.compute_logprobs
    # the model never re-encodes: the prompt once, then one token per distinct prefix whose
    # next-token distribution some particle needed
    prompt_len = len(embedded_lm.encode(prompt))
    assert post.stats["tokens_fed"] == prompt_len + sum(1 for seq in requested if seq)
    assert post.stats["forward_calls"] == post.stats["steps"]


@pytest.mark.slow
def test_constrained(embedded_lm, capsys):
    tutorial = load_tutorial("constrained")
    sums, people = tutorial.main(particles=8, seed=0, lm=embedded_lm)
    out = capsys.readouterr().out
    assert "parse tree of" in out and "parsed:" in out

    assert math.isfinite(sums.log_evidence) and sums.log_evidence < 0
    finished = [t for t, w in zip(sums.values, sums.weights) if w > 0]
    assert finished
    for text in finished:
        assert len(text) < 20, text
        tutorial.ARITHMETIC.parse(text)  # raises if the text is outside the grammar

    assert math.isfinite(people.log_evidence) and people.log_evidence < 0
    objects = [t for t, w in zip(people.values, people.weights) if w > 0]
    assert objects
    for text in objects:
        value = tutorial.PERSON.parse(text)
        assert isinstance(value["name"], str) and isinstance(value["age"], int), text
