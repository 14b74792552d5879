"""The SMC-steering gallery (tutorials/gallery/steering_*.py): each program's `main()` runs on
the embedded model with small settings, and the claim it prints holds.

Every run is seeded, so each test is deterministic. The comparisons of posterior and plain
samples hold with room to spare at these sizes: on seeds 0-4 the intersection's gap is 0.8-2.7
nats per token and the infilling's 9-15 nats (the tests use seed 0).
"""

from __future__ import annotations

import importlib.util
import json
import math
from functools import cache
from pathlib import Path

import pytest

GALLERY = Path(__file__).resolve().parent.parent / "tutorials" / "gallery"
STEERING = [
    "steering_lipogram",
    "steering_prompt_intersection",
    "steering_infilling",
    "steering_json",
]


@cache
def program_file(name: str):
    spec = importlib.util.spec_from_file_location(f"gallery_{name}", GALLERY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def positive(post) -> list:
    return [v for v, w in zip(post.values, post.weights) if w > 0]


def test_each_program_is_a_percent_script_listed_in_the_readme():
    readme = (GALLERY / "README.md").read_text()
    for name in [*STEERING, "../short_words"]:
        assert f"{Path(name).name}.py" in readme, name
    for name in STEERING:
        source = (GALLERY / f"{name}.py").read_text()
        assert source.startswith("# %% [markdown]\n# # Steering: "), name
        assert "\n# %%\n" in source and "\ndef main(" in source, name
        assert '\nif __name__ == "__main__":\n' in source, name


def test_each_program_says_what_the_small_model_limits():
    # the posterior is exact for SmolLM2-135M, and its texts are that model's: each program
    # prints a note saying so after its claim
    for path in sorted(GALLERY.glob("*.py")):
        module = program_file(path.stem)
        note = module.MODEL_NOTE
        assert note.startswith("About the model: ") and "135M" in note, path.name
        assert all(len(line) <= 90 for line in note.splitlines()), path.name
        source = path.read_text()
        main = source[source.index("\ndef main(") :]
        assert 'print("\\n" + MODEL_NOTE)' in main, path.name


def test_the_json_checker_finds_what_is_wrong():
    gallery = program_file("steering_json")
    ok = {"name": "Rex", "species": "dog", "age": 3, "vaccinated": True}
    assert gallery.problems(json.dumps(ok)) == []
    for bad in [
        {**ok, "name": "rex"},
        {**ok, "species": "cow"},
        {**ok, "age": 3.5},
        {**ok, "age": True},
        {**ok, "age": 31},
        {**ok, "vaccinated": "yes"},
        {**ok, "owner": "Ann"},
        {k: v for k, v in ok.items() if k != "age"},
    ]:
        assert gallery.problems(json.dumps(bad)), bad
    assert gallery.problems('{"name": "Rex"') and gallery.problems("[1, 2]")


@pytest.mark.slow
def test_lipogram(embedded_lm, capsys):
    gallery = program_file("steering_lipogram")
    out = gallery.main(particles=8, max_tokens=12, plain=8, seed=0, lm=embedded_lm)
    assert "Claim (measured)" in capsys.readouterr().out
    post, plain = out["posterior"], out["plain"]
    assert math.isfinite(post.log_evidence) and post.log_evidence < 0
    texts = positive(post)
    assert texts and out["posterior_kept"] == len(texts)
    for text in texts:
        assert text.isascii() and "e" not in text.lower(), text
    assert out["posterior_obeying"] == len(texts)
    # the plain run is the model without the condition: all its samples count, most break it
    assert len(positive(plain)) == 8
    assert out["plain_obeying"] == sum(gallery.obeys(t) for t in plain.values) < 8


@pytest.mark.slow
def test_prompt_intersection(embedded_lm, capsys):
    gallery = program_file("steering_prompt_intersection")
    out = gallery.main(particles=6, max_tokens=12, seed=0, lm=embedded_lm)
    assert "Claim (measured)" in capsys.readouterr().out
    post = out["posterior"]
    assert math.isfinite(post.log_evidence)
    # the observe terms are log p2 of the text: rescore one posterior text token by token
    best = max(range(len(post.values)), key=lambda i: post.weights[i])
    ctx = embedded_lm.context("My favorite writer is probably")
    log_p2 = 0.0
    for choice in post.traces[best]:
        log_p2 += ctx.next_token().log_prob(choice.value)
        ctx = ctx + choice.value
    assert log_p2 == pytest.approx(post.traces[best].log_likelihood, abs=1e-3)
    # the claim: the posterior's texts are likelier under the second prompt (0.8 nats per token
    # at this seed)
    assert out["posterior_log_p2_per_token"] > out["plain_log_p2_per_token"] + 0.4


@pytest.mark.slow
def test_infilling(embedded_lm, capsys):
    gallery = program_file("steering_infilling")
    out = gallery.main(particles=8, blank_tokens=2, seed=0, lm=embedded_lm)
    assert "Claim (measured)" in capsys.readouterr().out
    post, fragments = out["posterior"], gallery.FRAGMENTS
    assert math.isfinite(post.log_evidence)
    for blanks in positive(post):
        assert len(blanks) == len(fragments) - 1
    # the observe terms are log p(each fragment | the text before it): rescore one particle
    best = max(range(len(post.values)), key=lambda i: post.weights[i])
    tokens = [c.value for c in post.traces[best]]
    ctx = embedded_lm.context(fragments[0])
    log_fragments = 0.0
    for i, fragment in enumerate(fragments[1:]):
        for tok in tokens[2 * i : 2 * i + 2]:
            ctx = ctx + tok
        for tok_id in embedded_lm.encode(fragment, add_special_tokens=False):
            log_fragments += ctx.next_token().log_prob(tok_id)
            ctx = ctx + tok_id
    assert log_fragments == pytest.approx(post.traces[best].log_likelihood, abs=1e-3)
    # the claim: infills that look ahead make the fragments likelier (12 nats at this seed)
    assert out["posterior_log_fragments"] > out["plain_log_fragments"] + 5


@pytest.mark.slow
def test_json(embedded_lm, capsys):
    gallery = program_file("steering_json")
    out = gallery.main(particles=4, max_tokens=32, plain=4, seed=0, lm=embedded_lm)
    assert "Claim (measured)" in capsys.readouterr().out
    post = out["posterior"]
    assert math.isfinite(post.log_evidence) and post.log_evidence < 0
    documents = positive(post)
    assert documents and out["posterior_valid"] == out["posterior_kept"] == len(documents)
    for text in documents:
        assert gallery.problems(text) == [], text
        assert gallery.PET.parse(text)["species"] in {"cat", "dog", "bird", "fish", "rabbit"}
    assert out["plain_valid"] == sum(not gallery.problems(t) for t in out["plain"].values)
    assert out["plain_inside"] >= out["plain_valid"]
