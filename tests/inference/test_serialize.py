"""The JSON form of a Posterior: strict JSON, one line when compact, and every field back."""

from __future__ import annotations

import collections
import dataclasses
import fractions
import json
import math

import numpy as np
import pytest

import ppl
from ppl import condition, program, sample
from ppl.inference import InferenceWarning
from ppl.inference.serialize import (
    PickleRefusedError,
    SaveError,
    TokenRecord,
    from_jsonable,
    to_jsonable,
)
from ppl.models import FunctionLM
from ppl.trace import Trace
from tests.inference.toy import no_double_a, rated_text, toy_lm


def same(a, b) -> bool:
    """Equal and of the same type, all the way down (arrays: dtype, shape, NaN where NaN).

    A Token is the same as a TokenRecord of its id, bytes and EOS flag: that is what loading
    promises for tokens.
    """
    if isinstance(a, ppl.Token):
        return type(b) is TokenRecord and b == a and (b.bytes, b.is_eos) == (a.bytes, a.is_eos)
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        if (a.dtype, a.shape) != (b.dtype, b.shape):
            return False
        if a.dtype == object:
            return all(same(x, y) for x, y in zip(a.ravel(), b.ravel()))
        return np.array_equal(a, b, equal_nan=a.dtype.kind in "fcmM")
    if isinstance(a, (float, np.floating)) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


def same_trace(a, b) -> bool:
    if type(a) is not type(b) or len(a) != len(b):
        return False
    if isinstance(a, Trace) and a.log_likelihood != b.log_likelihood:
        return False
    return all(
        (x.site, x.name, x.log_prob, x.address) == (y.site, y.name, y.log_prob, y.address)
        and same(x.value, y.value)
        for x, y in zip(a, b)
    )


def assert_same_posterior(a: ppl.Posterior, b: ppl.Posterior) -> None:
    for f in dataclasses.fields(ppl.Posterior):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "traces":
            assert len(x) == len(y) and all(same_trace(s, t) for s, t in zip(x, y)), f.name
        elif f.name == "ancestors":
            assert len(x) == len(y) and all(same(np.asarray(s), t) for s, t in zip(x, y))
        else:
            assert same(x, y), (f.name, x, y)


def round_trip(post: ppl.Posterior) -> ppl.Posterior:
    text = json.dumps(post.to_dict(), allow_nan=False)
    assert len(text.splitlines()) == 1  # one JSONL line, whatever the values hold
    return ppl.Posterior.from_dict(json.loads(text))


# -- values --------------------------------------------------------------------------------------

Pair = collections.namedtuple("Pair", "left right")

VALUES = [
    None,
    True,
    -(2**70),
    1.5,
    math.inf,
    -math.inf,
    math.nan,
    "two\nlines\u2028and a separator",
    [1, (2.5, "x"), [None]],
    (),
    {"a": (1, 2), "b": {"c": [math.inf]}},
    {1: "one", (2, 3): [4], None: "none"},
    {"__ppl__": "a user's key that looks like a tag"},
    b"\x00\xff bytes",
    np.int64(3),
    np.float32(0.25),
    np.float64(-np.inf),
    np.bool_(True),
    np.str_("s"),
    np.array([[1.0, -np.inf], [np.nan, 2.0]]),
    np.arange(6, dtype=np.int32).reshape(2, 3),
    np.array([True, False]),
    np.array(["a", "bc"]),
    np.zeros((0, 3), dtype=np.float32),
    np.array(7, dtype=np.uint8),
    np.array([{"k": (1,)}, None, np.int16(2)], dtype=object),
    np.array([1 + 2j, complex(np.nan, -np.inf)]),
    np.array([[0.5j]], dtype=np.complex64),
    np.complex128(1 - 1j),
    complex(1, -1),
    np.array(["2020-01-01", "NaT"], dtype="datetime64[D]"),
    np.array([3, -1], dtype=">m8[ms]"),
    np.datetime64("2021-03-04T05:06"),
]

# values JSON cannot hold: saved as pickles, only with allow_pickle=True on both sides
PICKLED = [
    fractions.Fraction(1, 3),
    Pair(1, "b"),
    collections.OrderedDict(b=1, a=2),
    np.array([b"ab", b"c"]),
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_values_come_back_equal_and_of_the_same_type(value):
    text = json.dumps(to_jsonable(value), allow_nan=False)
    assert "pickle" not in text
    assert same(value, from_jsonable(json.loads(text)))


@pytest.mark.parametrize("value", PICKLED, ids=lambda v: type(v).__name__)
def test_other_values_need_allow_pickle_on_both_sides(value):
    with pytest.raises(SaveError, match="allow_pickle=True") as refused:
        to_jsonable(value)
    assert isinstance(refused.value, TypeError) and refused.value.needs_pickle
    text = json.dumps(to_jsonable(value, allow_pickle=True), allow_nan=False)
    with pytest.raises(PickleRefusedError, match="allow_pickle=True"):
        from_jsonable(json.loads(text))
    assert same(value, from_jsonable(json.loads(text), allow_pickle=True))


def test_json_values_are_written_as_themselves():
    value = {"text": "abc", "n": 3, "x": -0.5, "flags": [True, None], "nested": {"k": []}}
    assert to_jsonable(value) == value
    assert to_jsonable(math.inf) == {"__ppl__": "float", "value": "inf"}
    assert to_jsonable((1, 2)) == {"__ppl__": "tuple", "items": [1, 2]}


def test_jax_arrays_come_back_as_numpy_arrays():
    import jax.numpy as jnp

    value = jnp.array([[0.5, 1.5]], dtype=jnp.float32)
    back = from_jsonable(json.loads(json.dumps(to_jsonable(value), allow_nan=False)))
    assert same(np.asarray(value), back)


def test_tokens_come_back_as_records_equal_to_the_token():
    eos = toy_lm.token(toy_lm.vocab_size - 1)
    for tok in (toy_lm.token(1), eos):
        back = from_jsonable(json.loads(json.dumps(to_jsonable(tok))))
        assert isinstance(back, TokenRecord)
        assert back == tok and tok == back and back == tok.id and hash(back) == hash(tok)
        assert (back.text, back.is_eos, int(back)) == (tok.text, tok.is_eos, tok.id)
    assert eos.is_eos and to_jsonable(eos)["eos"] is True
    assert from_jsonable(to_jsonable(toy_lm.token(1))) != toy_lm.token(2)
    assert (toy_lm.context("") + int(back)).text == (toy_lm.context("") + eos).text


def test_a_token_holding_part_of_a_character_keeps_its_bytes():
    lm = FunctionLM(["a", b"\xe2\x82", b"\xac", "<eos>"], lambda p: [0.25] * 4, eos="<eos>")
    tok = lm.token(1)
    back = from_jsonable(json.loads(json.dumps(to_jsonable(tok))))
    assert back.bytes == b"\xe2\x82" and back == tok and back.text == "\ufffd"


def test_values_that_cannot_be_saved_say_why():
    for allow_pickle in (False, True):
        with pytest.raises(TypeError, match="language model"):
            to_jsonable(toy_lm.context("ab"), allow_pickle=allow_pickle)
        with pytest.raises(TypeError, match="cannot be pickled") as refused:
            to_jsonable(lambda x: x, allow_pickle=allow_pickle)
        assert not refused.value.needs_pickle and "allow_pickle" not in str(refused.value)


def test_pickled_values_can_be_refused():
    obj = to_jsonable(fractions.Fraction(1, 3), allow_pickle=True)
    assert obj["__ppl__"] == "pickle" and obj["repr"] == "Fraction(1, 3)"
    with pytest.raises(ValueError, match="allow_pickle"):
        from_jsonable(obj)
    with pytest.raises(ValueError, match="allow_pickle"):
        from_jsonable(obj, allow_pickle=False)
    assert from_jsonable({"a": [1, (2,)]}, allow_pickle=False) == {"a": [1, (2,)]}


# -- posteriors ----------------------------------------------------------------------------------


@program
def shapes():
    """Return values of many types: dicts with int keys, tuples, numpy arrays, tokens, None."""
    ctx = toy_lm.context("")
    tok = sample(ctx.next_token())
    if tok.is_eos:
        return None
    k = tok.id
    return {
        "text": tok.text,
        "ids": (k, k + 1),
        "arr": np.arange(k, dtype=np.float32),
        "by_id": {k: [k, np.int64(k)]},
        "token": tok,
    }


@program
def impossible():
    tok = sample(toy_lm.context("").next_token())
    condition(False)
    return tok.text


RUNS = {
    "smc": lambda: ppl.smc(no_double_a, particles=8, ess_threshold=0.9, seed=1, record=True),
    "importance": lambda: ppl.importance(no_double_a, particles=8, seed=2),
    "mh": lambda: ppl.mh(no_double_a, chains=2, steps=6, seed=3),
    "importance_values": lambda: ppl.importance(shapes, particles=12, seed=3),
    "smc_numpyro": lambda: ppl.smc(rated_text, particles=6, ess_threshold=0.9, seed=(5, 6)),
    "mh_numpyro": lambda: ppl.mh(rated_text, chains=2, steps=4, seed=7),
}


@pytest.mark.parametrize("name", RUNS)
def test_runs_come_back_field_by_field(name):
    post = RUNS[name]()
    assert_same_posterior(post, round_trip(post))


def test_the_runs_exercise_what_the_format_must_hold():
    smc = RUNS["smc"]()
    assert smc.resampled and smc.ancestors and smc.history is not None
    assert all(isinstance(t, Trace) for t in smc.traces)
    values = RUNS["importance_values"]().values
    assert None in values and any(isinstance(v, dict) for v in values)
    mh = RUNS["mh"]()
    assert mh.chain is not None and mh.acceptance is not None
    assert all(type(t) is list for t in mh.traces)  # MH keeps plain lists of choices
    assert RUNS["smc_numpyro"]().stats["seed"] == (5, 6)


def test_a_run_where_every_particle_is_rejected_comes_back():
    with pytest.warns(InferenceWarning, match="zero weight"):
        post = ppl.smc(impossible, particles=4, seed=0)
    assert post.log_evidence == -math.inf and post.failure
    d = post.to_dict()
    assert d["log_evidence"] == "-inf" and d["log_weights"] == ["-inf"] * 4
    back = round_trip(post)
    assert_same_posterior(post, back)
    assert back.failure == post.failure and back.summary() == post.summary()


def test_the_dict_has_every_field_and_says_what_it_is():
    post = RUNS["importance"]()
    d = post.to_dict()
    assert {f.name for f in dataclasses.fields(ppl.Posterior)} <= set(d)
    assert (d["format"], d["version"], d["ppl_version"]) == ("ppl.posterior", 1, ppl.__version__)
    assert len(d["sites"]) == 1  # every token is drawn by one statement, written once
    assert d["sites"][0]["source"] == "tok = sample(ctx.next_token())"


def test_saving_a_loaded_posterior_gives_the_same_dict():
    post = RUNS["importance_values"]()
    d = json.loads(json.dumps(post.to_dict(), allow_nan=False))
    assert ppl.Posterior.from_dict(d).to_dict() == d


def test_save_and_load_through_a_file(tmp_path):
    post = RUNS["smc"]()
    path = tmp_path / "run.json"
    post.save(path)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("{\n") and json.loads(text)["format"] == "ppl.posterior"
    back = ppl.Posterior.load(path)
    assert_same_posterior(post, back)
    assert back.summary() == post.summary()
    assert same(back.samples(5, seed=0), post.samples(5, seed=0))


def test_a_posterior_with_non_finite_floats_everywhere_is_strict_json(tmp_path):
    post = ppl.Posterior(
        method="custom",
        values=[math.nan, (1, math.inf), np.array([np.nan])],
        log_weights=np.array([-np.inf, 0.0, np.nan]),
        log_evidence=math.nan,
        ess=np.array([np.inf]),
        stats={"seed": (1, 2), "seconds": math.inf},
        acceptance=np.array([np.nan]),
        chain=np.array([0, 0, 1]),
    )
    path = tmp_path / "odd.json"
    post.save(path)
    assert_same_posterior(post, ppl.Posterior.load(path))


def test_loading_something_else_names_the_file(tmp_path):
    other = tmp_path / "other.json"
    other.write_text('{"format": "something"}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"other\.json.*not a ppl posterior"):
        ppl.Posterior.load(other)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("not json at all", encoding="utf-8")
    with pytest.raises(ValueError, match=r"garbage\.json.*not a ppl posterior"):
        ppl.Posterior.load(garbage)
    d = RUNS["importance"]().to_dict()
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**d, "version": 99}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"newer\.json.*version 99"):
        ppl.Posterior.load(newer)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**d, "traces": [{"nothing": []}]}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json.*malformed"):
        ppl.Posterior.load(broken)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({k: v for k, v in d.items() if k != "ess"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"partial\.json.*missing ess"):
        ppl.Posterior.load(partial)


# -- a JSON-schema run, and ArviZ's netCDF -------------------------------------------------------

JSON_VOCAB = ["<s>", "{", "}", '"n"', '"tags"', ":", ",", "1", "2", "[", "]", '"x"', "<eos>"]
json_lm = FunctionLM(JSON_VOCAB, lambda prefix: [0.0] + [1.0 / 12] * 12, eos="<eos>", bos="<s>")
RECORD = ppl.JSONSchema(
    {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 1, "maximum": 2},
            "tags": {"type": "array", "items": {"const": "x"}, "maxItems": 1},
        },
        "required": ["n", "tags"],
        "additionalProperties": False,
    }
)


@program
def json_record():
    text = ppl.generate(json_lm.context(""), RECORD, max_tokens=12)
    return RECORD.parse(text)


def test_a_json_schema_run_comes_back_with_its_dict_values(tmp_path):
    post = ppl.smc(json_record, particles=12, seed=5)
    kept = [v for v, w in zip(post.values, post.weights) if w > 0]
    assert kept and all(isinstance(v, dict) and v["n"] in (1, 2) for v in kept)
    post.save(tmp_path / "json.json")
    back = ppl.Posterior.load(tmp_path / "json.json")
    assert_same_posterior(post, back)
    assert back.distribution() == post.distribution()
    assert all(key.startswith('{"n": ') for key in back.distribution())
    assert back.summary() == post.summary()


def test_arviz_results_save_as_netcdf(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    for post in (RUNS["mh_numpyro"](), RUNS["smc_numpyro"]()):
        data = post.to_arviz()
        path = tmp_path / f"{post.method}.nc"
        data.to_netcdf(str(path))
        back = arviz.from_netcdf(str(path))
        assert set(back.posterior.data_vars) == set(data.posterior.data_vars) >= {"rate"}
        np.testing.assert_array_equal(back.posterior["rate"].values, data.posterior["rate"].values)
        assert back.posterior["rate"].shape == data.posterior["rate"].shape
