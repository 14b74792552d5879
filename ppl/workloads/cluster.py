"""`ppl.map` on Ray: workers that each build their model once and run the shared step.

Ray does the scheduling, the placement and the restarts; ppl adds only what is its own:

* A worker is a Ray actor (`_Worker`). It builds its model once, from a picklable spec
  (`ppl.models.spec`), and runs the items it is given with `SharedSteps`, exactly as `ppl.map`
  does in one process; item `i` keeps its seed `(seed, i)`, so the results are the same runs.
* Items go to workers in chunks of `in_flight` (the items one worker runs at once); each worker
  holds at most two chunks (one running, one waiting), so a fast worker takes more chunks and
  results come back to the driver, and its checkpoint, chunk by chunk as they finish.
* A worker that dies (its process killed, its machine lost) is restarted by Ray, which rebuilds
  its model and runs its unfinished chunks again: `max_restarts` and `max_task_retries` are
  `retries`. A chunk returns its results once, so no item is returned twice. A chunk whose
  worker died more than `retries` times comes back as failed items, saying so.
* Programs travel as their function and parsed source (`Program.__reduce__`); the module that
  defines a program is sent by value when it is not importable as a package module (a script,
  a file loaded by the `ppl` command), so workers need not share the driver's files.
"""

from __future__ import annotations

import os
import sys
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from ppl.compiler import Program
from ppl.workloads.batch import Outcome, SharedSteps
from ppl.workloads.items import _item_job

Item = tuple[int, tuple, dict[str, Any]]


def run_on_ray(
    cluster: str,
    workers: int | None,
    resources: dict[str, float] | None,
    retries: int,
    rows: int | None,
    in_flight: int | None,
    spec: Any,
    method: Callable[..., Any],
    program: Program,
    items: list[Item],
    seed: int | None,
    options: dict[str, Any],
    stats: dict[str, Any],
) -> Iterator[tuple[int, Outcome]]:
    """Run `items` on Ray workers; yield `(index, Outcome)` as chunks finish.

    Counts the workers started and restarted in `stats` ("workers", "worker_restarts").
    """
    try:
        import ray
    except ImportError:
        raise ImportError("ppl.map(cluster='ray') needs Ray: pip install 'ppl-lm[ray]'") from None
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"ppl.map: retries must be a non-negative integer, got {retries!r}")
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
    chunks = deque(items[i : i + chunk] for i in range(0, len(items), chunk))
    workers = min(workers, len(chunks))
    threads = max(1, int(resources["num_cpus"]))
    actor = ray.remote(_Worker)
    run_id = uuid.uuid4().hex[:8]
    pool = [
        actor.options(
            name=f"ppl-map-{run_id}-{w}",
            max_restarts=retries,
            max_task_retries=retries,
            **resources,
        ).remote(spec, rows, chunk, threads, method, program, seed, options)
        for w in range(workers)
    ]
    try:  # each worker up, its model built: a spec that cannot be built fails here, once
        pids = ray.get([handle.pid.remote() for handle in pool])  # the process of each worker
    except ray.exceptions.RayActorError as e:
        for handle in pool:
            ray.kill(handle)
        raise RuntimeError(f"ppl.map: a Ray worker could not start: {e}") from None
    stats.update(workers=workers, worker_restarts=0)
    running: dict[Any, tuple[int, list[Item]]] = {}  # result ref -> (worker, its chunk)
    load = [0] * workers

    def submit(w: int) -> None:
        while chunks and load[w] < 2:
            part = chunks.popleft()
            running[pool[w].run.remote([(i, a, k) for i, a, k in part])] = (w, part)
            load[w] += 1

    try:
        for w in range(workers):
            submit(w)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            ref = ready[0]
            w, part = running.pop(ref)
            load[w] -= 1
            try:
                pid, results = ray.get(ref)
                if pid != pids[w]:  # Ray restarted the worker in a new process
                    pids[w] = pid
                    stats["worker_restarts"] += 1
            except ray.exceptions.RayActorError as e:
                text = (
                    f"WorkerDied: the Ray worker running this item died {retries + 1} times "
                    f"({type(e).__name__})"
                )
                results = [(i, None, text, str(e)) for i, _, _ in part]
            for i, value, error_text, trace in results:
                yield i, Outcome(value=value, error_text=error_text or "", traceback=trace or "")
            submit(w)
    finally:
        for ref in running:
            ray.cancel(ref, force=True)
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
        """This process's id, and each item's (index, Posterior, error, traceback)."""
        steps = SharedSteps(rows=self.rows, in_flight=self.in_flight)
        jobs = []
        for i, args, kwargs in items:
            if self.lm is not None:
                kwargs = {**kwargs, "lm": self.lm}
            jobs.append(
                (i, _item_job(self.method, self.program, args, kwargs, self.seed, i, self.options))
            )
        out = []
        for i, outcome in steps.run(jobs):
            if outcome.error is not None:
                error = f"{type(outcome.error).__name__}: {outcome.error}"
                out.append((i, None, error, outcome.traceback))
            else:
                out.append((i, outcome.value, None, None))
        return self.process_id, out


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
