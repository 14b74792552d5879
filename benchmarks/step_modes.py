"""How decode steps should run on this device: eager, padded to buckets, CUDA graphs, compiled.

Two measurements on the embedded model, in one process:

1. SMC on the short-words task (exactly T tokens, `smc_vs_generate.py`'s program) with each
   `HFModel.step` mode this device has: "eager" (every forward at its own shape), "buckets"
   (decode steps padded to a handful of shapes, run eagerly) and, on CUDA, "graphs" (the same
   shapes captured once as CUDA graphs and replayed). One seed, so every mode draws the same
   tokens; printed: milliseconds per step (median of `--reps` runs after one warm-up run), the
   shapes the fixed-shape modes met, and whether the final particles are those of "eager".
2. Whether compiling pays: transformers' static-cache `generate` (a plain batch of N rows, the
   decode step that compilers handle best) eager against `torch.compile`d, on this device: the
   first call (which compiles) and the warm milliseconds per step. On the CPU this decides
   whether ppl should compile there; skip it with `--no-compile`.

Run: `python benchmarks/step_modes.py [--device cpu] [--particles 16 64] [--tokens 30]
[--reps 3] [--no-compile] [--smoke]` (`--smoke`: a tiny random Llama in place of the embedded
model, N = 2, T = 3, compiled with the "eager" backend of `torch.compile`, which traces the
model but generates no code).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from _smoke import parse_args, tiny_hf_lm
from smc_vs_generate import run_generate, short_words_fixed

import ppl
from ppl.models import HFModel


def smc_ms_per_step(lm, prompt: str, n: int, t: int, reps: int) -> tuple[float, list]:
    times, values = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ppl.InferenceWarning)
        ppl.smc(short_words_fixed, lm, prompt, t, particles=n, seed=99, progress=False)
        for _ in range(reps):
            start = time.perf_counter()
            post = ppl.smc(short_words_fixed, lm, prompt, t, particles=n, seed=0, progress=False)
            times.append(time.perf_counter() - start)
            values = list(post.values)
    return 1000 * statistics.median(times) / t, values


def generate_seconds(lm, ids: list[int], n: int, t: int) -> float:
    start = time.perf_counter()
    run_generate(lm, ids, n, t, seed=0, static=True)
    return time.perf_counter() - start


def compiling(lm, on: bool, backend: str = "inductor") -> None:
    """Make static-cache `generate` compile the model's forward (`on`) or run it eagerly."""
    from transformers import CompileConfig

    config = lm.model.generation_config
    if on:
        config.compile_config = CompileConfig(
            mode="default" if lm.device.type == "cpu" else "reduce-overhead", backend=backend
        )
        config.compile_config._compile_all_devices = True  # else: accelerators only
    config.disable_compile = not on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--particles", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--tokens", type=int, nargs="+", default=[30])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    args = parse_args(parser, particles=[2], tokens=[3], reps=1)

    base = tiny_hf_lm(device=args.device) if args.smoke else ppl.models.load(device=args.device)
    modes = ["eager", "buckets"] + (["graphs"] if base.device.type == "cuda" else [])
    lms = {m: HFModel(base.model, base.tokenizer, step=m) for m in modes}
    prompt = base.chat("Tell me a story.")
    print(
        f"{'tiny' if args.smoke else 'embedded'} model on {base.device} ({base.model.dtype}), "
        f"{torch.get_num_threads()} threads; SMC ms per step:"
    )
    print(f"{'N':>4} {'T':>4}  " + "  ".join(f"{m:>8}" for m in modes) + "  shapes met")
    for n in args.particles:
        for t in args.tokens:
            cells, same = [], True
            reference = None
            for lm in lms.values():
                ms, values = smc_ms_per_step(lm, prompt, n, t, args.reps)
                cells.append(f"{ms:>8.1f}")
                reference = values if reference is None else reference
                same &= values == reference
            shapes = lms["buckets"].step_shapes
            note = "" if same else "  (final particles differ from eager: a rounding tipped a draw)"
            print(
                f"{n:>4} {t:>4}  " + "  ".join(cells) + f"  {len(shapes)}: {shapes}{note}",
                flush=True,
            )

    if args.no_compile:
        return
    ids = base.encode(prompt)
    print("\nplain batch, static-cache generate: first call s (compiling), warm ms per step")
    print(
        f"{'N':>4} {'T':>4}  {'eager first':>11} {'eager ms':>9} {'compiled first':>14} "
        f"{'compiled ms':>11}"
    )
    for n in args.particles:
        for t in args.tokens:
            row = []
            for compiled in (False, True):
                torch._dynamo.reset()
                compiling(base, compiled, "eager" if args.smoke else "inductor")
                first = generate_seconds(base, ids, n, t)
                warm = {}
                for tokens in (1, t):
                    warm[tokens] = statistics.median(
                        generate_seconds(base, ids, n, tokens) for _ in range(args.reps)
                    )
                row += [first, 1000 * (warm[t] - warm[1]) / (t - 1)]
            compiling(base, False)
            print(
                f"{n:>4} {t:>4}  {row[0]:>11.2f} {row[1]:>9.1f} {row[2]:>14.2f} {row[3]:>11.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
