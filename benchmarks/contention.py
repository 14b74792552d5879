"""SMC on a busy machine: its time beside a CPU-bound process against its time alone.

A laptop with a browser open, or a server with a second job, is a busy machine. This times
ppl's SMC on the short-words task (`smc_vs_generate.py`) at N particles and T tokens on the
embedded model, quiet and then beside one competing process that this script starts and stops
itself (a Python loop that spins on one core), in two settings of torch's CPU threads:

* "adaptive": ppl's default (`ppl.models.hf.threads`): before each forward pass, at most every
  quarter second, torch gets the cores that other processes leave free;
* "fixed": torch's own thread count (one per core) for the whole run, as `PPL_THREADS=off`.

It prints each setting's median quiet and busy times, their ratio (the target is at most 2.5x),
the adaptive quiet time against the fixed one (the target: at most 5% slower), and the thread
counts the governor chose. The runs of the two settings alternate, quiet ones first.

Run alone (anything else running is a competitor too): `python benchmarks/contention.py
[--particles 16] [--tokens 60] [--reps 3] [--smoke]` (`--smoke`: a tiny random Llama, N = 2,
T = 3, one run each).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator

import torch
from _smoke import parse_args, tiny_hf_lm
from smc_vs_generate import run_smc

import ppl
from ppl.models.hf import threads

SPIN = "while True: pass"


@contextlib.contextmanager
def competitor() -> Iterator[None]:
    """One CPU-bound process beside this one, for the length of the block."""
    proc = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        time.sleep(1.0)  # running flat out before the first timed run starts
        yield
    finally:
        proc.kill()
        proc.wait()
        time.sleep(1.0)  # its core idle again before a quiet run


@contextlib.contextmanager
def setting(name: str, ceiling: int) -> Iterator[threads.ThreadGovernor | None]:
    """Torch's threads as the setting says, for the block: a fresh governor, or none."""
    torch.set_num_threads(ceiling)
    saved = threads._governor, threads._decided
    if name == "fixed":
        threads._governor, threads._decided = None, True
    else:
        threads._governor, threads._decided = None, False
    try:
        yield threads.governor()
    finally:
        threads._governor, threads._decided = saved
        torch.set_num_threads(ceiling)


def timed(lm, prompt: str, n: int, t: int, seed: int) -> float:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a run where every particle dies is timed all the same
        run_smc(lm, prompt, n, t, seed)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description="SMC beside a CPU-bound process")
    parser.add_argument("--particles", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=60)
    parser.add_argument("--reps", type=int, default=3, help="timed runs of each, alternating")
    args = parse_args(parser, particles=2, tokens=3, reps=1)

    ceiling = torch.get_num_threads()
    lm = tiny_hf_lm() if args.smoke else ppl.models.load(device="cpu")
    prompt = lm.chat("Tell me a story.")
    n, t = args.particles, args.tokens
    print(
        f"SMC, short words, N = {n}, T = {t}, {lm!r} ({lm.model.dtype}), {ceiling} threads "
        f"at most, on {len(os.sched_getaffinity(0))} cores",
        flush=True,
    )
    names = ("adaptive", "fixed")
    for name in names:  # warm-up: the first run of a process pays for allocations
        with setting(name, ceiling):
            timed(lm, prompt, n, t, seed=0)
    times: dict[tuple[str, str], list[float]] = {}
    chosen: dict[str, list[int]] = {}
    for load in ("quiet", "busy"):
        with competitor() if load == "busy" else contextlib.nullcontext():
            for rep in range(args.reps):
                for name in names if rep % 2 == 0 else names[::-1]:
                    with setting(name, ceiling) as g:
                        seconds = timed(lm, prompt, n, t, seed=rep + 1)
                        if g is not None:
                            chosen.setdefault(load, []).extend(k for _, k in g.changes)
                    times.setdefault((name, load), []).append(seconds)
                    print(f"  {load:5} {name:8} {seconds:7.2f} s", flush=True)

    median = {k: statistics.median(v) for k, v in times.items()}
    header = f"{'threads':>9} {'quiet s':>8} {'busy s':>8} {'busy/quiet':>11}"
    print(header)
    print("-" * len(header))
    for name in names:
        quiet, busy = median[name, "quiet"], median[name, "busy"]
        print(f"{name:>9} {quiet:8.2f} {busy:8.2f} {busy / quiet:11.2f}")
    base = median["fixed", "quiet"]
    print(
        f"adaptive quiet / fixed quiet: {median['adaptive', 'quiet'] / base:.3f}; "
        f"adaptive busy / fixed quiet: {median['adaptive', 'busy'] / base:.2f}"
    )
    for load in ("quiet", "busy"):
        print(f"thread counts the governor set ({load}): {chosen.get(load) or 'none'}")


if __name__ == "__main__":
    main()
