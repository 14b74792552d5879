"""Constraints from requests compile within a time and a memory bound, away from the server.

A JSON schema, a Lark grammar or a regular expression sent by a client is untrusted: one can
ask for a huge automaton (`[a-z]{1,1000000}`) or a grammar that takes minutes to analyse. Each
is first compiled in a worker process (`Compiler.check`), under a memory limit
(`RLIMIT_AS`: the worker's size after its imports plus `memory` bytes) and a wall-clock limit
(`seconds`); a worker past either is killed and replaced, and the request gets a 400 that says
which limit it hit. Only a constraint that compiled there is compiled again in the server, where
it is used. The workers start with the first request that carries a constraint.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import threading
from concurrent.futures.process import BrokenProcessPool
from typing import Any

SECONDS = 10.0
MEMORY = 2 << 30  # bytes a worker may grow by while compiling
WORKERS = 2
STARTUP = 120.0  # seconds a worker may take to start (its imports)


class CompileLimit(Exception):
    """A constraint that could not be compiled within the limits (its message says which)."""


class Compiler:
    """Checks that constraints compile, in worker processes under time and memory limits."""

    def __init__(self, seconds: float = SECONDS, memory: int = MEMORY, workers: int = WORKERS):
        self.seconds = seconds
        self.memory = memory
        self.workers = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        """The pool, its workers started and their imports done: that time is not the
        compile's (the limit counts from when a warm worker takes the constraint)."""
        with self._lock:
            if self._pool is None:
                pool = concurrent.futures.ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_limit_memory,
                    initargs=(self.memory,),
                )
                warm = [pool.submit(_ready) for _ in range(self.workers)]
                concurrent.futures.wait(warm, timeout=STARTUP)
                self._pool = pool
            return self._pool

    def start(self) -> None:
        """Start the workers now (in the background), not at the first constraint."""
        threading.Thread(target=self._executor, name="ppl-compile-start", daemon=True).start()

    def _reset(self, pool: concurrent.futures.ProcessPoolExecutor) -> None:
        """Kill the workers of `pool` (one of them is stuck) and start afresh next time."""
        with self._lock:
            if self._pool is pool:
                self._pool = None
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def check(self, kind: str, value: Any) -> str | None:
        """None when `value` compiles as a constraint of `kind` ("json", "regex", "grammar"),
        else the compiler's error; `CompileLimit` past the time or memory bound."""
        for attempt in (0, 1):  # a pool broken by another request's check is started again
            pool = self._executor()
            try:
                future = pool.submit(_compile, kind, value)
            except (BrokenProcessPool, RuntimeError):
                self._reset(pool)
                continue
            try:
                return future.result(timeout=self.seconds)
            except concurrent.futures.TimeoutError:
                self._reset(pool)
                raise CompileLimit(
                    f"it did not compile within {self.seconds:g} s (the server's limit): "
                    "simplify it (smaller repetition counts, fewer alternatives)"
                ) from None
            except BrokenProcessPool:
                self._reset(pool)
                if attempt:
                    raise CompileLimit(
                        f"compiling it took more than the server's memory limit of "
                        f"{self.memory >> 20} MiB: simplify it"
                    ) from None
        return None

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _ready() -> bool:
    return True


def _limit_memory(memory: int) -> None:
    """In a worker, after its imports: at most `memory` more bytes of address space."""
    import resource

    import ppl.constraints  # noqa: F401  (imported before the limit: torch maps a lot)

    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[0])
        size = pages * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (size + memory, size + memory))
    except (OSError, ValueError):  # no /proc (not Linux): the time bound alone
        pass


def _compile(kind: str, value: Any) -> str | None:
    """In a worker: compile, and say what is wrong (None when it compiles)."""
    import ppl

    try:
        if kind == "json":
            constraint = ppl.JSONSchema(value)
        elif kind == "regex":
            constraint = ppl.Regex(value)
        else:
            constraint = ppl.Grammar(value)
        constraint.matches("")  # the matcher built and its first mask computed, here too
    except MemoryError:
        return "compiling it took more memory than the server allows: simplify it"
    except (ValueError, TypeError) as e:
        return str(e)
    return None
