"""NUTS for programs whose random choices are all continuous NumPyro distributions.

The program runs directly (not compiled) under a handler that turns each ppl primitive into its
NumPyro counterpart: a choice at address a becomes `numpyro.sample(a, d)`, `observe(d, v)`
becomes `numpyro.sample(a, d, obs=v)`, `factor(w)` becomes `numpyro.factor(a, w)` and
`condition(ok)` a factor of 0 or -inf. NumPyro's NUTS then samples the joint density

    log p(x, y) = sum_i log p(x_i | x_<i) + sum_j log-weight_j

on an unconstrained space (each choice mapped through the bijection to its support), which is
the same target the program has under SMC and importance sampling. Each draw is then replayed
through the program to give its return value and its `Trace`.

Programs run under JAX tracing here: branching on a continuous choice (`if x > 0:`) or converting
one to a Python number is an error, as it would be in a NumPyro model.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from ppl.compiler import Program
from ppl.distributions import NumPyro, _to_python
from ppl.handlers import Messenger, replay, trace
from ppl.inference.options import checks_options
from ppl.inference.posterior import Posterior
from ppl.inference.progress import enabled
from ppl.primitives import is_traced
from ppl.runtime import Message, generators
from ppl.trace import Choice, Trace


class _AsNumPyro(Messenger):
    """Sends each primitive of a direct run to NumPyro's own primitives."""

    def process_message(self, msg: Message) -> None:
        import jax.numpy as jnp
        import numpyro

        fn, address, site = msg["fn"], msg["address"], msg["site"]
        kind = msg["type"]
        if kind == "sample" and not msg["observed"]:
            if not isinstance(fn, NumPyro) or fn.is_discrete:
                raise TypeError(
                    f"{site}: nuts needs every choice to be a continuous NumPyro distribution; "
                    f"the choice {address!r} is {fn!r}. Use smc, importance or mh for programs "
                    "with discrete or language-model choices"
                )
            msg["value"] = numpyro.sample(address, fn.dist)
        elif kind in ("sample", "observe"):  # an observation, or a choice fixed by condition
            if isinstance(fn, NumPyro):
                numpyro.sample(address, fn.dist, obs=msg["value"])
            else:
                numpyro.factor(address, fn.log_prob(msg["value"]))
        elif msg["infer"].get("condition") and is_traced(msg["log_weight"]):
            numpyro.factor(address, jnp.where(msg["log_weight"], 0.0, -jnp.inf))
        else:
            numpyro.factor(address, msg["log_weight"])
        msg["stop"] = True


@checks_options
def nuts(
    program: Program,
    *args: Any,
    samples: int = 1000,
    warmup: int = 500,
    seed: int | None = None,
    target_accept: float = 0.8,
    progress: bool | None = None,
    **kwargs: Any,
) -> Posterior:
    """NumPyro's No-U-Turn sampler on `program(*args, **kwargs)`: `samples` draws after `warmup`.

    Every choice of the program must be a continuous NumPyro distribution (`observe` may use any
    distribution). Returns a `Posterior` with equal weights: `values` are the return values of
    the draws in order, `traces` their choices (`Trace`), `log_evidence` is None (NUTS does not
    estimate it), `acceptance` the mean acceptance probability, and `diagnostics` the number of
    divergent transitions and the effective sample size of each choice.

    `progress` is NumPyro's progress bar (warmup / sample steps, step size, acceptance
    probability): True shows it, False hides it, None (the default) shows it when stderr is a
    terminal or in a Jupyter notebook.
    """
    if not isinstance(program, Program):
        raise TypeError(
            f"nuts needs a @ppl.program, got {type(program).__name__}; "
            "decorate the function with @ppl.program"
        )
    for label, n, low in (("samples", samples, 1), ("warmup", warmup, 0)):
        if not isinstance(n, (int, np.integer)) or n < low:
            raise ValueError(f"{label} must be an integer >= {low}, got {n!r}")
    import jax
    from numpyro.diagnostics import effective_sample_size
    from numpyro.infer import MCMC, NUTS

    start = time.perf_counter()
    entropy, rng, _ = generators(seed)

    def model() -> None:
        with _AsNumPyro():
            program(*args, **kwargs)

    mcmc = MCMC(
        NUTS(model, target_accept_prob=target_accept),
        num_warmup=warmup,
        num_samples=samples,
        progress_bar=False,
    )
    # set after construction: NumPyro turns its bar off where a CI variable is set, and
    # progress=True asks for one
    mcmc.progress_bar = enabled(progress)
    try:
        mcmc.run(
            jax.random.PRNGKey(rng.integers(2**32, dtype=np.uint32)), extra_fields=("diverging",)
        )
    except jax.errors.ConcretizationTypeError as e:
        if hasattr(e, "add_note"):
            e.add_note(
                "nuts runs the program with JAX arrays for its choices: branching on a choice "
                "or converting it to a Python number is not supported"
            )
        raise
    draws = {k: np.asarray(v) for k, v in mcmc.get_samples().items()}
    values: list[Any] = []
    traces: list[Trace] = []
    for i in range(samples):
        fixed = Trace([Choice(None, None, _to_python(v[i]), 0.0, k) for k, v in draws.items()])
        tracer = trace(replay(program, fixed))
        values.append(tracer(*args, **kwargs))
        traces.append(tracer.trace)
    extra = mcmc.get_extra_fields()
    accept = float(np.mean(np.asarray(mcmc.last_state.mean_accept_prob)))
    ess = {k: float(effective_sample_size(v[None])) for k, v in draws.items() if v.ndim == 1}
    return Posterior(
        method="nuts",
        values=values,
        log_weights=np.zeros(samples),
        log_evidence=None,
        ess=np.zeros(0),
        traces=traces,
        diagnostics={
            "divergences": int(np.sum(np.asarray(extra["diverging"]))),
            "effective_sample_size": ess,
        },
        stats={
            "samples": samples,
            "warmup": warmup,
            "chains": 1,
            "steps": samples,
            "seconds": time.perf_counter() - start,
            "seed": entropy,
        },
        chain=np.zeros(samples, dtype=int),
        acceptance=np.array([accept]) if math.isfinite(accept) else None,
    )
