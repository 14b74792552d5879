"""One engine for every request: a thread that owns the model and runs the shared steps.

The server's request handlers never touch the model. Each request becomes a job (a function of
no arguments that runs an inference method and returns its Posterior) handed to `Engine.submit`,
which answers at once with a `Ticket`, or refuses with `Busy` when the queue is full. The
engine's thread runs every admitted job under `SharedSteps`, as `ppl.map` runs items:

* Requests in flight share every forward pass; a new request starts at the next step (before
  the next pass), and a finished one leaves at once, making room for the next in the queue.
* At most `max_running` runs are in flight and `max_queue` wait behind them; past that,
  `submit` raises `Busy` (the server answers 429 with Retry-After).
* `Ticket.cancel()` (the client went away) and a deadline (`timeout` seconds after admission)
  end a run within one step (`ppl.workloads.batch.Cancelled`): its rows are not fed again, and
  its particles, contexts and KV blocks are dropped with its greenlet.
* `drain()` refuses new jobs and waits for the admitted ones to finish; `close()` ends the
  thread.

A ticket carries the run's progress (`ppl.inference.progress.REPORT`, set in the job's own
context) for streaming, and its outcome: the Posterior, or the error the job raised.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ppl.inference.progress import REPORT
from ppl.workloads.batch import Cancelled, SharedSteps


class Busy(Exception):
    """The queue is full (`max_queue` waiting): try again later."""


class Draining(Exception):
    """The engine is shutting down: it takes no new jobs."""


class ClientGone(Cancelled):
    """The client that asked for the run went away."""


class DeadlineExceeded(Cancelled):
    """The run took longer than the server's timeout."""


@dataclass
class Ticket:
    """An admitted job: its outcome when it ends, and its progress while it runs."""

    key: int
    job: Callable[[], Any]
    deadline: float | None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    #: the latest (done, total, text) the run reported, or None before its first report
    progress: tuple[int, int, str] | None = None
    started: float | None = None
    _engine: Any = None

    def cancel(self) -> None:
        """End the run (the client went away): within one step if it runs, at once if it waits."""
        if self._engine is not None and not self.future.done():
            self._engine._cancel(self, ClientGone("the client went away"))


class Engine:
    """The thread that runs every request's job with shared forward passes.

    Args:
        max_running: runs in flight at once (they share each forward pass).
        max_queue: admitted jobs waiting for room; past it `submit` raises `Busy`.
        rows: at most this many rows in one forward pass (None: no limit).
        timeout: seconds a run may take from admission (None: no limit).
    """

    def __init__(
        self,
        *,
        max_running: int = 16,
        max_queue: int = 64,
        rows: int | None = None,
        timeout: float | None = None,
    ) -> None:
        if max_running < 1 or max_queue < 0:
            raise ValueError("max_running must be >= 1 and max_queue >= 0")
        self.max_running = max_running
        self.max_queue = max_queue
        self.timeout = timeout
        self.steps = SharedSteps(rows=rows, in_flight=max_running)
        self._lock = threading.Condition()
        self._queue: collections.deque[Ticket] = collections.deque()
        self._running: dict[int, Ticket] = {}
        self._cancels: list[tuple[Ticket, BaseException]] = []
        self._keys = itertools.count()
        self._draining = False
        self._closed = False
        self.completed = 0
        self.cancelled = 0
        #: runs ended from outside, by reason: "client_gone", "timeout"
        self.cancelled_by = {"client_gone": 0, "timeout": 0}
        self._thread = threading.Thread(target=self._loop, name="ppl-engine", daemon=True)
        self._thread.start()

    # -- from the server's threads ---------------------------------------------------------

    def submit(self, job: Callable[[], Any]) -> Ticket:
        """Admit `job`; raises `Busy` when the queue is full and `Draining` when shutting down."""
        with self._lock:
            if self._draining or self._closed:
                raise Draining("the server is shutting down")
            if len(self._queue) >= self.max_queue and len(self._running) >= self.max_running:
                raise Busy(
                    f"{len(self._running)} requests are running and {len(self._queue)} waiting "
                    "(the server's limits): try again shortly"
                )
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            ticket = Ticket(next(self._keys), job, deadline, _engine=self)
            self._queue.append(ticket)
            self._lock.notify_all()
            return ticket

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    def drain(self, timeout: float | None = None) -> bool:
        """Take no new jobs; wait until the admitted ones end. True when they all did."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._draining = True
            while self._queue or self._running:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._lock.wait(0.05 if left is None else min(left, 0.05))
        return True

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._draining = True
            self._lock.notify_all()
        self._thread.join(timeout=10)

    def _cancel(self, ticket: Ticket, error: BaseException) -> None:
        with self._lock:
            if ticket in self._queue:  # not started: it ends now
                self._queue.remove(ticket)
                self._count_cancel(error)
                ticket.future.set_exception(error)
                self._lock.notify_all()
            else:
                self._cancels.append((ticket, error))

    def _count_cancel(self, error: BaseException) -> None:
        self.cancelled += 1
        reason = "timeout" if isinstance(error, DeadlineExceeded) else "client_gone"
        self.cancelled_by[reason] += 1

    # -- the engine's thread ---------------------------------------------------------------

    def _loop(self) -> None:
        for key, outcome in self.steps.run(self._jobs()):
            with self._lock:
                ticket = self._running.pop(key)
                self._lock.notify_all()
            if outcome.error is not None:
                if isinstance(outcome.error, Cancelled):
                    self._count_cancel(outcome.error)
                ticket.future.set_exception(outcome.error)
            else:
                self.completed += 1
                ticket.future.set_result(outcome.value)

    def _jobs(self) -> Iterator[tuple[int, Callable[[], Any]] | None]:
        """The jobs to start, between steps: None when none can start now."""
        while True:
            with self._lock:
                self._expire()
                for ticket, error in self._cancels:
                    if ticket.key in self._running:
                        self.steps.cancel(ticket.key, error)
                self._cancels.clear()
                while not self._queue and not self._running:
                    if self._closed:
                        return
                    self._lock.wait(0.1)
                    self._expire()
                if not self._queue or len(self._running) >= self.max_running:
                    ticket = None
                else:
                    ticket = self._queue.popleft()
                    ticket.started = time.monotonic()
                    self._running[ticket.key] = ticket
            yield None if ticket is None else (ticket.key, _reporting(ticket))

    def _expire(self) -> None:
        """End the runs past their deadline (those waiting at once, those running next step)."""
        now = time.monotonic()
        for ticket in [t for t in self._queue if t.deadline is not None and t.deadline <= now]:
            self._queue.remove(ticket)
            error = DeadlineExceeded(_late(self.timeout))
            self._count_cancel(error)
            ticket.future.set_exception(error)
        for ticket in self._running.values():
            if ticket.deadline is not None and ticket.deadline <= now:
                self.steps.cancel(ticket.key, DeadlineExceeded(_late(self.timeout)))
                ticket.deadline = None  # once


def _late(timeout: float | None) -> str:
    return f"the run took longer than the server's timeout of {timeout:g} s"


def _reporting(ticket: Ticket) -> Callable[[], Any]:
    """The ticket's job, with its run's progress kept on the ticket."""

    def report(done: int, total: int, text: str) -> None:
        ticket.progress = (done, total, text)

    def run() -> Any:
        REPORT.set(report)  # this run's own context (`SharedSteps`)
        return ticket.job()

    return run
