"""Files hold data, not code: nothing is pickled or unpickled unless `allow_pickle=True`, on both
sides; a pickle in a file is refused before it runs. And `Posterior.samples()` is reproducible."""

from __future__ import annotations

import base64
import copy
import fractions
import json
import math
import pathlib
import pickle

import numpy as np
import pytest

import ppl
from ppl import program, sample
from ppl.inference.serialize import PickleRefusedError, SaveError
from ppl.trace import Choice, Trace
from ppl.workloads.checkpoint import _sealed
from tests.inference.toy import no_double_a
from tests.workloads.toy import lm as letters_lm


class Touch:
    """Unpickling this creates the file at `path`: a stand-in for any code a pickle can run."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


def payload(marker: pathlib.Path) -> dict:
    """A pickled value as a file holds it, recording an innocent repr."""
    data = base64.b64encode(pickle.dumps(Touch(marker))).decode("ascii")
    return {"__ppl__": "pickle", "repr": "'just a string'", "base64": data}


def small_posterior(**fields) -> ppl.Posterior:
    base = dict(
        method="custom",
        values=["a", "b"],
        log_weights=np.array([0.0, -1.0]),
        log_evidence=-0.5,
        ess=np.array([1.5]),
        traces=[Trace([Choice(None, "x", 1, -0.5, "x")], 0.0), Trace([], 0.0)],
        stats={"seed": 3},
    )
    base.update(fields)
    return ppl.Posterior(**base)


# -- a pickle in a file is refused before it runs -----------------------------------------------

# where the payload goes in a saved posterior, and how the error names that place
PLACES = {
    "values[1]": lambda d, p: d["values"].__setitem__(1, p),
    "stats['seed']": lambda d, p: d["stats"].__setitem__("seed", p),
    "traces[0][0].value (the choice at address 'x')": lambda d, p: d["traces"][0]["choices"][
        0
    ].__setitem__("value", p),
    "values[0][1]": lambda d, p: d["values"].__setitem__(
        0, {"__ppl__": "ndarray", "dtype": "O", "shape": [2], "data": [1, p]}
    ),
    "values[0]": lambda d, p: d["values"].__setitem__(
        0, {"__ppl__": "scalar", "dtype": "O", "value": p}
    ),
    "diagnostics<a key>": lambda d, p: d.__setitem__(
        "diagnostics", {"__ppl__": "dict", "items": [[p, 1]]}
    ),
    "values[0][1]<a key>": lambda d, p: d["values"].__setitem__(
        0, [0, {"__ppl__": "dict", "items": [[p, 1]]}]
    ),
    "values[1][(1, 2)]": lambda d, p: d["values"].__setitem__(
        1, {"__ppl__": "dict", "items": [[{"__ppl__": "tuple", "items": [1, 2]}, p]]}
    ),
    "history[0]['x'][0]": lambda d, p: d.__setitem__(
        "history", [{"x": {"__ppl__": "tuple", "items": [p]}}]
    ),
}


@pytest.mark.parametrize("place", PLACES)
def test_a_pickle_in_a_saved_posterior_is_refused_and_never_runs(tmp_path, place):
    marker = tmp_path / "ran"
    d = json.loads(json.dumps(small_posterior().to_dict()))
    PLACES[place](d, payload(marker))
    path = tmp_path / "from-someone.json"
    path.write_text(json.dumps(d), encoding="utf-8")

    with pytest.raises(PickleRefusedError) as refused:
        ppl.Posterior.load(path)
    message = str(refused.value)
    assert str(path) in message and f"{place} is a pickled value" in message
    assert "\"'just a string'\"" in message  # the repr the file records, as text
    assert "allow_pickle=True" in message and "never for a file from someone else" in message
    assert isinstance(refused.value, ValueError) and refused.value.where == place
    with pytest.raises(PickleRefusedError):
        ppl.Posterior.from_dict(d)
    assert not marker.exists(), "the pickle ran"

    # the payload is live: what allow_pickle=True does with it (so the test would catch a run)
    ppl.Posterior.load(path, allow_pickle=True)
    assert marker.exists()


def test_a_pickle_in_a_checkpoint_is_refused_with_its_line_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "run.jsonl"
    inputs = [("a",), ("ab",), ("b",)]
    first = ppl.map(ppl.smc, letters_program, inputs, particles=3, checkpoint=path)
    assert first.ok
    lines = path.read_text().splitlines()
    record = json.loads(lines[1])
    record["posterior"]["values"][2] = payload(marker)
    del record["check"]
    # the line's checksum is no secret: a crafted file carries a matching one
    lines[1] = _sealed(json.dumps(record, separators=(",", ":")).encode()).decode()
    path.write_text("\n".join(lines) + "\n")
    before = path.read_bytes()

    with pytest.raises(PickleRefusedError) as refused:
        ppl.map(ppl.smc, letters_program, inputs, particles=3, checkpoint=path)
    message = str(refused.value)
    index = record["index"]
    assert f"checkpoint {path}, line 2: item {index}'s values[2] is a pickled value" in message
    assert "'just a string'" in message and "ppl.map(..., allow_pickle=True)" in message
    assert not marker.exists(), "the pickle ran"
    assert path.read_bytes() == before, "refusing the file changed it"

    again = ppl.map(
        ppl.smc, letters_program, inputs, particles=3, checkpoint=path, allow_pickle=True
    )
    assert marker.exists() and again.stats["resumed"] == 3


# -- values JSON cannot hold are refused when saved ---------------------------------------------


@pytest.mark.parametrize(
    "fields,where",
    [
        ({"values": ["a", fractions.Fraction(1, 3)]}, "values[1]"),
        ({"stats": {"seed": 3, "x": [fractions.Fraction(1, 3)]}}, "stats['x'][0]"),
        (
            {"traces": [Trace([Choice(None, "x", fractions.Fraction(1, 3), 0.0, "x")], 0.0)]},
            "traces[0][0].value (the choice at address 'x')",
        ),
        ({"history": [{"states": (1, np.array([b"raw"]))}]}, "history[0]['states'][1]"),
    ],
)
def test_saving_a_value_json_cannot_hold_names_it_and_writes_nothing(tmp_path, fields, where):
    post = small_posterior(**fields)
    path = tmp_path / "run.json"
    with pytest.raises(SaveError) as refused:
        post.save(path)
    message = str(refused.value)
    assert isinstance(refused.value, TypeError) and refused.value.where == where
    assert message.startswith(f"cannot save {where}: it is a ")
    assert "allow_pickle=True both when saving" in message and "someone else" in message
    assert not path.exists()

    post.save(path, allow_pickle=True)
    with pytest.raises(PickleRefusedError, match=r"allow_pickle=True"):
        ppl.Posterior.load(path)
    back = ppl.Posterior.load(path, allow_pickle=True)
    assert back.to_dict(allow_pickle=True) == post.to_dict(allow_pickle=True)


class Big:
    def __repr__(self):
        return "Big(" + "x" * 1000 + ")"


def test_the_message_shows_the_value_type_and_a_short_repr():
    with pytest.raises(SaveError) as refused:
        small_posterior(values=[Big(), 1]).to_dict()
    assert "values[0]: it is a tests.inference.test_serialize_safety.Big, Big(xxx" in str(
        refused.value
    )
    assert len(refused.value.what) < 300  # the repr is cut


@program
def letters_program(prompt: str):
    ctx = letters_lm.context(prompt)
    for _ in range(3):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        if tok.is_eos:
            break
    if prompt == "ca":  # this input returns what JSON cannot hold
        return fractions.Fraction(len(ctx.text), 7)
    return ctx.text


def test_a_checkpoint_that_cannot_hold_a_result_stops_the_run_and_keeps_what_it_wrote(tmp_path):
    path = tmp_path / "run.jsonl"
    inputs = [("a",), ("ca",), ("b",)]
    with pytest.raises(SaveError) as refused:
        ppl.map(ppl.smc, letters_program, inputs, particles=2, in_flight=1, checkpoint=path)
    message = str(refused.value)
    assert message.startswith(f"ppl.map: item 1's result cannot be written to checkpoint {path}")
    assert "values[0] is a fractions.Fraction" in message
    assert "ppl.map(..., allow_pickle=True)" in message and "someone else" in message
    written = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["index"] for r in written] == [0]  # item 0 stays; nothing of item 1

    # the same run with allow_pickle=True resumes item 0 and writes the rest
    kept = ppl.map(
        ppl.smc, letters_program, inputs, particles=2, in_flight=1, checkpoint=path,
        allow_pickle=True,
    )  # fmt: skip
    assert kept.stats["resumed"] == 1 and kept.ok
    assert isinstance(kept[1].values[0], fractions.Fraction)
    # reading it back needs allow_pickle=True too
    with pytest.raises(PickleRefusedError, match=r"line 2: item 1's values\[0\]"):
        ppl.map(ppl.smc, letters_program, inputs, particles=2, in_flight=1, checkpoint=path)
    again = ppl.map(
        ppl.smc, letters_program, inputs, particles=2, in_flight=1, checkpoint=path,
        allow_pickle=True,
    )  # fmt: skip
    assert again.stats["resumed"] == 3 and again[1].values == kept[1].values


# -- samples() is reproducible ------------------------------------------------------------------


def uniform(n: int, **stats) -> ppl.Posterior:
    return ppl.Posterior(
        method="custom",
        values=list(range(n)),
        log_weights=np.zeros(n),
        log_evidence=0.0,
        ess=np.zeros(0),
        stats=stats,
    )


def test_samples_of_a_seeded_run_are_the_same_every_time(tmp_path):
    post = ppl.importance(no_double_a, particles=16, seed=2)
    assert post.samples(20) == post.samples(20)
    assert ppl.importance(no_double_a, particles=16, seed=2).samples(20) == post.samples(20)
    post.save(tmp_path / "run.json")
    assert ppl.Posterior.load(tmp_path / "run.json").samples(20) == post.samples(20)
    assert post.samples(5, seed=0) == post.samples(5, seed=0)

    for seed in (3, (3, 1), 2**100):
        a = uniform(1000, seed=seed)
        assert a.samples(50) == a.samples(50) == copy.deepcopy(a).samples(50)
        assert a.samples(50, seed=1) != a.samples(50)  # seed= chooses other draws
    assert uniform(1000, seed=3).samples(50) != uniform(1000, seed=4).samples(50)
    assert uniform(1000, seed=(3, 1)).samples(50) != uniform(1000, seed=(3, 2)).samples(50)


def test_samples_of_an_unseeded_run_are_random():
    runs = [ppl.importance(no_double_a, particles=64, seed=None) for _ in range(2)]
    assert runs[0].stats["seed"] != runs[1].stats["seed"]  # the entropy each run drew
    no_seed = uniform(1000)  # nothing recorded: fresh draws on every call
    assert no_seed.samples(50) != no_seed.samples(50)
    assert uniform(1000, seed=None).samples(50) != uniform(1000, seed=None).samples(50)


def test_samples_draw_by_weight():
    post = ppl.Posterior(
        method="custom",
        values=["rare", "common"],
        log_weights=np.log([0.01, 0.99]),
        log_evidence=0.0,
        ess=np.zeros(0),
        stats={"seed": 0},
    )
    draws = post.samples(2000)
    assert math.isclose(draws.count("common") / 2000, 0.99, abs_tol=0.02)
