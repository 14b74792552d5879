"""The `Posterior` builders: how each kind of run becomes the one result type.

* `particle_posterior`: a particle run (`smc`, `importance`, `smc_steer`, through the kernel's
  `Monitor`): its particles' values, traces and log weights, the evidence, and why it failed
  when every particle has zero weight;
* `chain_posterior`: an MCMC run (`mh`, `pimh`, `pgibbs`): its kept chain states, equally
  weighted, with the chain of each and the acceptance rates;
* `failed_posterior`: an MCMC run that found no execution of positive weight to start from;
* `exact_posterior`: the executions of `ppl.exact`, with their exact weights.

(`nuts` builds its own from NumPyro's draws: it runs no engine.) Each records, from the engine,
what rejected particles (`rejected_by`) and the run's counters, time and seed.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

import numpy as np

from ppl.inference.engine import Engine, Particle
from ppl.inference.execution import Execution, _trace_list
from ppl.inference.notices import warn
from ppl.inference.posterior import Posterior


def _rejected_by(engine: Engine) -> Counter[str]:
    """How many particles each statement rejected, most first."""
    return Counter(str(site) for site in engine.rejections)


def _stats(engine: Engine, start: float, seed: bool = True, **first: Any) -> dict[str, Any]:
    """A run's `stats`: `first`, then its seconds since `start`, its seed and the engine's
    counters (tokens fed, model calls, ...)."""
    return {
        **first,
        "seconds": time.perf_counter() - start,
        **({"seed": engine.seed} if seed else {}),
        **engine.counters(),
    }


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
        diagnostics={"rejected_by": dict(_rejected_by(engine))},
        stats=_stats(engine, start, chains=0, steps=0),
    )


def chain_posterior(
    method: str,
    engine: Engine,
    kept: list[list[Execution]],
    acceptance: np.ndarray,
    start: float,
    log_evidence: float | None,
) -> Posterior:
    """The `Posterior` of an MCMC run: the states in `kept` (one list per chain), equally
    weighted, and what `mh(init=post)` goes on from."""
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
        stats=_stats(engine, start, chains=len(kept), steps=len(kept[0]) if kept else 0),
    )
    # what `mh(init=post)` goes on from: one execution per chain, not every kept state, so that
    # the Posterior does not hold every state's contexts (and their KV caches) alive
    post._last_states = (
        (engine.program, engine.args, engine.kwargs),
        [chain[-1] for chain in kept if chain],
    )
    return post


def rejections(engine: Engine) -> str:
    """The engine's rejections as a sentence for an error: "3 at line 4; 1 at line 9"."""
    counts = _rejected_by(engine)  # in the order first seen
    return "; ".join(f"{k} at {s}" for s, k in counts.items()) or "none recorded"


def particle_posterior(
    method: str,
    engine: Engine,
    ps: list[Particle],
    lw: np.ndarray,
    log_z: float,
    ess_steps: list[float],
    resampled: list[int],
    ancestors: list[np.ndarray],
    start: float,
) -> Posterior:
    """The `Posterior` of a particle run: its particles' values, traces and log weights, the
    evidence estimate, and why it failed when every particle has zero weight."""
    n = len(ps)
    rejected = _rejected_by(engine)
    raised = Counter(engine.errors_seen)
    failure = None
    if log_z == -math.inf:
        reasons = [f"{k} rejected by {site}" for site, k in rejected.most_common()]
        reasons += [f"{k} raised {err}" for err, k in raised.most_common()]
        failure = (
            f"all {n} particles have zero weight ("
            + "; ".join(reasons or ["no reason recorded"])
            + ")"
        )
        warn(f"{method}: {failure}")
    elif raised:
        warn(
            f"{method}: {sum(raised.values())} particles raised and were dropped: "
            + "; ".join(raised)
        )
    return Posterior(
        method=method,
        values=[p.value if p.done and p.log_weight > -math.inf else None for p in ps],
        log_weights=lw,
        log_evidence=log_z,
        ess=np.asarray(ess_steps),
        resampled=resampled,
        ancestors=ancestors,
        traces=[p.to_trace() for p in ps],
        failure=failure,
        diagnostics={"rejected_by": dict(rejected), "errors": dict(raised)},
        stats=_stats(engine, start, particles=n, steps=engine.steps),
    )


def exact_posterior(engine: Engine, finished: list[Particle], made: int, start: float) -> Posterior:
    """The `Posterior` of `ppl.exact`: the `finished` executions (of `made` in all) with their
    exact log weights, normalised by their sum, the exact evidence."""
    lw = np.array([p.log_weight for p in finished], dtype=float)
    log_z = float(np.logaddexp.reduce(lw)) if len(lw) else -math.inf
    failure = None
    if log_z == -math.inf:
        rejected = _rejected_by(engine)
        reasons = [f"{k} rejected by {site}" for site, k in rejected.most_common()]
        failure = (
            "every execution has zero weight ("
            + ("; ".join(reasons) or "no execution finished")
            + ")"
        )
        warn(f"exact: {failure}")
    w = np.exp(lw - log_z) if len(lw) and log_z > -math.inf else np.zeros(len(lw))
    ess = 1.0 / float(np.sum(w**2)) if w.sum() > 0 else 0.0
    return Posterior(
        method="exact",
        values=[p.value for p in finished],
        log_weights=lw,
        log_evidence=log_z,
        ess=np.array([ess]),
        traces=[p.to_trace() for p in finished],
        failure=failure,
        diagnostics={"rejected_by": dict(_rejected_by(engine))},
        stats=_stats(
            engine, start, seed=False, executions=made, finished=len(finished), steps=engine.steps
        ),
    )
