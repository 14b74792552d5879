"""`ppl.map` on Ray: workers that each build their model once and run the shared step.

Ray does the scheduling, the placement and the restarts; ppl adds only what is its own:

* A worker is a Ray actor (`_Worker`). It builds its model once, from a picklable spec
  (`ppl.models.spec`), and runs the items it is given with `SharedSteps`, exactly as `ppl.map`
  does in one process; item `i` keeps its seed `(seed, i)`, so the results are the same runs.
* Items go to workers in chunks of `in_flight` (the items one worker runs at once); each worker
  holds at most two chunks (one running, one waiting), so a fast worker takes more chunks and
  results come back to the driver, and its checkpoint, chunk by chunk as they finish.
* Each result travels pickled by the worker, item by item: a result that cannot be pickled (a
  lock, a generator) or read back on the driver is that item's error, not its chunk's. An
  exception that escapes a chunk's run (`ray.exceptions.RayTaskError`) makes each of its items
  an error with that message; the map goes on.

No item is lost to a lost worker. Ray restarts a worker that dies (its process killed, its
machine lost) up to `retries` times (`max_restarts`), rebuilding its model; the driver, not Ray,
runs the chunks again (`max_task_retries=0`), so that it sees each death:

* A death is seen as an error on the worker's chunks: `ActorUnavailableError` while Ray restarts
  it, `ActorDiedError` when it is gone for good (killed with `no_restart`, its restarts used up,
  its node gone). A worker in restart gets no chunk until a call to it (`pid`) answers; a worker
  gone for good gets no more chunks (`stats["workers_lost"]`; `stats["worker_restarts"]` counts
  the restarts).
* Every chunk the worker held goes back to the front of the queue, for whichever worker is free.
  The chunk that was running when it died (the oldest it held: a worker runs its chunks in
  order) is charged one death; the one that was waiting is not. An item whose chunks were
  charged more than `retries` deaths comes back as an `ItemError` ("WorkerDied: ..."); on its
  last try (`retries` deaths) each item of a chunk runs in a chunk of its own, so that an item
  that kills its worker (`os._exit`, a crash in native code) fails alone after `retries + 1`
  deaths, and the rest of its chunk runs. Such an item costs at most `retries + 1` deaths, and
  a worker outlives `retries` of them, so by itself it takes down at most one worker. A program
  that calls `sys.exit` (which would end its worker for good) gets a RuntimeError instead.
* When every worker is gone for good and items remain, `run_on_ray` raises `WorkersLost` once
  the results that came back are yielded (and so are in the caller's checkpoint): a rerun with
  the same checkpoint runs only the rest.

Code travels in two ways:

* Programs travel as their function and parsed source (`Program.__reduce__`); the module that
  defines a program is sent by value when it is not importable as a package module (a script,
  a file loaded by the `ppl` command), so workers need not share the driver's files.
* Code a program uses from a package the workers cannot import fails at the workers' start,
  with a message that names the module and how to ship it: `runtime_env={"py_modules": [path]}` or
  `{"working_dir": path}`, Ray's runtime environment for the workers. Ray takes local paths
  only in `ray.init`; for the workers, `run_on_ray` uploads them to the cluster first (as
  `ray.init` does) and gives the workers the uploaded packages.
"""

from __future__ import annotations

import inspect
import itertools
import os
import re
import sys
import tempfile
import time
import traceback
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ppl.compiler import Program
from ppl.workloads.batch import Outcome, SharedSteps
from ppl.workloads.items import _item_job

if TYPE_CHECKING:
    from ppl.workloads.run import MapOptions

Item = tuple[int, tuple, dict[str, Any]]
REPROBE_S = 0.5  # a worker in restart is asked again this often


class WorkersLost(RuntimeError):
    """Every Ray worker of a `ppl.map` is gone for good, with items left to run.

    Raised after every result that came back was returned (and written to the checkpoint).
    """


def run_on_ray(
    settings: MapOptions,
    spec: Any,
    method: Callable[..., Any],
    program: Program,
    items: list[Item],
    options: dict[str, Any],
    stats: dict[str, Any],
) -> Iterator[tuple[int, Outcome]]:
    """Run `items` on Ray workers; yield `(index, Outcome)` as chunks finish.

    `settings` are the map's options (`cluster`, `workers`, `resources`, `retries`, `rows`,
    `in_flight`, `seed`, `runtime_env` are read here); `options` the method's, as each item's
    call takes them; `spec` builds the model in each worker. Counts the workers started,
    restarted and lost for good in `stats` ("workers", "worker_restarts", "workers_lost").
    Raises `WorkersLost` when no worker is left.
    """
    cluster, workers, resources = settings.cluster, settings.workers, settings.resources
    retries, rows, in_flight = settings.retries, settings.rows, settings.in_flight
    seed, runtime_env = settings.seed, settings.runtime_env
    try:
        import ray
    except ImportError:
        raise ImportError(
            "ppl.map(cluster='ray') needs Ray: pip install ray "
            "(in a clone of ppl: pip install -e '.[ray]')"
        ) from None
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"ppl.map: retries must be a non-negative integer, got {retries!r}")
    if runtime_env is not None and not isinstance(runtime_env, dict):
        raise TypeError(
            f"ppl.map: runtime_env must be a dict (Ray's runtime_env, e.g. "
            f"{{'py_modules': [path]}}), got {type(runtime_env).__name__}"
        )
    if not ray.is_initialized():
        with warnings.catch_warnings():
            # JAX warns at every fork; Ray's forks go on to exec its own processes
            warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
            if cluster == "ray":
                ray.init()  # a local cluster, or the one RAY_ADDRESS names
            else:
                ray.init(address=cluster)
    if not items:
        return
    _send_by_value(program)
    resources = dict(resources or {})
    resources.setdefault("num_cpus", 1)
    if workers is None:
        cpus = ray.cluster_resources().get("CPU", 1)
        workers = max(1, int(cpus // max(resources["num_cpus"], 1e-3)))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"ppl.map: workers must be a positive integer, got {workers!r}")
    chunk = in_flight or max(1, (rows or 256) // 16)
    # each chunk with the deaths charged to it (see the module's docstring)
    chunks = deque((0, items[i : i + chunk]) for i in range(0, len(items), chunk))
    workers = min(workers, len(chunks))
    threads = max(1, int(resources["num_cpus"]))
    actor = ray.remote(_Worker)
    run_id = uuid.uuid4().hex[:8]
    settings: dict[str, Any] = dict(max_restarts=retries, max_task_retries=0, **resources)
    if runtime_env:
        settings["runtime_env"] = _uploaded(runtime_env)
    pool = [
        actor.options(name=f"ppl-map-{run_id}-{w}", **settings).remote(
            spec, rows, chunk, threads, method, program, seed, options
        )
        for w in range(workers)
    ]
    try:  # each worker up, its model built: a spec that cannot be built fails here, once
        pids = ray.get([handle.pid.remote() for handle in pool])  # the process of each worker
    except ray.exceptions.RayError as e:
        for handle in pool:
            ray.kill(handle)
        raise RuntimeError(_start_failure(e, program)) from None
    stats.update(workers=workers, worker_restarts=0, workers_lost=0)
    order = itertools.count()  # calls in the order they were made
    # a chunk's call -> (worker, order, deaths, chunk); a call to a worker in restart -> (w, order)
    running: dict[Any, tuple[int, int, int, list[Item]]] = {}
    probes: dict[Any, tuple[int, int]] = {}
    reprobe: dict[int, float] = {}  # worker in restart -> when to ask it again
    state = ["up"] * workers  # "up", "down" (in restart) or "gone" (for good)
    charged = [-1] * workers  # the order of the chunk each worker ran at its latest death
    load = [0] * workers
    finished = 0
    last_loss = ""

    def submit() -> None:
        for w in range(workers):
            while state[w] == "up" and chunks and load[w] < 2:
                deaths, part = chunks.popleft()
                running[pool[w].run.remote(part)] = (w, next(order), deaths, part)
                load[w] += 1

    def probe(w: int) -> None:
        probes[pool[w].pid.remote()] = (w, next(order))

    def lost(w: int, e: BaseException) -> None:
        """Worker `w` failed a call with `e`: gone for good, or in restart."""
        nonlocal last_loss
        if state[w] == "gone":
            return
        if isinstance(e, ray.exceptions.ActorDiedError):
            state[w] = "gone"
            stats["workers_lost"] += 1
            last_loss = f"{type(e).__name__}: {_first_line(e)}"
            reprobe.pop(w, None)
        elif state[w] == "up":  # Ray restarts it (counted now: the map may end before)
            state[w] = "down"
            stats["worker_restarts"] += 1
            probe(w)

    def back(deaths: int, part: list[Item], e: BaseException) -> list[tuple[int, Outcome]]:
        """Requeue a chunk at the front; the items past `retries` deaths fail instead."""
        if deaths > retries:
            text = (
                f"WorkerDied: the Ray worker running this item died {deaths} times "
                f"({type(e).__name__})"
            )
            return [(i, Outcome(error_text=text, traceback=str(e))) for i, _, _ in part]
        if deaths and deaths == retries and len(part) > 1:  # the last try: one item a chunk
            chunks.extendleft((deaths, [item]) for item in reversed(part))
        else:
            chunks.appendleft((deaths, part))
        return []

    try:
        submit()
        while running or (chunks and any(s != "gone" for s in state)):
            now = time.monotonic()
            for w, at in list(reprobe.items()):
                if at <= now:
                    del reprobe[w]
                    probe(w)
            refs = [*running, *probes]
            wait = max(0.0, min(reprobe.values()) - now) if reprobe else None
            if not refs:
                if wait is None:
                    break
                time.sleep(wait)
                continue
            first, _ = ray.wait(refs, num_returns=1, timeout=wait)
            if not first:
                continue
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            calls = {*first, *ready}
            for ref in sorted(calls, key=lambda r: (running.get(r) or probes[r])[1]):
                if ref in probes:
                    w, _ = probes.pop(ref)
                    try:
                        pid = ray.get(ref)
                    except ray.exceptions.ActorDiedError as e:
                        lost(w, e)
                    except ray.exceptions.RayError:
                        if state[w] == "down":
                            reprobe[w] = time.monotonic() + REPROBE_S
                    else:
                        if state[w] == "down":
                            state[w] = "up"
                            if pid == pids[w]:  # it was out of reach, and did not restart
                                stats["worker_restarts"] -= 1
                        pids[w] = pid
                    continue
                w, at, deaths, part = running.pop(ref)
                load[w] -= 1
                try:
                    pid, results = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    cause = e.cause if isinstance(e.cause, BaseException) else e
                    text = (
                        f"{type(cause).__name__}: {cause} (raised in the Ray worker by the run "
                        f"of this item's chunk of {len(part)})"
                    )
                    trace = _uncoloured(str(e))  # the worker's traceback
                    results = [(i, None, text, trace) for i, _, _ in part]
                except ray.exceptions.RayError as e:  # the worker died, or its result was lost
                    if state[w] == "up":  # the first call to fail at this death
                        charged[w] = min([at, *(o for v, o, _, _ in running.values() if v == w)])
                    lost(w, e)
                    out = back(deaths + (at == charged[w]), part, e)
                    finished += len(out)
                    yield from out
                    continue
                else:
                    if pid != pids[w]:  # Ray restarted the worker between two chunks
                        pids[w] = pid
                        stats["worker_restarts"] += 1
                for i, data, error_text, trace in results:
                    finished += 1
                    yield i, _outcome(i, data, error_text, trace)
            submit()
        if chunks:
            left = sum(len(part) for _, part in chunks)
            raise WorkersLost(
                f"ppl.map: all {workers} Ray workers are gone for good (the last: {last_loss}); "
                f"{finished} of the {len(items)} items to run finished and were returned (and "
                f"written to the checkpoint, if one is used), {left} did not run. A rerun with "
                "the same checkpoint= resumes: it runs only those."
            )
    finally:  # ends the calls still running too (Ray cancels an actor's calls only gently)
        if ray.is_initialized():  # not when Ray shut down before this generator was closed
            for handle in pool:
                ray.kill(handle)


class _Worker:
    """A Ray actor: one model, one `SharedSteps`, items run as `ppl.map` runs them."""

    def __init__(
        self,
        spec: Any,
        rows: int | None,
        in_flight: int,
        threads: int,
        method: Callable[..., Any],
        program: Program,
        seed: int | None,
        options: dict[str, Any],
    ) -> None:
        import torch

        torch.set_num_threads(threads)  # several workers may share a machine's cores
        self.lm = spec.build() if spec is not None else None
        self.rows = rows
        self.in_flight = in_flight
        self.method = method
        self.program = program
        self.seed = seed
        self.options = options
        self.process_id = os.getpid()

    def pid(self) -> int:
        return self.process_id

    def run(self, items: list[Item]) -> tuple[int, list[tuple[int, Any, Any, Any]]]:
        """This process's id, and each item's (index, pickled Posterior, error, traceback)."""
        from ray import cloudpickle

        steps = SharedSteps(rows=self.rows, in_flight=self.in_flight)
        jobs = []
        for i, args, kwargs in items:
            if self.lm is not None:
                kwargs = {**kwargs, "lm": self.lm}
            job = _item_job(self.method, self.program, args, kwargs, self.seed, i, self.options)
            jobs.append((i, _no_exit(job)))
        out = []
        for i, outcome in steps.run(jobs):
            if outcome.error is not None:
                error = f"{type(outcome.error).__name__}: {outcome.error}"
                out.append((i, None, error, outcome.traceback))
                continue
            try:  # here, so that a result that cannot travel is its item's error alone
                data = cloudpickle.dumps(outcome.value)
            except Exception as e:
                error = (
                    f"TypeError: item {i}'s result cannot be sent back from the Ray worker: "
                    f"{type(e).__name__}: {e}"
                )
                out.append((i, None, error, traceback.format_exc()))
            else:
                out.append((i, data, None, None))
        return self.process_id, out


def _no_exit(job: Callable[[], Any]) -> Callable[[], Any]:
    """`job`, with `sys.exit` in it an error of its item rather than the end of the worker."""

    def run() -> Any:
        try:
            return job()
        except SystemExit as e:
            raise RuntimeError(
                f"the program called sys.exit({e.code!r}), which would end its Ray worker"
            ) from None

    return run


def _outcome(i: int, data: bytes | None, error_text: str | None, trace: str | None) -> Outcome:
    """Item `i`'s Outcome from what its worker sent: its pickled result, or its error."""
    from ray import cloudpickle

    if error_text is not None:
        return Outcome(error_text=error_text, traceback=trace or "")
    try:
        return Outcome(value=cloudpickle.loads(data))
    except Exception as e:
        text = f"TypeError: item {i}'s result cannot be read back from the Ray worker: {e}"
        return Outcome(error_text=text, traceback=traceback.format_exc())


def _uncoloured(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)  # Ray colours a task's name


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _uploaded(runtime_env: dict[str, Any]) -> dict[str, Any]:
    """`runtime_env` with its local `py_modules` and `working_dir` uploaded to the cluster.

    Ray takes local paths only in `ray.init`; an actor's runtime_env names packages already in
    the cluster. This uploads them as `ray.init` does, with Ray's own functions (where this
    Ray has them; otherwise Ray's check says what it takes).
    """
    env = dict(runtime_env)
    if "py_modules" not in env and "working_dir" not in env:
        return env
    try:
        from ray._private.runtime_env.py_modules import upload_py_modules_if_needed
        from ray._private.runtime_env.working_dir import upload_working_dir_if_needed
    except ImportError:
        return env
    with tempfile.TemporaryDirectory() as scratch:
        for upload in (upload_py_modules_if_needed, upload_working_dir_if_needed):
            kwargs: dict[str, Any] = {"scratch_dir": scratch}
            if "include_gitignore" in inspect.signature(upload).parameters:
                ignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") == "1"
                kwargs["include_gitignore"] = not ignore
            env = upload(env, **kwargs)
    env.pop("excludes", None)  # used by the upload only
    return env


def _start_failure(e: BaseException, program: Program) -> str:
    """Why the workers could not start, and for a module they cannot import, how to ship it."""
    text = _uncoloured(str(e))
    missing = re.search(r"No module named '([^']+)'", text)
    if missing is None:
        return f"ppl.map: a Ray worker could not start: {text}"
    name = missing.group(1)
    top = sys.modules.get(name.split(".")[0])
    where = getattr(top, "__file__", None)
    if where is not None and os.path.basename(where) == "__init__.py":
        where = os.path.dirname(where)  # a package: its directory
    path = where if where is not None else "path/to/" + name.split(".")[0]
    module = program.fn.__module__
    defines = " (it defines the program)" if f"{module}.".startswith(f"{name}.") else ""
    return (
        f"ppl.map: the Ray workers cannot import the module {name!r}{defines}: it is not "
        f"installed where they run, nor on their path. Ship it with the map: "
        f"ppl.map(..., runtime_env={{'py_modules': [{path!r}]}}), or "
        f"runtime_env={{'working_dir': {os.path.dirname(path)!r}}} for the directory that "
        f"holds it (or install it on every worker). The worker's error: "
        f"ModuleNotFoundError: No module named {name!r}"
    )


def _send_by_value(program: Program) -> None:
    """Have Ray send the module defining `program` by value when workers cannot import it."""
    from ray import cloudpickle

    name = program.fn.__module__
    module = sys.modules.get(name)
    if module is None or name == "__main__":
        return  # cloudpickle sends __main__'s functions by value already
    path = getattr(module, "__file__", None) or ""
    # a file loaded by path (the `ppl` command, a notebook's helper) is not on the workers' path
    importable = any(
        path.startswith(os.path.join(os.path.abspath(p), name.split(".")[0])) for p in sys.path if p
    )
    if not importable:
        cloudpickle.register_pickle_by_value(module)
