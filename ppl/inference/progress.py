"""Progress bars of the inference entry points: the `progress=` option of each of them.

`progress=None` (the default) shows a bar when stderr is a terminal or when the code runs in a
Jupyter kernel, `progress=False` never shows one and `progress=True` always does. Bars are
`tqdm.auto` bars: text in a terminal, a widget in a notebook.

A run asks its bar `due()` at every step, which costs one clock read; only when it says yes
(at most every `INTERVAL` seconds) does the run work out what the bar shows (particle counts,
ESS, log evidence, acceptance) and hand it to `show`. So a bar costs nothing measurable per step,
whatever the number of particles or chains.

What each family shows:

* particle runs (`smc`, `importance`, `smc_steer`): particles that have stopped (finished or
  died) out of N, with the step, the particles running / finished / dead, the ESS of the current
  weights and the running log evidence estimate;
* chain runs (`mh`, `pimh`, `pgibbs`): chain steps done out of chains x steps, with the
  acceptance rate so far (and, for `pimh`, its running log evidence estimate);
* `nuts`: NumPyro's own bar (warmup / sample, step size, acceptance probability).
"""

from __future__ import annotations

import contextvars
import math
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

INTERVAL = 0.1  # seconds between refreshes of a bar

#: where a run with no bar of its own reports its progress, (done, total, text), when one is set:
#: `ppl.map` sets it in each item's context to show progress inside the items in flight
REPORT: contextvars.ContextVar[Callable[[int, int, str], None] | None] = contextvars.ContextVar(
    "ppl_progress_report", default=None
)

PARTICLES_FORMAT = (
    "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} particles done [{elapsed}{postfix}]"
)


def enabled(progress: bool | None) -> bool:
    """Whether to show a bar: `progress` itself, or when None, whether someone is watching."""
    if progress is None:
        return stderr_is_terminal() or in_notebook()
    return bool(progress)


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def in_notebook() -> bool:
    """True inside a Jupyter kernel. IPython is only looked at when it is already imported."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
        return shell is not None and "IPKernelApp" in shell.config
    except Exception:
        return False


class Bar:
    """A progress bar, or nothing (`Bar(None)`): every method is then a no-op.

    `due()` says whether the bar would refresh now; the caller then computes what to show and
    calls `show(n, text)`. `show(..., force=True)` refreshes whatever the clock says (the last
    state of a run).
    """

    def __init__(
        self,
        bar: Any = None,
        interval: float | None = None,
        *,
        report: Callable[[int, int, str], None] | None = None,
        total: int = 0,
    ) -> None:
        self._bar = bar
        self._report = report  # instead of a bar: (done, total, text) to whoever watches
        self._total = total
        self._interval = INTERVAL if interval is None else interval
        self._next = 0.0 if bar is not None or report is not None else math.inf

    @property
    def on(self) -> bool:
        return self._bar is not None or self._report is not None

    def due(self) -> bool:
        return time.monotonic() >= self._next

    def show(self, n: int, text: str) -> None:
        if self._report is not None:
            self._next = time.monotonic() + self._interval
            self._report(n, self._total, text)
            return
        bar = self._bar
        if bar is None:
            return
        self._next = time.monotonic() + self._interval
        bar.set_postfix_str(text, refresh=False)
        printed = bar.last_print_t
        bar.update(n - bar.n)
        if bar.last_print_t == printed:  # tqdm kept its own interval: draw the new text anyway
            bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._next = math.inf


def progress_bar(
    progress: bool | None,
    desc: str,
    total: int,
    unit: str = "it",
    bar_format: str | None = None,
) -> Bar:
    """A `tqdm.auto` bar when `enabled(progress)`, else a bar that shows nothing (or that
    reports to `REPORT`, when the run is an item of `ppl.map`)."""
    if not enabled(progress):
        report = REPORT.get()
        return Bar(None) if report is None else Bar(None, report=report, total=total)
    from tqdm.auto import tqdm

    bar = tqdm(
        desc=desc,
        total=total,
        unit=unit,
        leave=False,
        mininterval=INTERVAL,
        bar_format=bar_format,
    )
    return Bar(bar)


def particles_bar(progress: bool | None, method: str, n: int) -> Bar:
    """The bar of a particle run of N particles: stopped particles out of N."""
    return progress_bar(progress, method, n, "particle", PARTICLES_FORMAT)


def particles_status(
    step: int, particles: Iterable[Any], ess: float, n: int, log_z: float
) -> tuple[int, str]:
    """(particles stopped, the bar's text) of a particle run at `step`."""
    running = finished = dead = 0
    for p in particles:
        if p.log_weight == -math.inf:
            dead += 1
        elif p.pending is not None:
            running += 1
        else:
            finished += 1
    text = (
        f"step {step}, running {running}, finished {finished}, dead {dead}, "
        f"ESS {ess:.1f}/{n}, log Z {log_z:.3f}"
    )
    return finished + dead, text


def chains_bar(progress: bool | None, method: str, chains: int, steps: int) -> Bar:
    """The bar of an MCMC run: chain steps done out of chains x steps."""
    return progress_bar(progress, method, chains * steps, "step")


def chains_status(
    chains: int,
    step: int,
    steps: int,
    acceptance: float,
    warmup: int = 0,
    log_z: float | None = None,
) -> tuple[int, str]:
    """(chain steps done, the bar's text) after `step` of `steps` steps of every chain."""
    phase = " (warmup)" if step <= warmup and warmup else ""
    text = f"chains {chains}, " if chains > 1 else ""
    text += f"step {step}/{steps}{phase}, acceptance {acceptance:.3f}"
    if log_z is not None:
        text += f", log Z {log_z:.3f}"
    return chains * step, text
