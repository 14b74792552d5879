"""Scheduler overhead: SMC over a language model that costs nothing.

The model returns one fixed row of next-token log-probabilities without computing anything, so
the time measured is ppl's own: running each particle's compiled program to its next choice,
gathering the choices, drawing the tokens in one batch, recording traces, reweighting and
resampling. Reported per particle-step (one token choice of one particle).

A second measurement forks particles after different numbers of steps: a fork copies the
particle's frames (its local variables), so its cost depends on the size of the program's state,
never on how many steps the particle has taken. A third times the first and the last passes of
a loop of 1,000 passes (`--loop`) with a choice in each: a pass costs the same at the end as at
the start.

With `--against REV` the same measurements run on ppl as it was at git revision REV (imported
under another name) and on ppl as it is, interleaved in one process, and each figure is given
as the median of the repeats and the ratio now/then: a change's cost, free of the drift of a
shared machine between two runs.

    python benchmarks/scheduler_overhead.py [--particles 1000] [--steps 200] [--repeats 3]
        [--loop 1000] [--smoke]
    python benchmarks/scheduler_overhead.py --against HEAD~1 --repeats 7
"""

from __future__ import annotations

import argparse
import gc
import importlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from _smoke import parse_args

import ppl

ROOT = Path(__file__).resolve().parent.parent


def zero_cost_lm(lib: types.ModuleType, vocab_size: int = 8) -> Any:
    """A model of `lib` (ppl or a baseline) whose every next-token distribution is one fixed
    row, found at no cost."""
    base = importlib.import_module(lib.__name__ + ".models.base")

    class ZeroCostLM(base.LanguageModel):
        def __init__(self) -> None:
            super().__init__()
            self.token_bytes = [bytes([97 + i]) for i in range(vocab_size)]
            self.eos_token_ids = frozenset()
            self._row = torch.full((vocab_size,), -torch.log(torch.tensor(float(vocab_size))))

        def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
            return [b - 97 for b in text.encode()]

        def _extend(self, parents, new_tokens):  # never called: compute_logprobs is overridden
            raise AssertionError

        def compute_logprobs(self, contexts: Sequence[Any], *, max_rows: int | None = None) -> Any:
            # every context gets the same row: one "call", feeding nothing
            self.forward_calls += 1
            row = self._row
            for ctx in contexts:
                if ctx._logprobs is None:
                    ctx._set_fed(None, row)
            return base.Fed(1, 0)

    return ZeroCostLM()


# The programs, written once; `Bench` compiles them with the primitives of each ppl measured.


def walk(steps):
    ctx = lm.context("a")  # noqa: F821 - `lm` is given by `Bench`
    for _ in range(steps):
        tok = sample(ctx.next_token())  # noqa: F821
        ctx = ctx + tok
    return len(ctx)


def walk_weighted(steps):
    ctx = lm.context("a")  # noqa: F821
    for _ in range(steps):
        tok = sample(ctx.next_token())  # noqa: F821
        ctx = ctx + tok
        factor(-0.01 * tok.id)  # noqa: F821 - unequal weights: resampling every step
    return len(ctx)


class Bench:
    """The measurements, on one ppl (`lib`): the installed one or a baseline."""

    def __init__(self, lib: types.ModuleType) -> None:
        self.lib = lib
        self.Engine = importlib.import_module(lib.__name__ + ".inference.engine").Engine
        scope = {
            **globals(),
            "lm": zero_cost_lm(lib),
            "sample": lib.sample,
            "factor": lib.factor,
        }
        self.walk = lib.program(types.FunctionType(walk.__code__, scope, "walk"))
        self.walk_weighted = lib.program(
            types.FunctionType(walk_weighted.__code__, scope, "walk_weighted")
        )

    def per_particle_step(self, prog, particles: int, steps: int, threshold: float) -> tuple:
        """Microseconds per particle-step of one SMC run, and its number of resamplings."""
        start = time.perf_counter()
        post = self.lib.smc(
            prog, steps, particles=particles, ess_threshold=threshold, seed=0, record=False
        )
        elapsed = time.perf_counter() - start
        return elapsed / (particles * steps) * 1e6, len(post.resampled)

    def fork_cost(self, points: Sequence[int], forks: int = 2000) -> dict[int, float]:
        """Microseconds per fork of a particle that has taken `t` steps, for each t."""
        engine = self.Engine(self.walk, (max(points) + 1,), {}, seed=0)
        [p] = engine.new_particles(1)
        out = {}
        taken = 0
        for t in sorted(points):
            while taken < t:
                engine.advance([p])
                engine.resolve([p])
                taken += 1
            engine.advance([p])
            start = time.perf_counter()
            for _ in range(forks):
                p.fork()
            out[t] = (time.perf_counter() - start) / forks * 1e6
        return out

    def drift(self, particles: int, steps: int) -> tuple:
        """Microseconds per particle-step over the first and the last tenth of the passes of a
        loop of `steps` passes with a choice in each (medians of the passes)."""
        window = max(steps // 10, 1)
        engine = self.Engine(self.walk, (steps,), {}, seed=0)
        ps = engine.new_particles(particles)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            engine.advance(ps)
            engine.resolve(ps)
            times.append(time.perf_counter() - start)
        first = statistics.median(times[:window])
        last = statistics.median(times[-window:])
        return first / particles * 1e6, last / particles * 1e6

    def figures(self, particles: int, steps: int, loop: int) -> dict[str, float]:
        """One round of every measurement, by name (each after a full garbage collection)."""
        gc.collect()
        out = {}
        out["equal weights, no resampling"], _ = self.per_particle_step(
            self.walk, particles, steps, 0.5
        )
        gc.collect()
        out["resampling and forking every step"], _ = self.per_particle_step(
            self.walk_weighted, particles, steps, 1.0
        )
        gc.collect()
        first, last = self.drift(max(particles // 10, 1), loop)
        window = max(loop // 10, 1)
        out[f"loop of {loop}: passes 1-{window}"] = first
        out[f"loop of {loop}: passes {loop - window + 1}-{loop}"] = last
        gc.collect()
        for t, c in self.fork_cost([1, steps]).items():
            out[f"fork after {t} steps"] = c
        return out


def baseline(rev: str) -> types.ModuleType:
    """ppl as it was at git revision `rev`, imported as `ppl_baseline`."""
    folder = Path(tempfile.mkdtemp(prefix="ppl_baseline_"))
    archive = subprocess.run(
        ["git", "archive", rev, "ppl"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    package = folder / "ppl_baseline"
    (folder / "ppl").rename(package)
    imports = re.compile(r"\b(from|import) ppl\b")
    for path in package.rglob("*.py"):
        text = path.read_text()
        text = imports.sub(lambda m: f"{m[1]} ppl_baseline", text)
        path.write_text(text.replace('"ppl.', '"ppl_baseline.'))
    sys.path.insert(0, str(folder))
    return importlib.import_module("ppl_baseline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--particles", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--loop", type=int, default=1000, help="passes of the drift loop (particles / 10 each)"
    )
    parser.add_argument("--against", metavar="REV", help="also measure ppl at git revision REV")
    args = parse_args(parser, particles=20, steps=10, repeats=1, loop=50)
    n, t = args.particles, args.steps
    benches = {"now": Bench(ppl)}
    if args.against:
        benches = {"then": Bench(baseline(args.against)), **benches}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in benches}
    for r in range(args.repeats):
        # interleaved, in turns first, so that both see the same machine and the same heap
        order = list(benches.items())
        for name, bench in order[::-1] if r % 2 else order:
            rounds[name].append(bench.figures(n, t, args.loop))
    medians = {
        name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in rounds.items()
    }
    print(
        f"scheduler overhead, zero-cost LM, {n} particles x {t} steps; microseconds per "
        f"particle-step or per fork, median of {args.repeats}"
    )
    now = medians["now"]
    if args.against:
        then = medians["then"]
        print(f"  {'':40s} {args.against:>10s} {'now':>10s} {'now/then':>9s}")
        for k in now:
            print(f"  {k:40s} {then[k]:10.2f} {now[k]:10.2f} {now[k] / then[k]:9.3f}")
    else:
        for k, v in now.items():
            print(f"  {k:40s} {v:10.2f}")
    first, last = (v for k, v in now.items() if k.startswith("loop of"))
    print(f"  a loop's last passes cost {last / first:.2f}x its first")


if __name__ == "__main__":
    main()
