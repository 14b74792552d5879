"""`Posterior.summary()` and `distribution()` read well for every method and every kind of value."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import numpyro.distributions as nd
import pytest

import ppl
from ppl import condition, program, sample
from ppl.inference.summary import canonical, in_words, weighted_quantiles
from ppl.models import FunctionLM
from tests.inference.toy import no_double_a, rated_text


def value_rows(text: str) -> list[tuple[float, int, str]]:
    """(weight, count, first line of the value) of each row of the summary's value table."""
    table = text.split(" weight count  value\n", 1)[1]
    rows = []
    for line in table.splitlines():
        m = re.match(r"^\s*(\d\.\d{3})\s+(\d+)  (.*)$", line)
        if m:
            rows.append((float(m[1]), int(m[2]), m[3]))
        elif not line.startswith(" " * 15) or not line.strip():
            break
    return rows


def test_smc_summary_lists_distinct_values_with_weights_and_counts():
    post = ppl.smc(no_double_a, particles=60, ess_threshold=0.9, seed=4, progress=False)
    text = post.summary(top=50)
    dist = post.distribution()
    counts = Counter(v for v, w in zip(post.values, post.weights) if w > 0)
    alive = sum(counts.values())
    assert f"{len(dist)} distinct values among {alive} samples with positive weight" in text
    rows = value_rows(text)
    assert len(rows) == len(dist)
    for (weight, count, shown), (value, w) in zip(rows, dist.items()):
        assert shown == (value if value else "''")
        assert weight == pytest.approx(w, abs=5e-4) and count == counts[value]
    assert f"log Z = {post.log_evidence:.3f}" in text
    assert f"Z = about 1 in {1 / math.exp(post.log_evidence):.2g}" in text
    ess = post.ess
    assert (
        f"ESS          min {min(ess):.1f}, median {np.median(ess):.1f}, final "
        f"{post.final_ess:.1f} of 60 particles; resampled at {len(post.resampled)} of "
        f"{len(ess)} steps" in text
    )
    assert post.resampled  # the run did resample
    assert text.startswith(f"smc: 60 particles, {post.stats['steps']} steps, ")


def test_top_cuts_the_table_and_says_how_much_weight_is_left():
    post = ppl.smc(no_double_a, particles=60, seed=4, progress=False)
    dist = list(post.distribution().values())
    text = post.summary(top=3)
    assert "; the 3 most probable:" in text and len(value_rows(text)) == 3
    assert f"... {len(dist) - 3} more, total weight {sum(dist[3:]):.3f}" in text


@pytest.mark.parametrize(
    ("log_z", "words"),
    [
        (-math.inf, "zero: no run of the program met its conditions"),
        (math.log(0.9), "0.9"),
        (math.log(1 / 3.1), "about 1 in 3.1"),
        (math.log(1 / 94.2), "about 1 in 94"),
        (math.log(1 / 56_321), "about 1 in 56,000"),
        (math.log(1 / 2.34e6), "about 1 in 2.3 million"),
        (math.log(1 / 7.1e10), "about 1 in 71 billion"),
        (-60.0, "about 1 in 1.1e+26"),
        (-2000.0, "about 1 in e^2000"),
        (math.log(3.0), "3 (above 1: the observations include densities)"),
    ],
)
def test_evidence_in_words(log_z, words):
    assert in_words(log_z) == words


def test_long_texts_are_shown_in_full_wrapped():
    vocab = ["<s>", "word ", "<eos>"]
    lm = FunctionLM(vocab, lambda prefix: [0.0, 0.97, 0.03], eos="<eos>", bos="<s>")

    @program
    def chatter():
        ctx = lm.context("")
        for _ in range(60):
            tok = sample(ctx.next_token())
            ctx = ctx + tok
            if tok.is_eos:
                break
        return ctx.text

    post = ppl.importance(chatter, particles=4, seed=1, progress=False)
    longest = max(post.values, key=len)
    assert len(longest) > 100
    text = post.summary(width=60)
    assert max(len(line) for line in text.splitlines() if "word" in line) <= 60
    assert longest.split().count("word") == len(longest.split())
    joined = " ".join(line.strip() for line in text.splitlines() if line.strip().startswith("word"))
    assert joined.count("word") >= longest.count("word")  # nothing cut off


@program
def person():
    """A JSON-schema-like result: a dict whose key order varies between runs."""
    age = sample("age", nd.Poisson(3.0))
    condition(age > 1)
    tall = sample("tall", ppl.distributions.Bernoulli(0.3))
    if tall:
        return {"name": "Ada", "tags": ["x", "y"], "age": int(age > 4)}
    return {"age": int(age > 4), "tags": ["x", "y"], "name": "Ada"}


def test_dict_values_are_keyed_by_sorted_json():
    post = ppl.importance(person, particles=300, seed=0, progress=False)
    dist = post.distribution()
    assert set(dist) <= {
        '{"age": 0, "name": "Ada", "tags": ["x", "y"]}',
        '{"age": 1, "name": "Ada", "tags": ["x", "y"]}',
    }
    assert len(dist) == 2 and sum(dist.values()) == pytest.approx(1.0)
    young = post.expectation(lambda v: v["age"] == 0)
    assert dist['{"age": 0, "name": "Ada", "tags": ["x", "y"]}'] == pytest.approx(young)
    text = post.summary()
    assert '{"age": 0, "name": "Ada", "tags": ["x", "y"]}' in text
    assert "2 distinct values among" in text
    # the numeric named choice gets a row; the dict-valued return value does not
    assert re.search(r"^age\s+\S+\s+\S+", text, re.M) and not re.search(r"^return ", text, re.M)


def test_canonical_keys():
    assert canonical("text") == "text" and canonical((1, "a")) == (1, "a")
    assert canonical({"b": 1, "a": [2, 3]}) == canonical({"a": [2, 3], "b": 1})
    assert canonical([1, {"z": 0, "y": 1}]) == '[1, {"y": 1, "z": 0}]'
    assert canonical({"a": np.arange(2)}) == '{"a": [0, 1]}'
    assert canonical({1: "int key"}) == '{"1": "int key"}'
    assert canonical([object]) == repr([object])  # not JSON: its repr


def test_numeric_choices_get_weighted_mean_sd_and_quantiles():
    post = ppl.smc(rated_text, particles=200, seed=3, progress=False)
    text = post.summary()
    row = re.search(r"^rate\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)$", text, re.M)
    assert row, text
    mean, sd, q05, q50, q95 = (float(x) for x in row.groups())
    rates = np.array([next(c.value for c in t if c.name == "rate") for t in post.traces])
    w = post.weights
    assert mean == pytest.approx(float(np.dot(w, rates)), rel=1e-3)
    assert sd == pytest.approx(math.sqrt(float(np.dot(w, (rates - np.dot(w, rates)) ** 2))), 1e-3)
    assert q05 <= q50 <= q95 and "numeric" in text and "95%" in text


def test_weighted_quantiles():
    x = np.array([3.0, 1.0, 2.0, 10.0])
    w = np.array([0.2, 0.5, 0.2, 0.1])
    assert weighted_quantiles(x, w, (0.05, 0.5, 0.6, 0.95)) == [1.0, 1.0, 2.0, 10.0]


def test_mcmc_summary_has_acceptance_and_no_evidence():
    post = ppl.mh(no_double_a, chains=2, steps=30, seed=1, progress=False)
    text = post.summary()
    assert text.startswith("mh: 2 chains x 30 steps, 60 samples")
    assert f"acceptance   {post.acceptance_rate:.3f} (per chain: " in text
    assert "log Z" not in text
    assert sum(count for _, count, _ in value_rows(text + "\n")) <= 60


def test_nuts_summary_has_numeric_rows():
    @program
    def normal():
        return sample("mu", nd.Normal(1.0, 2.0))

    post = ppl.nuts(normal, samples=100, warmup=50, seed=0, progress=False)
    text = post.summary()
    assert re.search(r"^mu\s", text, re.M) and re.search(r"^return\s", text, re.M)
    assert "acceptance" in text


def test_a_failed_run_says_so_without_a_value_table():
    @program
    def impossible():
        x = sample("x", nd.Normal(0.0, 1.0))
        condition(x > 100)
        return x

    with pytest.warns(ppl.InferenceWarning):
        post = ppl.importance(impossible, particles=5, seed=0, progress=False)
    text = post.summary()
    assert "FAILED" in text and "Z = zero" in text and "distinct value" not in text
    assert "rejected     5 at " in text


def test_notebooks_show_the_summary():
    post = ppl.importance(no_double_a, particles=5, seed=0, progress=False)
    page = post._repr_html_()
    assert page.startswith("<pre>") and "distinct value" in page and "&lt;" not in post.summary()


def test_misuse_gets_ppl_words():
    post = ppl.importance(no_double_a, particles=10, seed=0, progress=False)
    with pytest.raises(TypeError, match=r"expectation needs numbers.*str.*pass f="):
        post.expectation()
    assert 0 <= post.expectation(lambda text: "b" in text) <= 1
    with pytest.raises(ValueError, match=r"samples\(n\): n must be a whole number >= 0, got -1"):
        post.samples(-1)
    with pytest.raises(ValueError, match="got 2.5"):
        post.samples(2.5)
    assert post.samples(0) == []
