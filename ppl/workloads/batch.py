"""Many runs in flight, one batched model call per step: the shared step behind `ppl.map`.

Every inference entry point (`ppl.smc`, `ppl.mh`, ...) is an ordinary function that, at each
step, hands its particles' contexts to `LanguageModel.compute_logprobs`. `SharedSteps` runs one
such call per input, each in its own greenlet (a coroutine that can suspend anywhere in plain
Python code), and routes their model calls here through `ppl.models.base.SHARED_CALLS`:

* A run that needs the model suspends with its request. When every run in flight has either
  suspended or finished, the requests are served together: for each language model, the rows
  all of them need (deduplicated: runs that feed the same tokens after the same state share a
  row) go through one batched forward pass, in calls of at most `rows` rows. Each run then
  resumes with its own contexts fed, in the order the runs started.
* Nothing else is shared. Each run keeps its own random generators (its own seed), weights,
  resampling and evidence; it sees exactly the log-probabilities it would see alone, so a run
  under `SharedSteps` makes the same choices as the same call made by itself. On a model whose
  rows do not depend on their batch (the test models) that holds bit for bit; a transformers
  model computes a row with float arithmetic whose rounding may change with the batch's shape
  (a different padding length or batch size picks other kernels), which can change a draw
  whose probability sat at a rounding boundary.
* Continuous batching: a run that finishes makes room at once, and the next input starts (runs
  to its first model call) before the next shared call, so the batch stays full.

Costs are attributed per run (`Fed`): a shared call counts once for each run that had rows in
it, and a row that several runs needed counts its tokens for the first of them, so the runs'
token counts add up to the tokens the model was fed. A call that raises counts too (the model
counted it), charged to the runs whose rows were in it, and the runs' rows are then fed run by
run so that only the run whose rows fail gets the error. An out-of-memory error stops the whole
run at once, naming the rows to try (`SharedPassOutOfMemory`).

Scheduling is step-synchronous and deterministic: no timers, no threads; the shared call is made
exactly when no run can go on without it.
"""

from __future__ import annotations

import contextvars
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from greenlet import greenlet

from ppl.context import Context
from ppl.models.base import SHARED_CALLS, Fed, LanguageModel


@dataclass
class Outcome:
    """How one job ended: its return value, or the exception it raised with its traceback.

    `error_text` ("TypeError: message") stands in for `error` where the exception itself could
    not travel (from another process).
    """

    value: Any = None
    error: BaseException | None = None
    traceback: str = ""
    error_text: str = ""


@dataclass
class _Request:
    run: greenlet
    lm: LanguageModel
    contexts: Sequence[Context]


class SharedSteps:
    """Runs jobs (functions of no arguments) with their model calls batched together.

    Args:
        rows: at most this many rows in one forward pass (None: no limit).
        in_flight: at most this many jobs started and not finished.
    """

    def __init__(self, rows: int | None = None, in_flight: int = 8) -> None:
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
            raise ValueError(f"rows must be a positive integer or None, got {rows!r}")
        if isinstance(in_flight, bool) or not isinstance(in_flight, int) or in_flight < 1:
            raise ValueError(f"in_flight must be a positive integer, got {in_flight!r}")
        self.rows = rows
        self.in_flight = in_flight
        self.forward_calls = 0  # shared calls made (or tried), all runs together
        self.tokens_fed = 0
        self._last_rows = 0  # rows of the last call tried
        self._cancelled: dict[Any, BaseException] = {}  # key -> what ends its run
        #: called with (rows, tokens) after each forward pass is charged (a server's metrics)
        self.on_pass: Callable[[int, int], None] | None = None
        self.running = 0  # runs in flight

    def run(
        self, jobs: Iterable[tuple[Any, Callable[[], Any]] | None]
    ) -> Iterator[tuple[Any, Outcome]]:
        """Run `(key, job)` pairs; yield `(key, Outcome)` as each job finishes.

        A job that raises an `Exception` yields it in its `Outcome`; the others go on. Other
        exceptions (KeyboardInterrupt, ...) stop everything. `jobs` may yield None for "no job
        to start now" (a server whose queue is empty): the runs in flight take their next step,
        and `jobs` is asked again; with none in flight it is asked again at once (it should
        then wait for a job). A run `cancel`led is ended at its next step with that error.
        """
        hub = greenlet.getcurrent()
        pending = iter(jobs)
        keys: dict[greenlet, Any] = {}
        requests: list[_Request] = []
        finished: list[tuple[Any, Outcome]] = []

        def settle(run: greenlet, out: Any) -> None:
            """Record where a run stopped: at a request, or at its end."""
            if run.dead:
                finished.append((keys.pop(run), out))
            else:
                requests.append(out)

        exhausted = False
        while True:
            while not exhausted and len(keys) < self.in_flight:
                try:
                    pulled = next(pending)
                except StopIteration:
                    exhausted = True
                    break
                if pulled is None:  # nothing to start now
                    break
                key, job = pulled
                run = greenlet(_job_body(job, hub), parent=hub)
                # its own copy of the context it starts from (as an asyncio task has): the
                # language's run state (`ppl.runtime`) and SHARED_CALLS are context-local, so
                # what one run sets is never seen by another or by the hub
                run.gr_context = contextvars.copy_context()
                keys[run] = key
                settle(run, run.switch())
            self.running = len(keys)
            yield from finished
            finished.clear()
            if not keys:
                if exhausted:
                    return
                continue
            served, requests = requests, []
            if self._cancelled:  # ended before their rows are fed
                ending = [r for r in served if keys[r.run] in self._cancelled]
                served = [r for r in served if keys[r.run] not in self._cancelled]
                for request in ending:
                    settle(request.run, request.run.throw(self._cancelled.pop(keys[request.run])))
                self._cancelled = {k: e for k, e in self._cancelled.items() if k in keys.values()}
            for request, result in zip(served, self._serve(served)):
                if isinstance(result, BaseException):
                    out = request.run.throw(result)
                else:
                    out = request.run.switch(result)
                settle(request.run, out)

    def cancel(self, key: Any, error: BaseException) -> None:
        """End the run of `key` at its next step: `error` is raised where it waits for the model
        (a `Cancelled` ends it whatever the program catches). Call from the thread running
        `run`, between its steps (e.g. in the `jobs` iterator)."""
        self._cancelled[key] = error

    def _serve(self, requests: list[_Request]) -> list[Fed | BaseException]:
        """Feed every request's contexts, one shared call per model; the cost of each request.

        A call that raises counts as made (the model counted it): its rows' tokens are charged
        to their requests, so the runs' counts add up to the model's whatever failed. Then each
        request is fed alone, so that only the ones that fail get the error; an out-of-memory
        error is not retried that way but stops the run at once (`SharedPassOutOfMemory`).
        """
        results: list[Fed | BaseException] = [Fed(0, 0)] * len(requests)
        cost = {i: [0, 0] for i in range(len(requests))}  # request -> [calls, tokens]
        by_lm: dict[int, list[int]] = {}
        for i, r in enumerate(requests):
            by_lm.setdefault(id(r.lm), []).append(i)
        for members in by_lm.values():
            lm = requests[members[0]].lm
            try:
                self._feed_together(lm, [(i, requests[i].contexts) for i in members], cost)
            except Exception as e:
                if _is_out_of_memory(e):
                    raise SharedPassOutOfMemory(e, self._last_rows, len(members), self.rows) from e
                # the error belongs to some request's contexts: feed each request alone, so
                # that only the ones that fail get the error
                for i in members:
                    try:
                        self._feed_together(lm, [(i, requests[i].contexts)], cost)
                    except Exception as e:
                        if _is_out_of_memory(e):
                            raise SharedPassOutOfMemory(e, self._last_rows, 1, self.rows) from e
                        results[i] = e
        for i, (calls, tokens) in cost.items():
            if not isinstance(results[i], BaseException):
                results[i] = Fed(calls, tokens)
        return results

    def _feed_together(
        self,
        lm: LanguageModel,
        members: list[tuple[int, Sequence[Context]]],
        cost: dict[int, list[int]],
    ) -> None:
        owner: dict[tuple[int, tuple[int, ...]], int] = {}  # row -> the request that claims it
        users: dict[tuple[int, tuple[int, ...]], set[int]] = {}
        groups: dict[tuple[int, tuple[int, ...]], list[Context]] = {}
        for i, contexts in members:
            for key, group in lm.unfed(contexts).items():
                owner.setdefault(key, i)
                users.setdefault(key, set()).add(i)
                groups.setdefault(key, []).extend(group)
        keys = list(groups)
        step = self.rows or len(keys) or 1
        for start in range(0, len(keys), step):
            chunk = keys[start : start + step]
            self._last_rows = len(chunk)
            made = lm.forward_calls
            try:
                lm.feed([groups[k] for k in chunk])
            finally:
                # a call the model made counts, even when it raised (the model counted it); one
                # refused before the forward pass (a context window exceeded) does not
                if lm.forward_calls != made:
                    self._charge(chunk, owner, users, cost)

    def _charge(
        self,
        chunk: list[tuple[int, tuple[int, ...]]],
        owner: dict[tuple[int, tuple[int, ...]], int],
        users: dict[tuple[int, tuple[int, ...]], set[int]],
        cost: dict[int, list[int]],
    ) -> None:
        """Count one call of `chunk`'s rows: once for each request with rows in it, and each
        row's tokens for the request that claimed it."""
        self.forward_calls += 1
        for i in set().union(*(users[k] for k in chunk)):
            cost[i][0] += 1
        fed = 0
        for k in chunk:
            n = len(k[1])
            cost[owner[k]][1] += n
            fed += n
        self.tokens_fed += fed
        if self.on_pass is not None:
            self.on_pass(len(chunk), fed)


class Cancelled(BaseException):
    """Ends a run from outside (`SharedSteps.cancel`): its client went away, or its time is up.

    A BaseException, so that a program's own `except Exception` does not swallow it.
    """


class SharedPassOutOfMemory(MemoryError):
    """A shared forward pass ran out of memory: the batch was too big for the device.

    Raised once for the whole run (feeding each run alone would fail the same way, or thrash);
    the items that finished are kept (and in the checkpoint). Names the rows of the call and
    the `rows=` setting to try.
    """

    def __init__(self, error: BaseException, rows: int, runs: int, limit: int | None) -> None:
        fit = max(1, rows // 2)
        super().__init__(
            f"out of memory in a forward pass of {rows} rows shared by {runs} runs "
            f"(rows={limit}): {type(error).__name__}: {str(error).strip().rstrip('.')[:300]}. Pass "
            f"ppl.map(..., rows={fit}) (or fewer), or fewer particles per item"
        )
        self.rows = rows
        self.suggested_rows = fit


def _is_out_of_memory(e: BaseException) -> bool:
    """Whether `e` says the device (or the host) had no memory for the call."""
    if isinstance(e, MemoryError):
        return True
    name = type(e).__name__
    text = str(e).lower()
    return name == "OutOfMemoryError" or (
        isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
    )


def _job_body(job: Callable[[], Any], hub: greenlet) -> Callable[[], Outcome]:
    def body() -> Outcome:
        SHARED_CALLS.set(_suspend(hub))  # this greenlet's own context: only its calls go to hub
        try:
            return Outcome(value=job())
        except (Exception, Cancelled) as e:
            return Outcome(error=e, traceback=traceback.format_exc())

    return body


def _suspend(hub: greenlet) -> Callable[[LanguageModel, Sequence[Context]], Fed]:
    def shared(lm: LanguageModel, contexts: Sequence[Context]) -> Fed:
        return hub.switch(_Request(greenlet.getcurrent(), lm, contexts))

    return shared
