"""Torch's CPU threads on a busy machine: as many as the other processes leave cores free.

A forward pass on the CPU runs torch's operators in parallel over its thread pool, and every
operator ends at a barrier where each thread waits for the others. When another CPU-bound
process shares the cores, the OS deschedules one of torch's threads for a time slice, and the
rest wait at the barrier for it, several hundred times per forward pass. On 2 cores with one
other busy process, SMC at 16 particles ran 8.6x slower than on a quiet machine with torch's 2
threads, and 1.8x slower with 1 thread; on a quiet machine 1 thread is the slower
(`benchmarks/contention.py` measures both). No fixed setting is right for both.

So `ThreadGovernor` measures: before a forward pass, at most every `INTERVAL` seconds, it reads
how busy this process's cores were since its last reading (`/proc/stat`, only the cores this
process may run on) and how much of that was this process itself (`/proc/self/stat`). The rest
is what others used. Torch gets the cores they left free, rounded down (a core others use a
quarter of is not free), at least 1 and at most the ceiling: torch's thread count when the
governor started, or what the program set since (`torch.set_num_threads` is respected as the
new ceiling). It changes the count only after it has held for `DWELL` seconds, so a short burst
elsewhere does not make it switch back and forth.

Reading the two files costs some 50 microseconds, a few times a second; a quiet machine keeps
every thread. `PPL_THREADS` overrides it: a number fixes torch's threads at that number, "off"
leaves them as they are; unset or "auto" adapts. It adapts on Linux only (elsewhere it does
nothing), and only for models on the CPU.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable

import torch

#: seconds between two readings of the cores' use
INTERVAL = 0.25
#: seconds a new thread count must hold before it is set
DWELL = 0.5
#: the share of a core others may use and it still counts as free
SLACK = 0.25

Sample = tuple[float, float, float]  # (seconds, busy seconds on our cores, our own CPU seconds)


def free_cores(cores: int, others: float) -> int:
    """Whole cores free of `others` (the CPUs other processes used, averaged): a core counts as
    free when others use at most `SLACK` of it."""
    return cores - max(0, math.ceil(others - SLACK))


def _read_sample(cpus: frozenset[int], tick: float) -> Sample | None:
    """Now, the busy seconds of `cpus` since boot, and this process's CPU seconds."""
    try:
        busy = 0
        with open("/proc/stat") as f:
            for line in f:
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                name, *fields = line.split()
                if int(name[3:]) not in cpus:
                    continue
                # user nice system idle iowait irq softirq steal: all but idle and iowait are
                # time the core was not ours to take (steal: another machine on the host had it)
                values = [int(v) for v in fields[:8]]
                busy += sum(values) - values[3] - values[4]
        with open("/proc/self/stat") as f:
            # the fields after the command name, which may hold spaces, in parentheses
            rest = f.read().rsplit(")", 1)[1].split()
        own = int(rest[11]) + int(rest[12])  # utime, stime: fields 14 and 15 of proc(5)
    except (OSError, ValueError, IndexError):
        return None
    return time.monotonic(), busy / tick, own / tick


class ThreadGovernor:
    """Sets torch's CPU threads to the cores other processes leave free (see the module).

    `sample` reads the cores' use (`_read_sample` by default; a test passes its own), `clock`
    the time, `cores` how many cores this process may use.
    """

    def __init__(
        self,
        cores: int,
        sample: Callable[[], Sample | None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cores = cores
        self._sample = sample
        self._clock = clock
        self._lock = threading.Lock()
        self._last = sample()
        self._set = torch.get_num_threads()  # what this governor last set, or found
        self.ceiling = self._set
        self._wanted = self._set
        self._wanted_since = clock()
        #: what other processes used at the last reading, in cores
        self.others = 0.0
        #: thread counts set, in order, with the time of each
        self.changes: list[tuple[float, int]] = []

    def tick(self) -> None:
        """Before a forward pass: read the cores' use if `INTERVAL` has passed, and set the
        thread count when a new one has held for `DWELL`."""
        if self._last is None or not self._lock.acquire(blocking=False):
            return  # nothing to read on this system, or another thread is reading
        try:
            now = self._clock()
            if now - self._last[0] < INTERVAL:
                return
            current = torch.get_num_threads()
            if current != self._set:  # the program set it: its count is the new ceiling
                self.ceiling = self._set = self._wanted = current
            sample = self._sample()
            if sample is None:
                self._last = None
                return
            seconds = sample[0] - self._last[0]
            busy, own = sample[1] - self._last[1], sample[2] - self._last[2]
            self._last = sample
            self.others = max(0.0, busy - own) / seconds if seconds > 0 else 0.0
            wanted = max(1, min(self.ceiling, free_cores(self.cores, self.others)))
            if wanted != self._wanted:
                self._wanted, self._wanted_since = wanted, now
            if wanted != self._set and now - self._wanted_since >= DWELL:
                torch.set_num_threads(wanted)
                self._set = wanted
                self.changes.append((now, wanted))
        finally:
            self._lock.release()


_governor: ThreadGovernor | None = None
_decided = False  # whether `governor()` has read PPL_THREADS and made its choice
_governor_lock = threading.Lock()


def governor() -> ThreadGovernor | None:
    """The process's governor, made on first use; None where `PPL_THREADS` turns it off (or
    fixes the count, which it sets here), or where the cores' use cannot be read."""
    global _governor, _decided
    with _governor_lock:
        if not _decided:
            _governor = _make()
            _decided = True
        return _governor


def _make() -> ThreadGovernor | None:
    setting = os.environ.get("PPL_THREADS", "auto").strip().lower()
    if setting in ("off", "none"):
        return None
    if setting not in ("auto", ""):
        try:
            threads = int(setting)
        except ValueError:
            raise ValueError(
                f"PPL_THREADS={setting!r}: use a number of threads, 'auto' (adapt to the other "
                "processes' use of the cores) or 'off' (leave torch's setting as it is)"
            ) from None
        if threads < 1:
            raise ValueError(f"PPL_THREADS={setting!r}: the number of threads must be at least 1")
        torch.set_num_threads(threads)
        return None
    if not hasattr(os, "sched_getaffinity") or not os.path.exists("/proc/stat"):
        return None
    cpus = frozenset(os.sched_getaffinity(0))
    tick = float(os.sysconf("SC_CLK_TCK"))
    if len(cpus) < 2 or _read_sample(cpus, tick) is None:
        return None  # one core: nothing to choose
    return ThreadGovernor(len(cpus), lambda: _read_sample(cpus, tick))


def before_cpu_pass() -> None:
    """Called before each forward pass of a model on the CPU."""
    g = _governor if _decided else governor()
    if g is not None:
        g.tick()
