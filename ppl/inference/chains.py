"""The `Posterior` of an MCMC run: its kept chain states, or the failure to find a start.

Shared by `mh` (`ppl.inference.metropolis`), `pimh` and `pgibbs`
(`ppl.inference.particle_mcmc`).
"""

from __future__ import annotations

import math
import time
from collections import Counter

import numpy as np

from ppl.inference.engine import Engine
from ppl.inference.execution import Execution, _trace_list
from ppl.inference.notices import warn
from ppl.inference.posterior import Posterior


class ZeroEvidence(ValueError):
    """No execution of positive weight was found to start from (the run returns a failure)."""


def failed_posterior(
    method: str, engine: Engine, failure: str, start: float, log_evidence: float | None
) -> Posterior:
    """The Posterior of an MCMC run that found no execution of positive weight: no samples,
    `failure` saying why, and an InferenceWarning (as SMC and importance sampling do)."""
    warn(f"{method}: {failure}")
    return Posterior(
        method=method,
        values=[],
        log_weights=np.zeros(0),
        log_evidence=log_evidence,
        ess=np.zeros(0),
        failure=failure,
        chain=np.zeros(0, dtype=int),
        acceptance=np.zeros(0),
        diagnostics={"rejected_by": dict(Counter(str(site) for site in engine.rejections))},
        stats={
            "chains": 0,
            "steps": 0,
            "seconds": time.perf_counter() - start,
            "seed": engine.seed,
            **engine.counters(),
        },
    )


def _chain_posterior(
    method: str,
    engine: Engine,
    kept: list[list[Execution]],
    acceptance: np.ndarray,
    start: float,
    log_evidence: float | None,
) -> Posterior:
    flat = [x for chain in kept for x in chain]
    n = len(flat)
    post = Posterior(
        method=method,
        values=[x.particle.value for x in flat],
        log_weights=np.full(n, -math.log(n)),
        log_evidence=log_evidence,
        ess=np.zeros(0),
        traces=[_trace_list(x.particle.trace) for x in flat],
        chain=np.repeat(np.arange(len(kept)), [len(c) for c in kept]),
        acceptance=np.asarray(acceptance, dtype=float),
        stats={
            "chains": len(kept),
            "steps": len(kept[0]) if kept else 0,
            "seconds": time.perf_counter() - start,
            "seed": engine.seed,
            **engine.counters(),
        },
    )
    # what `mh(init=post)` goes on from: one execution per chain, not every kept state, so that
    # the Posterior does not hold every state's contexts (and their KV caches) alive
    post._last_states = (
        (engine.program, engine.args, engine.kwargs),
        [chain[-1] for chain in kept if chain],
    )
    return post


def _rejections(engine: Engine) -> str:
    counts: dict[str, int] = {}
    for site in engine.rejections:
        counts[str(site)] = counts.get(str(site), 0) + 1
    return "; ".join(f"{k} at {s}" for s, k in counts.items()) or "none recorded"
