"""Keys and values held by SMC against the tokens it fed, stored once, on the embedded model.

SMC with N particles runs the short-words story for exactly T tokens (a particle that breaks the
rule gets weight zero, so the run resamples at most steps and particles descend from few
ancestors). The figure of merit is

    lm.kv_peak_bytes / (lm.tokens_fed * lm.kv_bytes_per_token)

the most keys and values held at once, against what every token fed in the whole run (dead
branches included) would take if each were stored exactly once. At most 1 means the cache holds
no copies: particles that share a prefix share its memory.

Both KV caches of `HFModel` run in the same process on the same weights, each run on a fresh
model (an empty cache): "batch" (a tensor per forward pass with every row's whole sequence) and
"paged" (shared blocks of token slots). Printed for each: peak in use, peak reserved (what the
cache allocated, free room included), stored once, the ratio of the peak in use to it, the
ratio of the peak reserved to it, and milliseconds per SMC step. The runs of one N and T use
one seed, so they draw the same tokens and do the same work, unless rounding differences between
the caches' batch layouts tip a draw: the script says when their final particles differ.

Run: `python benchmarks/kv_memory.py [--particles 64] [--tokens 100 300] [--seed 0]
[--kv-cache batch paged] [--kv-block 16] [--smoke]` (`--smoke`: a tiny random Llama in place of
the embedded model, N = 4, T = 4, blocks of 4 tokens).
"""

from __future__ import annotations

import argparse
import gc
import time

from _smoke import parse_args, tiny_hf_lm
from smc_vs_generate import short_words_fixed  # the same task, exactly T tokens

import ppl
from ppl.models import HFModel


def measure(lm, n: int, t: int, seed: int) -> dict:
    prompt = lm.chat("Tell me a story.")
    lm.reset_counters()
    start = time.perf_counter()
    post = ppl.smc(short_words_fixed, lm, prompt, t, particles=n, seed=seed, progress=False)
    seconds = time.perf_counter() - start
    stored_once = lm.tokens_fed * lm.kv_bytes_per_token
    return {
        "particles": n,
        "tokens": t,
        "resampled": len(post.resampled),
        "steps": post.stats["steps"],
        "tokens_fed": lm.tokens_fed,
        "kv_peak_mb": lm.kv_peak_bytes / 2**20,
        "kv_reserved_mb": lm.kv_reserved_peak_bytes / 2**20,
        "stored_once_mb": stored_once / 2**20,
        "ratio": lm.kv_peak_bytes / stored_once,
        "reserved_ratio": lm.kv_reserved_peak_bytes / stored_once,
        "ms_per_step": 1000 * seconds / max(post.stats["steps"], 1),
        "values": list(post.values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, nargs="+", default=[64])
    parser.add_argument("--tokens", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kv-cache", nargs="+", default=["batch", "paged"])
    parser.add_argument("--kv-block", type=int, default=16)
    args = parse_args(parser, particles=[4], tokens=[4], kv_block=4)
    loaded = tiny_hf_lm() if args.smoke else ppl.models.load()
    print(
        f"{'tiny' if args.smoke else 'embedded'} model: {loaded.kv_bytes_per_token} bytes of "
        "keys and values per token; "
        f"paged blocks of {args.kv_block} tokens"
    )
    print(
        f"{'cache':>6} {'N':>4} {'T':>5} {'resampled':>10} {'tokens fed':>11} "
        f"{'peak MB':>9} {'reserved MB':>12} {'once MB':>8} {'ratio':>6} {'reserved':>9} "
        f"{'ms/step':>8}"
    )
    for n in args.particles:
        for t in args.tokens:
            results = {}
            for kv_cache in args.kv_cache:
                lm = HFModel(
                    loaded.model, loaded.tokenizer, kv_cache=kv_cache, kv_block=args.kv_block
                )
                r = results[kv_cache] = measure(lm, n, t, args.seed)
                del lm
                gc.collect()
                print(
                    f"{kv_cache:>6} {n:>4} {t:>5} {r['resampled']:>6}/{r['steps']:<3} "
                    f"{r['tokens_fed']:>11} {r['kv_peak_mb']:>9.1f} {r['kv_reserved_mb']:>12.1f} "
                    f"{r['stored_once_mb']:>8.1f} {r['ratio']:>6.2f} {r['reserved_ratio']:>9.2f} "
                    f"{r['ms_per_step']:>8.0f}",
                    flush=True,
                )
            if len({tuple(r["values"]) for r in results.values()}) > 1:
                print("  (the caches ended with different particles: the runs did different work)")


if __name__ == "__main__":
    main()
