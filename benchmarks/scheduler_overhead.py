"""Scheduler overhead: SMC over a language model that costs nothing.

The model returns one fixed row of next-token log-probabilities without computing anything, so
the time measured is ppl's own: running each particle's compiled program to its next choice,
gathering the choices, drawing the tokens in one batch, recording traces, reweighting and
resampling. Reported per particle-step (one token choice of one particle).

A second measurement forks particles after different numbers of steps: a fork copies the
particle's frames (its local variables), so its cost depends on the size of the program's state,
never on how many steps the particle has taken.

    python benchmarks/scheduler_overhead.py [--particles 1000] [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch

import ppl
from ppl import factor, program, sample
from ppl.context import Context
from ppl.inference.engine import Engine
from ppl.models.base import Fed, LanguageModel


class ZeroCostLM(LanguageModel):
    """A model whose every next-token distribution is one fixed row, found at no cost."""

    def __init__(self, vocab_size: int = 8) -> None:
        super().__init__()
        self.token_bytes = [bytes([97 + i]) for i in range(vocab_size)]
        self.eos_token_ids = frozenset()
        self._row = torch.full((vocab_size,), -torch.log(torch.tensor(float(vocab_size))))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return [b - 97 for b in text.encode()]

    def _extend(self, parents, new_tokens):  # never called: compute_logprobs is overridden
        raise AssertionError

    def compute_logprobs(self, contexts: Sequence[Context], *, max_rows: int | None = None) -> Fed:
        # every context gets the same row: one "call", feeding nothing
        self.forward_calls += 1
        row = self._row
        for ctx in contexts:
            if ctx._logprobs is None:
                ctx._set_fed(None, row)
        return Fed(1, 0)


lm = ZeroCostLM()


@program
def walk(steps):
    ctx = lm.context("a")
    for _ in range(steps):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
    return len(ctx)


@program
def walk_weighted(steps):
    ctx = lm.context("a")
    for _ in range(steps):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        factor(-0.01 * tok.id)  # unequal weights: resampling (and forking) at every step
    return len(ctx)


def per_particle_step(prog, particles: int, steps: int, threshold: float, repeats: int) -> tuple:
    times, resamplings = [], 0
    for r in range(repeats):
        start = time.perf_counter()
        post = ppl.smc(
            prog, steps, particles=particles, ess_threshold=threshold, seed=r, record=False
        )
        times.append(time.perf_counter() - start)
        resamplings = len(post.resampled)
    return min(times) / (particles * steps) * 1e6, resamplings


def fork_cost(points: Sequence[int], forks: int = 2000) -> dict[int, float]:
    """Microseconds per fork of a particle that has taken `t` steps, for each t in `points`."""
    engine = Engine(walk, (max(points) + 1,), {}, seed=0)
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


def drift(particles: int = 100, steps: int = 1000, window: int = 100) -> tuple[float, float]:
    """Microseconds per particle-step over the first and the last `window` passes of a loop of
    `steps` passes with a choice in each: a loop's pass costs the same at its end as at its
    start (no state that grows with the passes taken)."""
    engine = Engine(walk, (steps,), {}, seed=0)
    ps = engine.new_particles(particles)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        engine.advance(ps)
        engine.resolve(ps)
        times.append(time.perf_counter() - start)
    first = sorted(times[:window])[window // 2]
    last = sorted(times[-window:])[window // 2]
    return first / particles * 1e6, last / particles * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--particles", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n, t = args.particles, args.steps
    print(f"scheduler overhead, zero-cost LM, {n} particles x {t} steps (best of {args.repeats})")
    us, k = per_particle_step(walk, n, t, 0.5, args.repeats)
    print(f"  equal weights, no resampling      {us:6.2f} us per particle-step ({k} resamplings)")
    us, k = per_particle_step(walk_weighted, n, t, 1.0, args.repeats)
    print(f"  resampling and forking every step {us:6.2f} us per particle-step ({k} resamplings)")
    first, last = drift()
    print("a loop of 1000 passes with a choice in each, 100 particles (median of 100 passes)")
    print(f"  passes 1-100    {first:6.2f} us per particle-step")
    print(f"  passes 901-1000 {last:6.2f} us per particle-step ({last / first:.2f}x)")
    costs = fork_cost([1, 10, 50, 100, 200])
    print("fork cost by steps already taken")
    for steps, c in costs.items():
        print(f"  after {steps:4d} steps  {c:6.2f} us per fork")


if __name__ == "__main__":
    main()
