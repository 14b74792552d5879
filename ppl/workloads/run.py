"""`ppl.map` and `ppl.imap`: one inference method over many inputs, as one workload.

What it promises, and where each part happens:

* Item `i` is the call `method(program, *args_i, seed=(seed, i), **options, **kwargs_i)`: the
  same run, choice for choice, as that call made by itself (`ppl.workloads.items`), whatever
  the batching or the machine it runs on.
* On one machine the items in flight share every model call (`ppl.workloads.batch`); on Ray the
  items are spread over workers that each do the same (`ppl.workloads.cluster`).
* With a checkpoint file, every finished item is appended and flushed the moment it finishes, and
  a rerun skips what the file holds (`ppl.workloads.checkpoint`).
* An item that raises becomes an `ItemError` in its place (type, message, traceback); the others
  go on. Nothing is dropped: `map` returns one entry per input, in input order.
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

from ppl.compiler import Program
from ppl.inference.notices import InferenceWarning
from ppl.inference.options import keyword_names, suggestion
from ppl.inference.posterior import Posterior
from ppl.inference.progress import INTERVAL, REPORT, enabled
from ppl.models.base import LanguageModel
from ppl.workloads.batch import Outcome, SharedSteps
from ppl.workloads.checkpoint import Checkpoint, input_hash
from ppl.workloads.fingerprint import content, digest, model_digest, program_parts
from ppl.workloads.items import ItemError, _item_job

DEFAULT_ROWS = 256


@dataclass(frozen=True)
class MapOptions:
    """The options of one call of `map` or `imap`: their keyword arguments, held once.

    Each field is the keyword argument of the same name (see `map` for what it means);
    `options` holds the rest, the method's own options. Built in one place, `of`, from the
    call's arguments, and passed on as one value to the run (`_imap`) and to Ray
    (`ppl.workloads.cluster.run_on_ray`, once `in_flight` is settled).
    """

    seed: int | tuple[int, ...] | None
    checkpoint: str | None
    rows: int | None
    in_flight: int | None
    model: Any
    on_error: str
    progress: bool | None
    cluster: str | None
    workers: int | None
    resources: dict[str, float] | None
    retries: int
    runtime_env: dict[str, Any] | None
    allow_pickle: bool
    options: dict[str, Any]

    @classmethod
    def of(cls, arguments: dict[str, Any]) -> MapOptions:
        """The options of a call from its arguments by name (`locals()` as `map` or `imap`
        begins: their keyword parameters are these fields, and `**options` the last)."""
        return cls(**{field.name: arguments[field.name] for field in fields(cls)})


class Results(list):
    """What `ppl.map` returns: a list with one entry per input, in input order.

    Each entry is a `Posterior`, or an `ItemError` for an item that raised. `failures` lists the
    latter; `stats` holds the run's totals (items, failed, resumed from a checkpoint, seconds,
    shared model calls and tokens fed).
    """

    def __init__(self, entries: Iterable[Posterior | ItemError], stats: dict[str, Any]) -> None:
        super().__init__(entries)
        self.stats = stats

    @property
    def failures(self) -> list[ItemError]:
        return [e for e in self if isinstance(e, ItemError)]

    @property
    def ok(self) -> bool:
        """True when every item has a Posterior."""
        return not self.failures


class Running(Iterator[tuple[int, "Posterior | ItemError"]]):
    """The items of a mapped run, as they finish (what `ppl.imap` returns).

    `stats` holds the run's totals so far; `results()` runs what is left and returns them all.
    """

    def __init__(self, items: Iterator[tuple[int, Posterior | ItemError]], stats: dict) -> None:
        self._items = items
        self.stats = stats
        self._start = time.perf_counter()

    def __next__(self) -> tuple[int, Posterior | ItemError]:
        return next(self._items)

    def close(self) -> None:
        """Stop the run (the checkpoint keeps what finished)."""
        self._items.close()  # type: ignore[attr-defined]

    def results(self) -> Results:
        """Every item, in input order, once the run is over."""
        out = dict(self)
        self.stats["seconds"] = time.perf_counter() - self._start
        return Results([out[i] for i in range(len(out))], self.stats)


def map(
    method: Callable[..., Posterior],
    program: Program,
    inputs: Iterable[tuple | list | dict],
    *,
    seed: int | tuple[int, ...] | None = 0,
    checkpoint: str | None = None,
    rows: int | None = DEFAULT_ROWS,
    in_flight: int | None = None,
    model: Any = None,
    on_error: str = "record",
    progress: bool | None = None,
    cluster: str | None = None,
    workers: int | None = None,
    resources: dict[str, float] | None = None,
    retries: int = 2,
    runtime_env: dict[str, Any] | None = None,
    allow_pickle: bool = False,
    **options: Any,
) -> Results:
    """Run `method` (`ppl.smc`, `ppl.importance`, `ppl.mh`, ...) on every input of `program`.

    Args:
        method: an inference entry point, called as `method(program, *args, seed=..., **options)`.
        inputs: one entry per item: a tuple (or list) of positional arguments, or a dict of
            keyword arguments.
        seed: item `i` runs with seed `(seed, i)`, so `map(ppl.smc, p, xs, seed=s)[i]` is the
            run `ppl.smc(p, *xs[i], seed=(s, i))`; a tuple seed `(a, b)` gives `(a, b, i)`.
            None: every item unseeded.
        checkpoint: a JSONL file: each finished item is appended and flushed at once; a rerun
            with the same file returns what it holds and runs the rest (items that raised are
            run again).
        rows: row budget, the most rows in one forward pass (None: no limit). A row is one
            distinct sequence the model extends.
        in_flight: items run at once (default: `rows` divided by the rows one item uses, its
            `particles` or `chains`; every item when `rows` is None).
        model: a model spec (`ppl.models.spec(...)`, or "embedded" / "hf:NAME"), or a model,
            given to the program as its `lm` argument; positional inputs then fill the
            program's other parameters. Workers build it once each.
        on_error: "record" (an item that raises becomes an `ItemError`, the rest go on) or
            "raise" (the first error stops the run, after the checkpoint is written).
        progress: a progress bar over items (default: when stderr is a terminal or in a
            Jupyter notebook).
        cluster: None (this process), or "ray" (a local Ray cluster, or the one `ray.init()`
            connected to), or a Ray address ("auto", "ray://host:10001").
        workers: Ray workers (default: one per CPU of the cluster, at most one per item).
        resources: per worker, e.g. `{"num_gpus": 1}` or `{"num_cpus": 0.5}`.
        retries: on Ray, how many times an item is retried after its worker died.
        runtime_env: on Ray, the workers' runtime environment (Ray's `runtime_env`: e.g.
            `{"py_modules": [my_package]}` or `{"working_dir": "."}` to ship the program's code).
        allow_pickle: let the checkpoint hold values JSON cannot (written and read back with
            pickle). Off by default: unpickling a file can run any code, so only set it for
            files you wrote yourself, on both the run that writes and the one that resumes.
        options: passed to `method` (`particles=16`, `steps=100`, ...). The per-step record
            of smc, importance and smc_steer (`record=`) is off unless given: `record=True`
            (or None, the methods' automatic rule) keeps one in each Posterior.

    Returns:
        `Results`: a list of `Posterior` (or `ItemError`) in input order.
    """
    running = _imap(method, program, inputs, MapOptions.of(locals()))
    results = running.results()
    if results.failures:
        first = results.failures[0]
        warnings.warn(
            f"ppl.map: {len(results.failures)} of {len(results)} items raised; "
            f"the first: {first} (see Results.failures for each traceback)",
            InferenceWarning,
            stacklevel=2,
        )
    return results


def imap(*args: Any, **kwargs: Any) -> Running:
    """`ppl.map` that yields `(index, Posterior or ItemError)` as each item finishes.

    Takes exactly the arguments of `ppl.map` (its signature is `map`'s, held once there).

    Everything is checked, and the checkpoint read, when `imap` is called; the items run as
    the iterator is read. Items already in the checkpoint come first. Every index is yielded
    exactly once. The iterator's `stats` fill in as it runs (see `Results`).
    """
    try:
        bound = _MAP_SIGNATURE.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"ppl.imap: {e} (it takes the arguments of ppl.map)") from None
    bound.apply_defaults()
    named = bound.arguments
    return _imap(named["method"], named["program"], named["inputs"], MapOptions.of(named))


_MAP_SIGNATURE = inspect.signature(map)
imap.__signature__ = _MAP_SIGNATURE.replace(return_annotation=Running)  # type: ignore[attr-defined]


def _imap(
    method: Callable[..., Posterior],
    program: Program,
    inputs: Iterable[tuple | list | dict],
    settings: MapOptions,
) -> Running:
    """Check everything and read the checkpoint; the items' run, as an iterator.

    A mistake in the call (an option, an input, a checkpoint of other work) raises here, before
    anything runs or loads; what goes wrong later is the run's own.
    """
    if not callable(method):
        raise TypeError(f"ppl.map: method must be an inference function such as ppl.smc, got "
                        f"{type(method).__name__}")  # fmt: skip
    if not isinstance(program, Program):
        raise TypeError(
            f"ppl.map: program must be a @ppl.program, got {type(program).__name__}; "
            "decorate the function with @ppl.program"
        )
    if settings.on_error not in ("record", "raise"):
        raise ValueError(
            f"ppl.map: on_error must be 'record' or 'raise', got {settings.on_error!r}"
        )
    parts = settings.seed if isinstance(settings.seed, tuple) else (settings.seed,)
    if settings.seed is not None and not (
        parts and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in parts)
    ):
        raise ValueError(
            "ppl.map: seed must be a non-negative integer, a tuple of them, or None, got "
            f"{settings.seed!r}"
        )
    if "progress" in settings.options:
        raise TypeError("ppl.map: progress= is the bar over items; runs of items show none")
    items = [_as_call(i, x) for i, x in enumerate(_listed(inputs))]
    _check_options(method, program, settings.options, items)
    spec, lm = _model_of(settings.model)
    if lm is not None or spec is not None:
        items = [(_bind_lm(program, args, kwargs)) for args, kwargs in items]
    run_options = _run_options(method, settings.options)
    fingerprint = (
        _fingerprint(method, program, settings.seed, settings.options, spec or lm)
        if settings.checkpoint is not None
        else {}
    )
    # each input by content, for the checkpoint to tell inputs apart
    hashes = (
        [input_hash(a, k, i) for i, (a, k) in enumerate(items)]
        if settings.checkpoint
        else [""] * len(items)
    )
    store = (
        Checkpoint(settings.checkpoint, fingerprint, hashes, allow_pickle=settings.allow_pickle)
        if settings.checkpoint is not None
        else None
    )
    done = store.load() if store is not None else {}
    todo = [i for i in range(len(items)) if not isinstance(done.get(i), Posterior)]
    waiting = set(todo)
    n_items = len(items)
    stats: dict[str, Any] = {"items": n_items, "resumed": n_items - len(todo), "failed": 0}
    if settings.in_flight is None:
        per_item = _rows_per_item(method, settings.options)
        in_flight = len(todo) if settings.rows is None else max(1, settings.rows // per_item)
        settings = replace(settings, in_flight=in_flight)

    if settings.cluster is not None and lm is not None and spec is None:
        spec = getattr(lm, "spec", None)
        if spec is None:
            raise TypeError(
                "ppl.map: on a cluster the model is given as a spec that each worker "
                "builds, e.g. model=ppl.models.spec('embedded')"
            )

    def execute() -> Iterator[tuple[int, Posterior | ItemError]]:
        bar = _bar(settings.progress, n_items, n_items - len(todo))
        outcomes: Any = None
        try:
            for i in range(n_items):
                if i not in waiting:
                    yield i, done[i]
            if settings.cluster is None:
                steps = SharedSteps(rows=settings.rows, in_flight=max(1, settings.in_flight))

                def jobs() -> Iterator[tuple[int, Callable[[], Posterior]]]:
                    model_lm = (
                        lm if lm is not None else (spec.build() if spec is not None else None)
                    )
                    for i in todo:
                        args, kwargs = items[i]
                        if model_lm is not None:
                            kwargs = {**kwargs, "lm": model_lm}
                        job = _item_job(
                            method, program, args, kwargs, settings.seed, i, run_options
                        )
                        yield i, job if bar is None else _reporting(job, bar.reporter(i))

                outcomes = steps.run(jobs())
            else:
                from ppl.workloads.cluster import run_on_ray

                outcomes = run_on_ray(
                    settings,
                    spec,
                    method,
                    program,
                    [(i, *items[i]) for i in todo],
                    run_options,
                    stats,
                )
            ran: list[Posterior | None] = []
            for i, outcome in outcomes:
                if (
                    not outcome.error_text
                    and outcome.error is None
                    and isinstance(outcome.value, Posterior)
                ):
                    result: Posterior | ItemError = outcome.value
                    ran.append(result)
                else:
                    result = ItemError(i, _describe(outcome), outcome.traceback, hashes[i])
                    stats["failed"] += 1
                if store is not None:
                    store.append(i, result)
                if bar is not None:
                    bar.finished(i, isinstance(result, ItemError))
                if settings.on_error == "raise" and isinstance(result, ItemError):
                    error = outcome.error or RuntimeError(result.error)
                    _note(error, f"raised by item {i} under ppl.map (input {items[i]!r:.200})")
                    raise error
                yield i, result
            if settings.cluster is None:
                stats.update(forward_calls=steps.forward_calls, tokens_fed=steps.tokens_fed)
            else:  # each worker's calls are its own: the items' token counts add up to the total
                stats["tokens_fed"] = sum(
                    r.stats.get("tokens_fed", 0) for r in ran if r is not None
                )
        finally:
            if outcomes is not None:  # stops the runs in flight (Ray: its workers) at once
                outcomes.close()
            if bar is not None:
                bar.close()
            if store is not None:
                store.close()

    return Running(execute(), stats)


def _fingerprint(
    method: Callable[..., Any],
    program: Program,
    seed: Any,
    options: dict[str, Any],
    model: Any,
) -> dict[str, Any]:
    """What decides the items' results, part by part (`ppl.workloads.fingerprint`)."""
    return {
        "method": f"{getattr(method, '__module__', '')}.{getattr(method, '__qualname__', '')}",
        "program": program_parts(program),
        "model": model_digest(model),
        "seed": list(seed) if isinstance(seed, tuple) else seed,
        # options that change what is computed; record= only keeps more of it
        "options": {
            k: digest(content(v, f"option {k}", strict=False))
            for k, v in options.items()
            if k != "record"
        },
    }


def _listed(inputs: Iterable[Any]) -> list[Any]:
    if isinstance(inputs, (str, bytes, dict)):
        raise TypeError(
            f"ppl.map: inputs must be a list of items (tuples of arguments or dicts of keyword "
            f"arguments), got a single {type(inputs).__name__}"
        )
    try:
        return list(inputs)
    except TypeError:
        raise TypeError(
            f"ppl.map: inputs must be an iterable of items, got {type(inputs).__name__}"
        ) from None


def _as_call(index: int, item: Any) -> tuple[tuple, dict[str, Any]]:
    if isinstance(item, (tuple, list)):
        return tuple(item), {}
    if isinstance(item, dict):
        bad = [k for k in item if not isinstance(k, str)]
        if bad:
            raise TypeError(f"ppl.map: input {index} has a key that is not a name: {bad[0]!r}")
        return (), dict(item)
    raise TypeError(
        f"ppl.map: input {index} is a {type(item).__name__}; an input is a tuple of positional "
        f"arguments or a dict of keyword arguments (for one argument write ({item!r:.40},))"
    )


def _check_options(
    method: Callable[..., Any],
    program: Program,
    options: dict[str, Any],
    items: list[tuple[tuple, dict]],
) -> None:
    """Options are the method's own, or keyword arguments of the program shared by all items."""
    if "seed" in options:
        raise TypeError("ppl.map: seed= is map's own (item i runs with seed (seed, i))")
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return
    named = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    program_params = program.code.signature.parameters
    program_takes_any = any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in program_params.values()
    )
    for name in options:
        if name not in named and name not in program_params and not program_takes_any:
            raise TypeError(
                f"ppl.map: {method.__qualname__}() has no option {name!r} and "
                f"{program.__qualname__}() no parameter of that name"
                + _close_name(name, method, program.code.signature)
            )
    for index, (_, kwargs) in enumerate(items):
        clash = (set(kwargs) & named) | (set(kwargs) & set(options))
        if clash:
            raise TypeError(
                f"ppl.map: input {index} names {sorted(clash)}, which are options of "
                f"{method.__qualname__}(), not arguments of the program"
            )


def _close_name(name: str, method: Callable[..., Any], program: inspect.Signature) -> str:
    """The end of the message for an unknown option `name`: "; did you mean 'x'?" with the
    closest option of the method, parameter of the program or option of map itself, else
    the method's options."""
    keyword_only = inspect.Parameter.KEYWORD_ONLY
    options = [n for n, p in inspect.signature(method).parameters.items() if p.kind is keyword_only]
    own = [n for n, p in inspect.signature(imap).parameters.items() if p.kind is keyword_only]
    close = suggestion(name, [*options, *keyword_names(program), *own])
    if close is None:
        return f"; its options are {', '.join(options)}"
    return f"; did you mean {close!r}{' (an option of ppl.map)' if close in own else ''}?"


def _run_options(method: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    """The options with the method's own progress bar turned off (map shows one over items),
    and its per-step record too unless asked for (`record=True`): a checkpoint of many items
    keeps the results, not every step of every run."""
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return dict(options)
    out = dict(options)
    if "progress" in params:
        out["progress"] = False
    if "record" in params and "record" not in out:
        out["record"] = False
    return out


def _rows_per_item(method: Callable[..., Any], options: dict[str, Any]) -> int:
    """Rows one item feeds at a step, for sizing the items in flight: particles or chains."""
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    n = 1
    for name in ("particles", "chains"):
        if name in options:
            n = options[name]
            break
        if name in params and isinstance(params[name].default, int):
            n = params[name].default
            break
    if "children" in params:  # smc_steer extends each particle `children` ways
        n *= options.get("children", params["children"].default)
    return max(1, int(n)) if isinstance(n, (int, float)) and math.isfinite(n) else 1


def _model_of(model: Any) -> tuple[Any, LanguageModel | None]:
    """(spec, model) from map's `model=`: a spec, its command-line form, or a model."""
    if model is None:
        return None, None
    if isinstance(model, LanguageModel):
        return getattr(model, "spec", None), model
    from ppl.models.spec import ModelSpec

    if isinstance(model, str):
        return ModelSpec.parse(model), None
    if isinstance(model, ModelSpec):
        return model, None
    raise TypeError(
        f"ppl.map: model must be a model spec (ppl.models.spec(...)), 'embedded', 'hf:NAME' or "
        f"a language model, got {type(model).__name__}"
    )


def _bind_lm(program: Program, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict]:
    """Make room for `lm=`: positional inputs fill the program's parameters other than `lm`."""
    params = program.code.signature.parameters
    if "lm" not in params:
        raise TypeError(
            f"ppl.map: model= is given to the program as its `lm` argument, but "
            f"{program.__qualname__}() has no parameter named lm"
        )
    if "lm" in kwargs:
        raise TypeError("ppl.map: an input gives lm= and so does model=; give one of them")
    positional = [
        n
        for n, p in params.items()
        if n != "lm"
        and p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if len(args) > len(positional):
        raise TypeError(
            f"ppl.map: an input has {len(args)} positional arguments, but "
            f"{program.__qualname__}() takes {len(positional)} besides lm"
        )
    named = dict(zip(positional, args))
    clash = set(named) & set(kwargs)
    if clash:
        raise TypeError(f"ppl.map: an input gives {sorted(clash)} twice")
    return (), {**named, **kwargs}


def _describe(outcome: Outcome) -> str:
    if outcome.error_text:
        return outcome.error_text
    if outcome.error is not None:
        return f"{type(outcome.error).__name__}: {outcome.error}"
    return f"TypeError: the method returned {type(outcome.value).__name__}, not a Posterior"


def _reporting(
    job: Callable[[], Posterior], report: Callable[[int, int, str], None]
) -> Callable[[], Posterior]:
    """`job`, with its run's progress reported to `report` (set in the job's own context)."""

    def run() -> Posterior:
        REPORT.set(report)  # each job runs in a context of its own (`SharedSteps`)
        return job()

    return run


def _bar(progress: bool | None, total: int, initial: int) -> _MapBar | None:
    if not enabled(progress):
        return None
    return _MapBar(total, initial)


class _MapBar:
    """The bar over items: whole items finished, plus how far the items in flight are.

    Items in flight share every step, so they tend to finish together; between, each one's run
    reports (through `ppl.inference.progress.REPORT`, set in its own context) its particles
    stopped or chain steps done out of its total, and the bar counts that fraction of the item
    and shows the text of the oldest item in flight (step, ESS, log Z, ...).
    """

    FORMAT = (
        "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total_fmt} items "
        "[{elapsed}<{remaining}{postfix}]"
    )

    def __init__(self, total: int, initial: int) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, initial=initial, desc="ppl.map", bar_format=self.FORMAT)
        self._finished = float(initial)
        self._failed = 0
        self._inside: dict[int, tuple[float, str]] = {}  # item in flight -> (fraction, its text)
        self._next = 0.0

    def reporter(self, index: int) -> Callable[[int, int, str], None]:
        """What item `index`'s run reports to."""

        def report(done: int, total: int, text: str) -> None:
            # a resampled run may stop fewer particles than before: the bar does not go back
            before = self._inside.get(index, (0.0, ""))[0]
            self._inside[index] = (max(before, done / total if total else 0.0), text)
            self._draw()

        return report

    def finished(self, index: int, failed: bool) -> None:
        self._inside.pop(index, None)
        self._finished += 1
        self._failed += failed
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + INTERVAL
        parts = []
        if self._inside:
            first = min(self._inside)
            parts.append(f"{len(self._inside)} in flight; item {first}: {self._inside[first][1]}")
        if self._failed:
            parts.append(f"{self._failed} failed")
        self._bar.n = self._finished + sum(f for f, _ in self._inside.values())
        self._bar.set_postfix_str("; ".join(parts), refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


def _note(e: BaseException, text: str) -> None:
    if hasattr(e, "add_note"):
        e.add_note(text)
