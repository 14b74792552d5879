"""`ppl.map` on a local Ray cluster (loopback only): the same results, nothing lost on a crash."""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import threading
import time
import warnings

import pytest

import ppl
from tests.workloads.toy import INPUTS, letters, same_run, slow_letters

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
