"""The checkpoint of `ppl.map`: every finished item is on disk, and a rerun resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ppl
from ppl.workloads import ItemError
from tests.workloads.toy import INPUTS, letters, same_run

ROOT = Path(__file__).resolve().parents[2]

# a run slow enough to be killed half way: each row of each forward pass takes 20 ms
SLOW_RUN = """
import sys
sys.path.insert(0, {root!r})
import ppl
from tests.workloads import toy
toy.DELAY[0] = 0.02
ppl.map(ppl.smc, toy.letters, toy.INPUTS, particles=4, in_flight=2, checkpoint={path!r})
"""


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_finished_item_is_written_and_a_rerun_returns_it(tmp_path):
    path = tmp_path / "run.jsonl"
    first = ppl.map(ppl.smc, letters, INPUTS, particles=4, checkpoint=path)
    records = lines(path)
    assert sorted(r["index"] for r in records) == list(range(len(INPUTS)))
    assert all(r["status"] == "ok" for r in records)
    again = ppl.map(ppl.smc, letters, INPUTS, particles=4, checkpoint=path)
    assert again.stats["resumed"] == len(INPUTS) and len(lines(path)) == len(INPUTS)
    for a, b in zip(first, again):
        assert same_run(a, b) and a.traces == b.traces and a.stats == b.stats


def test_a_run_killed_half_way_resumes_with_one_result_per_input(tmp_path):
    path = tmp_path / "run.jsonl"
    script = SLOW_RUN.format(root=str(ROOT), path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while not (path.exists() and len(path.read_bytes().splitlines()) >= 3):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no item finished in 120 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    complete = path.read_bytes().rsplit(b"\n", 1)[0].decode().splitlines()
    done_before = [json.loads(line)["index"] for line in complete]
    assert 3 <= len(done_before) < len(INPUTS), "killed half way"
    resumed = ppl.map(ppl.smc, letters, INPUTS, particles=4, in_flight=2, checkpoint=path)
    assert resumed.stats["resumed"] >= 3
    indices = [r["index"] for r in lines(path)]
    assert sorted(indices) == list(range(len(INPUTS))), "every input exactly once"
    assert indices[: len(done_before)] == done_before  # what was written stays
    whole = ppl.map(ppl.smc, letters, INPUTS, particles=4, in_flight=2)
    for i, (a, b) in enumerate(zip(whole, resumed)):
        assert same_run(a, b), f"item {i} differs from the uninterrupted run"


def test_a_line_cut_off_by_a_kill_is_run_again(tmp_path):
    path = tmp_path / "run.jsonl"
    ppl.map(ppl.smc, letters, INPUTS[:3], particles=3, checkpoint=path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # the last line loses its end
    out = ppl.map(ppl.smc, letters, INPUTS[:3], particles=3, checkpoint=path)
    assert out.stats["resumed"] == 2 and out.ok
    assert sorted(r["index"] for r in lines(path)) == [0, 1, 2]


def test_failed_items_are_recorded_then_run_again(tmp_path):
    path = tmp_path / "run.jsonl"
    inputs = [("ab",), ("cbc",)]
    with pytest.warns(ppl.InferenceWarning, match="1 of 2"):
        ppl.map(ppl.smc, letters, inputs, particles=2, checkpoint=path)
    failed = [r for r in lines(path) if r["status"] == "error"]
    assert len(failed) == 1 and failed[0]["index"] == 1
    assert "ValueError: this input always fails" in failed[0]["error"]
    assert "Traceback" in failed[0]["traceback"]
    with pytest.warns(ppl.InferenceWarning, match="1 of 2"):
        again = ppl.map(ppl.smc, letters, inputs, particles=2, checkpoint=path)
    assert again.stats["resumed"] == 1 and isinstance(again[1], ItemError)
    assert [r["index"] for r in lines(path)] == [0, 1, 1]


@pytest.mark.parametrize(
    "change,message",
    [
        ({"inputs": [("ab",), ("ba",), ("bb",)]}, "input 2 differs"),
        ({"particles": 5}, "other work; what changed: option 'particles'"),
        ({"seed": 1}, r"other work; what changed: the seed \(0 then, 1 now\)"),
    ],
)
def test_a_checkpoint_of_another_run_is_refused(tmp_path, change, message):
    path = tmp_path / "run.jsonl"
    settings = {"inputs": [("ab",), ("ba",), ("cb",)], "particles": 3, "seed": 0}
    ppl.map(ppl.smc, letters, settings["inputs"], particles=3, seed=0, checkpoint=path)
    settings.update(change)
    with pytest.raises(ValueError, match=message):
        ppl.map(
            ppl.smc,
            letters,
            settings["inputs"],
            particles=settings["particles"],
            seed=settings["seed"],
            checkpoint=path,
        )


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text('{"hello": 1}\n')
    with pytest.raises(ValueError, match="line 1: not a ppl.map checkpoint"):
        ppl.map(ppl.smc, letters, INPUTS, particles=2, checkpoint=path)
