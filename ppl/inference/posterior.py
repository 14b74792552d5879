"""`Posterior`: what every inference algorithm returns.

Its views are modules of their own, above it: `summary` (text), `plots`, `html` and `serialize`
(JSON). `Posterior`'s methods import them when called; they take the posterior as they find it
(its fields) and never import this module, so the imports run one way.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppl.inference.engine import Choice
from ppl.inference.weights import ess_of as ess_of
from ppl.inference.weights import log_sum_exp as log_sum_exp
from ppl.inference.weights import normalise as normalise

_SAMPLES_STREAM = 0x73616D70  # "samp": the spawn key of `Posterior.samples`' generator


@dataclass
class Posterior:
    """Weighted samples of a program's return value, with the evidence and diagnostics.

    Attributes:
        method: the algorithm that made it ("smc", "importance", ...).
        values: return value of each particle (None for particles with zero weight).
        log_weights: final log weight of each particle.
        log_evidence: estimate of log Z, the log normalising constant of the program's target
            (-inf when every particle was rejected).
        ess: effective sample size after each step's reweighting, before any resampling.
        resampled: the steps at which the particles were resampled.
        ancestors: for each resampling, the index of the parent of each new particle.
        traces: the choices of each particle, a `ppl.Trace` (address, value and log probability
            of each choice, and the score) for IS and SMC.
        failure: why the run has no sample with positive weight, or None.
        diagnostics: where particles were rejected (statement -> count) and errors raised.
        stats: particles, steps, model calls, tokens fed, seconds, seed.
        log_evidence_steps: the running estimate of log Z after each step (SMC variants): the
            evidence of the resampling steps so far times the mean current weight.
        chain: for MCMC, the chain of each value (values are chain-major, in step order).
        acceptance: for MCMC, the acceptance rate of each chain; for SMC with rejuvenation,
            the acceptance rate of the moves.
        history: per-step snapshots of an smc, importance or smc_steer run (kept by default
            for up to 256 particles, see their `record=`): for each step, the particles' texts,
            log weights and states, the parents after any resampling, and the prompts first
            met at that step; None without a record.
    """

    method: str
    values: list[Any]
    log_weights: np.ndarray
    log_evidence: float | None
    ess: np.ndarray
    resampled: list[int] = field(default_factory=list)
    ancestors: list[np.ndarray] = field(default_factory=list)
    traces: list[Sequence[Choice]] = field(default_factory=list)
    failure: str | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    log_evidence_steps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    chain: np.ndarray | None = None
    acceptance: np.ndarray | None = None
    history: list[dict[str, Any]] | None = None

    @property
    def mask_leaks(self) -> int:
        """How many distinct finished texts the mask engine let through although they broke
        their constraint: each was caught by the reference check and given weight zero, so the
        result is exact; more than zero means the engine has a hole (`MaskLeakWarning`)."""
        return int(self.diagnostics.get("mask_leaks", 0))

    @property
    def weights(self) -> np.ndarray:
        """Normalised weights (all zero if every particle was rejected)."""
        return normalise(self.log_weights)

    @property
    def num_particles(self) -> int:
        return len(self.values)

    @property
    def final_ess(self) -> float:
        return ess_of(self.log_weights)

    def samples(self, n: int | None = None, *, seed: int | None = None) -> list[Any]:
        """`n` return values (default: one per particle) drawn by weight, with replacement.

        Reproducible: without `seed` the draws derive from the run's seed (`stats["seed"]`),
        so the same posterior (or the same run made again, or loaded from a file) gives the
        same samples for the same call; `seed=` draws others. An unseeded run records the
        entropy it drew as its seed, so its samples differ from run to run but not from call to
        call; a posterior with no recorded seed draws fresh ones on every call.
        """
        w = self.weights
        if w.sum() == 0:
            raise ValueError(f"no sample has positive weight: {self.failure}")
        n = self.num_particles if n is None else n
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"Posterior.samples(n): n must be a whole number >= 0, got {n!r}")
        rng = np.random.default_rng(seed if seed is not None else self._samples_seed())
        idx = rng.choice(len(w), size=n, p=w)
        return [self.values[i] for i in idx]

    def _samples_seed(self) -> np.random.SeedSequence | None:
        """The seed of `samples()` without `seed=`: a stream of the run's seed that the run's
        own generators (`ppl.runtime.generators`: spawn keys 0 and 1) do not use."""
        run_seed = self.stats.get("seed") if isinstance(self.stats, dict) else None
        if run_seed is None:
            return None
        try:
            return np.random.SeedSequence(run_seed, spawn_key=(_SAMPLES_STREAM,))
        except (TypeError, ValueError):  # not a seed numpy takes: draw fresh samples
            return None

    def distribution(self) -> dict[Any, float]:
        """Total normalised weight of each distinct return value, most probable first.

        Hashable values are their own keys. Values that are not hashable, such as the dicts
        and lists a JSON schema produces, are keyed by a canonical text: JSON with sorted keys
        (`'{"age": 3, "name": "Ada"}'`), so equal values share one key whatever their key order.
        """
        from ppl.inference.summary import canonical

        out: Counter = Counter()
        for v, w in zip(self.values, self.weights):
            if w > 0:
                out[canonical(v)] += float(w)
        return dict(out.most_common())

    def expectation(self, f: Any = None) -> float:
        """Weighted mean of `f(value)` (of the values themselves when `f` is None).

        The values, or what `f` returns, must be numbers (True counts as 1): for a text, pass
        a function, e.g. `expectation(lambda text: "yes" in text)`.
        """
        w = self.weights
        if w.sum() == 0:
            raise ValueError(f"no sample has positive weight: {self.failure}")
        xs = [v if f is None else f(v) for v, wi in zip(self.values, w) if wi > 0]
        try:
            arr = np.asarray(xs, dtype=float)
        except (TypeError, ValueError):
            bad = next(x for x in xs if not _is_number(x) and not isinstance(x, (bool, np.bool_)))
            what = "the return values" if f is None else "f(value)"
            raise TypeError(
                f"Posterior.expectation needs numbers, but {what} include "
                f"{type(bad).__name__} {bad!r:.60}; pass f= to map each value to a number, "
                "e.g. expectation(lambda v: len(v))"
            ) from None
        if arr.ndim != 1:
            raise TypeError(
                f"Posterior.expectation needs one number per sample, got values of shape "
                f"{arr.shape[1:]}; pass f= to map each value to a number"
            )
        return float(np.dot([wi for wi in w if wi > 0], arr))

    @property
    def acceptance_rate(self) -> float | None:
        """Mean acceptance rate of the MCMC moves (None for runs without MCMC)."""
        if self.acceptance is None or len(self.acceptance) == 0:
            return None
        return float(np.mean(self.acceptance))

    def summary(self, top: int = 10, width: int = 88) -> str:
        """The run at a glance, as text.

        Method, size, time and model calls; the evidence as a log and in words ("about 1 in
        94"); ESS as min, median and final with the number of resampling steps; acceptance for
        MCMC; then the `top` most probable distinct values with their total weight and how many
        samples hold them (texts in full, wrapped at `width`), and for numeric return values
        and named choices the weighted mean, sd and 5/50/95% quantiles.
        """
        from ppl.inference.summary import render

        return render(self, top, width)

    # -- diagnostics views ----------------------------------------------------------------------

    def plot(self, path: str | None = None) -> Any:
        """A matplotlib figure of the run, saved to `path` when given (`ppl.inference.plots`).

        SMC: ESS per step with the resampling threshold and the resampling steps marked, and
        the running log evidence estimate. Importance sampling: a histogram of the normalised
        log weights (N and ESS in the title) and the weights sorted. MCMC: a trace per chain of
        the numeric return value or named choices (else the log probability of the choices, or
        the text length), and the acceptance rate per chain. Needs matplotlib.
        """
        from ppl.inference.plots import plot

        return plot(self, path)

    def html(self, path: str | None = None, title: str | None = None) -> str:
        """A self-contained HTML page of an smc, importance or smc_steer run.

        Written to `path` when given (returned either way as a string): the prompt, a legend,
        the ESS and running log evidence over the steps, the distinct final texts with their
        weights, and the particles of every step with their text and weights, with lines from
        each particle to its parent at resampling. Needs the run's per-step record (`history`,
        kept by default for runs of up to 256 particles; `record=True` forces it); raises
        `ValueError` saying how to get one when there is none.
        """
        from ppl.inference.html import render

        page = render(self, title)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(page)
        return page

    def to_arviz(self, *, seed: int | None = 0) -> Any:
        """An `arviz.InferenceData` of the numeric named choices (and a numeric return value).

        MCMC runs keep their chains. Weighted runs (IS, SMC) become one chain of
        `num_particles` draws, resampled by weight (systematic, seeded). A named choice that is
        not numeric, or is missing from some samples (or repeated with different values at one
        name), is left out; `return` holds numeric return values.
        """
        try:
            with warnings.catch_warnings():  # arviz announces its own refactor on import
                warnings.simplefilter("ignore", FutureWarning)
                import arviz
        except ImportError:
            raise ImportError(
                "Posterior.to_arviz needs arviz: pip install arviz "
                "(in a clone of ppl: pip install -e '.[arviz]')"
            ) from None
        if self.chain is not None:
            chain = np.asarray(self.chain)
            order = [np.flatnonzero(chain == c) for c in np.unique(chain)]
        else:
            w = self.weights
            if w.sum() == 0:
                raise ValueError(f"no sample has positive weight: {self.failure}")
            from ppl.inference.resampling import systematic

            order = [systematic(np.random.default_rng(seed), w, self.num_particles)]
        columns: dict[str, list[Any]] = {}
        used = sorted({int(i) for o in order for i in o})
        rows = []
        for i in used:  # samples that appear in the draws
            row = {c.name: c.value for c in self.traces[i] if c.name is not None}
            row["return"] = self.values[i]
            rows.append(row)
        position = {i: k for k, i in enumerate(used)}
        order = [np.array([position[int(i)] for i in o], dtype=np.int64) for o in order]
        names = set(rows[0]) if rows else set()
        for row in rows[1:]:
            names &= set(row)
        for name in sorted(names):
            if all(_is_number(r[name]) for r in rows):
                columns[name] = [float(r[name]) for r in rows]
        if not columns:
            raise ValueError(
                "no numeric named choice or return value to convert; name the choices, "
                'sample("x", dist), to see them in arviz'
            )
        lengths = {len(o) for o in order}
        if len(lengths) != 1:
            raise ValueError("chains of different lengths cannot be converted to arviz")
        posterior = {
            name: np.stack([np.asarray(vals)[o] for o in order]) for name, vals in columns.items()
        }
        return arviz.from_dict(posterior=posterior)

    # -- saving ----------------------------------------------------------------------------------

    def to_dict(self, *, allow_pickle: bool = False) -> dict[str, Any]:
        """Every field as strict JSON data; `Posterior.from_dict` gives it back.

        The format is in `ppl.inference.serialize` and docs/inference.md. Compact
        `json.dumps(post.to_dict(), allow_nan=False)` is one line: one run per line of a JSONL.
        A value JSON cannot hold (a `Fraction`, a namedtuple, a user's class: see the format)
        raises `SaveError`, a TypeError naming it and where it is, unless `allow_pickle=True`:
        it is then pickled, and reading it back needs `from_dict(d, allow_pickle=True)`.
        Unpickling can run any code: only for files you wrote yourself.
        """
        from ppl.inference.serialize import posterior_to_dict

        return posterior_to_dict(self, allow_pickle=allow_pickle)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, allow_pickle: bool = False) -> Posterior:
        """The posterior that `to_dict` wrote as `d` (ValueError if `d` is not one).

        Tokens come back as `TokenRecord`s and jax arrays as numpy arrays. A pickled value
        (written with `to_dict(allow_pickle=True)`) raises `PickleRefusedError`, a ValueError
        naming it, and nothing of it is unpickled, unless `allow_pickle=True`: unpickling can
        run any code, so pass it only for data you wrote yourself, never for data from others.
        """
        from ppl.inference.serialize import posterior_from_dict

        return posterior_from_dict(d, cls=Posterior, allow_pickle=allow_pickle)

    def save(self, path: str | os.PathLike[str], *, allow_pickle: bool = False) -> None:
        """Write `to_dict()` to `path` as indented UTF-8 JSON.

        The file holds data only: a value JSON cannot hold raises `SaveError` (a TypeError) and
        nothing is written, unless `allow_pickle=True`, which pickles it; loading such a file
        then needs `Posterior.load(path, allow_pickle=True)`, which can run any code the file
        holds: only for files you wrote yourself.
        """
        d = self.to_dict(allow_pickle=allow_pickle)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(d, f, indent=1, allow_nan=False, ensure_ascii=False)
            f.write("\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, allow_pickle: bool = False) -> Posterior:
        """The posterior that `save` wrote to `path`.

        Raises ValueError, naming `path`, when the file is not a saved ppl posterior, and
        `PickleRefusedError` (a ValueError naming `path` and the value) when it holds a pickled
        value: nothing in the file is unpickled unless `allow_pickle=True`, which can run any
        code the file holds; pass it only for a file you wrote yourself, never one from others.
        """
        from ppl.inference.serialize import PickleRefusedError

        where = os.fspath(path)
        with open(path, encoding="utf-8") as f:
            try:
                d = json.load(f)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{where}: not a ppl posterior (not JSON: {e})") from e
        try:
            return cls.from_dict(d, allow_pickle=allow_pickle)
        except PickleRefusedError as e:
            raise PickleRefusedError(f"{where}: {e}", where=e.where, recorded=e.recorded) from None
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from e

    def _repr_html_(self) -> str:
        """Notebooks show the summary (`summary()`) when a cell ends with a posterior."""
        import html

        return f"<pre>{html.escape(self.summary())}</pre>"

    def __repr__(self) -> str:
        z = "None" if self.log_evidence is None else f"{self.log_evidence:.4f}"
        if self.chain is not None:
            return (
                f"Posterior(method={self.method!r}, samples={self.num_particles}, "
                f"log_evidence={z}, acceptance={self.acceptance_rate:.3f})"
            )
        return (
            f"Posterior(method={self.method!r}, particles={self.num_particles}, "
            f"log_evidence={z}, ess={self.final_ess:.2f})"
        )


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, str)


def counts_mask_leaks(run: Callable[..., Posterior]) -> Callable[..., Posterior]:
    """Decorate an inference function: the mask leaks met during its run are counted in its
    posterior's `diagnostics["mask_leaks"]` (see `ppl.constraints.reference`)."""
    from ppl.constraints.reference import collect_leaks, stop_collecting

    @functools.wraps(run)
    def counted(*args: Any, **kwargs: Any) -> Posterior:
        log, token = collect_leaks()
        try:
            post = run(*args, **kwargs)
        finally:
            stop_collecting(token)
        if log.count and isinstance(post, Posterior):
            post.diagnostics["mask_leaks"] = log.count
        return post

    return counted
