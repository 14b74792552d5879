"""No benchmark rots: every script in `benchmarks/` runs at a tiny size and prints its table.

Each script runs with `--smoke` (tiny sizes on a tiny model: `benchmarks/_smoke.py`) in its own
process, as a user runs it, and must exit 0 and print its table's header. Files it writes go
to a temporary folder, never to `benchmarks/results/`. A new script without a case in `SMOKE`
fails `test_every_script_has_a_smoke_run`.

The runs start together when the module's first test asks for them, two at a time (the longest
first), so the whole file takes about half the sum of their times.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"
TIMEOUT = 240  # seconds for one script


@dataclass(frozen=True)
class Smoke:
    """How to run one script tiny: its arguments (`{tmp}`: a fresh temporary folder, `{suite}`:
    a two-group JSON Schema test suite) and a word of the table's header it must print."""

    args: tuple[str, ...]
    header: str
    seconds: int = 15  # about what it takes alone on 2 cores; the longest start first
    slow: bool = False


SMOKE = {
    "constraint_speed.py": Smoke(("--smoke",), "of which draws"),
    "contention.py": Smoke(("--smoke",), "busy/quiet", 20),
    "distortion.py": Smoke(("--smoke", "--plot", "{tmp}/distortion.png"), "KL(Q || P)"),
    "inference_compare.py": Smoke(("--smoke",), "| method"),
    "kv_memory.py": Smoke(("--smoke",), "reserved MB", 20),
    "llamppl_side_by_side.py": Smoke(("--smoke",), "LLaMPPL s"),
    "many_inputs.py": Smoke(("--smoke",), "items/s"),
    "relaxed_efficiency.py": Smoke(("--smoke",), "runs with a valid text"),
    "scheduler_overhead.py": Smoke(("--smoke",), "microseconds per particle-step"),
    "schema_suite.py": Smoke(("{suite}", "--smoke", "--json", "{tmp}/out.json"), "== summary =="),
    # a server, its model and its compile workers: three processes start
    "serve_load.py": Smoke(("--smoke",), "| concurrency | req/s", 60, slow=True),
    "smc_vs_generate.py": Smoke(("--smoke",), "generate s", 20),
    "step_modes.py": Smoke(("--smoke",), "compiled ms", 20),
}

SUITE = [
    {
        "description": "an integer",
        "schema": {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "integer"},
        "tests": [
            {"description": "one", "data": 1, "valid": True},
            {"description": "a string", "data": "a", "valid": False},
        ],
    },
    {
        "description": "an object with a short name",
        "schema": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 4}},
            "required": ["name"],
            "additionalProperties": False,
        },
        "tests": [
            {"description": "named", "data": {"name": "ab"}, "valid": True},
            {"description": "unnamed", "data": {}, "valid": False},
        ],
    },
]


@dataclass
class Run:
    command: list[str]
    returncode: int
    output: str
    seconds: float


def scripts() -> list[str]:
    """The benchmark scripts: every `benchmarks/*.py` but the helpers (`_smoke.py`)."""
    return sorted(p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


def results_state() -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in RESULTS.rglob("*") if p.is_file()}


def run(name: str, folder: Path) -> Run:
    folder.mkdir()
    suite = folder / "suite"
    suite.mkdir()
    (suite / "tiny.json").write_text(json.dumps(SUITE))
    args = [a.format(tmp=folder, suite=suite) for a in SMOKE[name].args]
    command = [sys.executable, str(BENCHMARKS / name), *args]
    # one thread each: two runs share the 2 cores, and tiny models gain nothing from more
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    # a session of its own: on a time-out the script and whatever it started (a server) end
    process = subprocess.Popen(
        command,
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        output += f"\n(killed after {TIMEOUT} s)"
    return Run(command, process.returncode, output, time.perf_counter() - start)


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory):
    """The smoke run of every script selected in this session, started together, two at a time."""
    selected = {
        item.callspec.params["name"]
        for item in request.session.items
        if item.module is sys.modules[__name__] and hasattr(item, "callspec")
    }
    pool = ThreadPoolExecutor(2)
    folder = tmp_path_factory.mktemp("benchmarks")
    before = results_state()
    runs: dict[str, Future[Run]] = {
        name: pool.submit(run, name, folder / name.removesuffix(".py"))
        for name in sorted(selected, key=lambda n: -SMOKE[n].seconds)
    }
    yield runs
    pool.shutdown(cancel_futures=True)
    assert results_state() == before, "a smoke run wrote to benchmarks/results/"


def test_every_script_has_a_smoke_run():
    missing = [name for name in scripts() if name not in SMOKE]
    assert not missing, f"add a smoke run to SMOKE in {__file__} for: {', '.join(missing)}"
    assert not set(SMOKE) - set(scripts()), "SMOKE names a script that is gone"


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if SMOKE[n].slow else n for n in sorted(SMOKE)],
)
def test_script_runs_tiny_and_prints_its_table(name, smoke_runs):
    result = smoke_runs[name].result()
    shown = f"$ {' '.join(result.command)}  ({result.seconds:.0f} s)\n{result.output[-6000:]}"
    assert result.returncode == 0, shown
    assert SMOKE[name].header in result.output, shown
