"""Keys and values held by SMC against the tokens it fed, stored once, on the embedded model.

SMC with N particles runs the short-words story for exactly T tokens (a particle that breaks the
rule gets weight zero, so the run resamples at most steps and particles descend from few
ancestors). The figure of merit is

    lm.kv_peak_bytes / (lm.tokens_fed * lm.kv_bytes_per_token)

the most keys and values held at once, against what every token fed in the whole run (dead
branches included) would take if each were stored exactly once. At most 1 means the cache holds
no copies: particles that share a prefix share its memory.

Run: `python benchmarks/kv_memory.py [--particles 64] [--tokens 300] [--seed 0]`.
"""

from __future__ import annotations

import argparse
import time

import ppl
from ppl import condition, program, sample


def letters(word: str) -> int:
    return sum(ch.isalpha() for ch in word)


@program
def short_words_fixed(lm, prompt: str, tokens: int):
    """The short-words story, exactly `tokens` tokens long (no early end)."""
    ctx = lm.context(prompt)
    for _ in range(tokens):
        tok = sample(ctx.next_token())
        condition(not tok.is_eos)
        ctx = ctx + tok
        condition(all(letters(w) <= 5 for w in ctx.text.split()))
    return ctx.text


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
        "stored_once_mb": stored_once / 2**20,
        "ratio": lm.kv_peak_bytes / stored_once,
        "ms_per_step": 1000 * seconds / max(post.stats["steps"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, nargs="+", default=[64])
    parser.add_argument("--tokens", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    lm = ppl.models.load()
    print(f"embedded model: {lm.kv_bytes_per_token} bytes of keys and values per token")
    print(
        f"{'N':>4} {'T':>5} {'resampled':>10} {'tokens fed':>11} {'peak KV MB':>11} "
        f"{'stored once MB':>15} {'ratio':>6} {'ms/step':>8}"
    )
    for n in args.particles:
        for t in args.tokens:
            r = measure(lm, n, t, args.seed)
            print(
                f"{n:>4} {t:>5} {r['resampled']:>6}/{r['steps']:<3} {r['tokens_fed']:>11} "
                f"{r['kv_peak_mb']:>11.1f} {r['stored_once_mb']:>15.1f} {r['ratio']:>6.2f} "
                f"{r['ms_per_step']:>8.0f}"
            )


if __name__ == "__main__":
    main()
