"""`ppl.map` on a local Ray cluster (loopback only): the same results, nothing lost on a crash."""

from __future__ import annotations

import faulthandler
import gc
import importlib
import json
import os
import re
import sys
import threading
import time
import uuid
import warnings

import pytest

import ppl
from ppl.workloads.cluster import WorkersLost
from tests.workloads.toy import (
    INPUTS,
    aborts,
    exits,
    letters,
    locked,
    same_run,
    slow_letters,
)

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")]


@pytest.fixture(scope="module")
def cluster():
    # a hung cluster must not hang the suite: dump the stacks and stop after 5 minutes
    faulthandler.dump_traceback_later(300, exit=True)
    with warnings.catch_warnings():
        # JAX warns at every fork; Ray's forks go on to exec its own processes
        warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}},
        )
    try:
        yield
    finally:
        ray.shutdown()
        faulthandler.cancel_dump_traceback_later()


# two workers of half a CPU each: on two cores they leave room for the driver
WORKERS = {"workers": 2, "resources": {"num_cpus": 0.5}}


@pytest.mark.parametrize("method,options", [(ppl.smc, {"particles": 4}), (ppl.mh, {"chains": 2})])
def test_ray_gives_the_in_process_results(cluster, method, options):
    here = ppl.map(method, letters, INPUTS, in_flight=3, **options)
    there = ppl.map(method, letters, INPUTS, in_flight=3, cluster="ray", **WORKERS, **options)
    assert there.ok and there.stats["workers"] == 2
    for i, (a, b) in enumerate(zip(here, there)):
        assert same_run(a, b), f"item {i} differs"


def test_failing_items_come_back_with_their_traceback(cluster):
    with pytest.warns(ppl.InferenceWarning, match="1 of 2"):
        out = ppl.map(ppl.smc, letters, [("ab",), ("cbc",)], particles=2, cluster="ray", **WORKERS)
    assert out[1].error == "ValueError: this input always fails"
    assert "Traceback" in out[1].traceback and out[0].values


def test_a_killed_worker_is_replaced_and_its_items_retried(cluster, tmp_path):
    path = tmp_path / "run.jsonl"
    killed = []

    def kill_a_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if path.exists() and path.read_bytes().count(b"\n") >= 1:
                names = [n for n in ray.util.list_named_actors() if n.startswith("ppl-map-")]
                if names:
                    ray.kill(ray.get_actor(sorted(names)[0]), no_restart=False)
                    killed.append(names[0])
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    out = ppl.map(
        ppl.smc, slow_letters, INPUTS, particles=4, in_flight=2, checkpoint=path, cluster="ray",
        **WORKERS,
    )  # fmt: skip
    killer.join(timeout=10)
    assert killed, "no worker was killed"
    assert out.ok and out.stats["worker_restarts"] >= 1
    indices = [json.loads(line)["index"] for line in path.read_text().splitlines()]
    assert sorted(indices) == list(range(len(INPUTS))), "every item exactly once"
    here = ppl.map(ppl.smc, slow_letters, INPUTS, particles=4, in_flight=2)
    for i, (a, b) in enumerate(zip(here, out)):
        assert same_run(a, b), f"item {i} differs"


def kill_when_written(path, workers: int, no_restart: bool) -> tuple[threading.Thread, list]:
    """Once the checkpoint has a line, kill `workers` of the map's Ray workers."""
    killed = []

    def kill() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if path.exists() and path.read_bytes().count(b"\n") >= 1:
                names = sorted(n for n in ray.util.list_named_actors() if n.startswith("ppl-map-"))
                if names:
                    for name in names[:workers]:
                        ray.kill(ray.get_actor(name), no_restart=no_restart)
                        killed.append(name)
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    return killer, killed


def test_a_worker_gone_for_good_leaves_its_items_to_the_others(cluster, tmp_path):
    path = tmp_path / "run.jsonl"
    killer, killed = kill_when_written(path, 1, no_restart=True)
    out = ppl.map(
        ppl.smc, slow_letters, INPUTS, particles=4, in_flight=2, checkpoint=path, cluster="ray",
        **WORKERS,
    )  # fmt: skip
    killer.join(timeout=10)
    assert killed, "no worker was killed"
    assert out.ok and out.stats["workers_lost"] == 1
    indices = [json.loads(line)["index"] for line in path.read_text().splitlines()]
    assert sorted(indices) == list(range(len(INPUTS))), "every item exactly once"
    here = ppl.map(ppl.smc, slow_letters, INPUTS, particles=4, in_flight=2)
    for i, (a, b) in enumerate(zip(here, out)):
        assert same_run(a, b), f"item {i} differs"


def test_all_workers_gone_stops_the_map_and_a_rerun_resumes(cluster, tmp_path):
    path = tmp_path / "run.jsonl"
    inputs = INPUTS * 2
    killer, killed = kill_when_written(path, 2, no_restart=True)
    with pytest.raises(WorkersLost, match="all 2 Ray workers are gone") as info:
        ppl.map(
            ppl.smc, slow_letters, inputs, particles=4, in_flight=2, checkpoint=path,
            cluster="ray", **WORKERS,
        )  # fmt: skip
    killer.join(timeout=10)
    assert len(killed) == 2
    lines = [json.loads(line) for line in path.read_text().splitlines()]  # each line whole
    assert lines and all(line["status"] == "ok" for line in lines)
    finished = int(re.search(r"(\d+) of the 24 items", str(info.value)).group(1))
    assert finished == len(lines) == len({line["index"] for line in lines}) < len(inputs)
    assert "rerun with the same checkpoint" in str(info.value).lower()
    again = ppl.map(ppl.smc, slow_letters, inputs, particles=4, in_flight=2, checkpoint=path)
    assert again.ok and again.stats["resumed"] == len(lines)
    here = ppl.map(ppl.smc, slow_letters, inputs, particles=4, in_flight=2)
    for i, (a, b) in enumerate(zip(here, again)):
        assert same_run(a, b), f"item {i} differs"


def test_an_item_that_kills_its_worker_fails_alone(cluster):
    # retries=1: its chunk dies once, then each of its items runs alone; it dies once more
    with pytest.warns(ppl.InferenceWarning, match="1 of 12"):
        out = ppl.map(
            ppl.smc, exits, INPUTS, particles=4, in_flight=2, retries=1, cluster="ray", **WORKERS
        )
    culprit = [p for (p,) in INPUTS].index("c")
    assert [e.index for e in out.failures] == [culprit]
    assert out[culprit].error.startswith("WorkerDied: the Ray worker running this item died 2 ")
    assert out.stats["worker_restarts"] + out.stats["workers_lost"] == 2  # its two deaths
    here = ppl.map(ppl.smc, slow_letters, INPUTS, particles=4, in_flight=2)
    for i, (a, b) in enumerate(zip(here, out)):
        assert i == culprit or same_run(a, b), f"item {i} differs"


def test_a_result_that_cannot_travel_is_its_items_error(cluster):
    inputs = [("a",), ("b",), ("c",)]
    with pytest.warns(ppl.InferenceWarning, match="1 of 3"):
        out = ppl.map(ppl.smc, locked, inputs, particles=2, cluster="ray", **WORKERS)
    assert out[1].error.startswith(
        "TypeError: item 1's result cannot be sent back from the Ray worker"
    ), out[1].error
    assert "lock" in out[1].error and "Traceback" in out[1].traceback
    here = ppl.map(ppl.smc, locked, inputs, particles=2)
    assert same_run(here[0], out[0]) and same_run(here[2], out[2])


def test_an_error_that_escapes_a_chunk_is_its_items_error(cluster):
    inputs = [("a",), ("b",), ("c",), ("ab",)]
    with pytest.warns(ppl.InferenceWarning, match="2 of 4"):  # "b" and its chunk-mate
        out = ppl.map(ppl.smc, aborts, inputs, particles=2, in_flight=2, cluster="ray", **WORKERS)
    assert [e.index for e in out.failures] == [0, 1]
    assert out[1].error.startswith("Abort: the run of 'b' stops here")
    here = ppl.map(ppl.smc, locked, inputs, particles=2, in_flight=2)  # the same runs but "b"
    assert same_run(here[2], out[2]) and same_run(here[3], out[3])


def test_on_error_raise_stops_the_map_with_chunks_still_running(cluster):
    inputs = [("cbc",), *INPUTS]  # the first chunk fails while the others run
    # the error travels as its text: a RuntimeError that says it
    with pytest.raises(RuntimeError, match="ValueError: this input always fails"):
        ppl.map(
            ppl.smc, letters, inputs, particles=2, in_flight=1, on_error="raise", cluster="ray",
            **WORKERS,
        )  # fmt: skip
    gc.collect()  # the map's generators, and with them its workers
    deadline = time.monotonic() + 30
    while [n for n in ray.util.list_named_actors() if n.startswith("ppl-map-")]:
        assert time.monotonic() < deadline, "the workers outlived the map"
        time.sleep(0.1)


def test_runtime_env_must_be_a_dict(cluster):
    with pytest.raises(TypeError, match="runtime_env must be a dict"):
        ppl.map(ppl.smc, letters, INPUTS[:1], cluster="ray", runtime_env=["x"], **WORKERS)


SHIPPED = """
import ppl
from tests.workloads.toy import lm, with_lm


def shout(text):
    return text.upper()


@ppl.program
def shipped(prompt):
    text = with_lm(lm, prompt, 3)
    return shout(text)
"""


def test_a_module_the_workers_lack_is_named_and_can_be_shipped(cluster, tmp_path):
    # a package on the driver's path, added after the cluster started: not on the workers'
    # (the program's function travels by value, with its source; `shout` by reference)
    name = f"ppl_shipped_{uuid.uuid4().hex[:8]}"
    package = tmp_path / "code" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(SHIPPED)
    sys.path.insert(0, str(tmp_path / "code"))
    try:
        module = importlib.import_module(name)
        inputs = INPUTS[:3]
        with pytest.raises(RuntimeError, match=f"cannot import the module '{name}'") as info:
            ppl.map(ppl.smc, module.shipped, inputs, particles=2, cluster="ray", **WORKERS)
        assert f"runtime_env={{'py_modules': [{str(package)!r}]}}" in str(info.value)
        assert "working_dir" in str(info.value)
        there = ppl.map(
            ppl.smc, module.shipped, inputs, particles=2, cluster="ray",
            runtime_env={"py_modules": [str(package)]}, **WORKERS,
        )  # fmt: skip
        here = ppl.map(ppl.smc, module.shipped, inputs, particles=2)
        assert there.ok and all(same_run(a, b) for a, b in zip(here, there))
    finally:
        sys.path.remove(str(tmp_path / "code"))
        sys.modules.pop(name, None)
