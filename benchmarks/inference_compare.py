"""SMC, smc_steer and MH at an equal forward-pass budget on a constrained task, embedded model.

The task: a story of exactly T tokens whose finished words have at most five letters (a
`condition` after every token; EOS is not allowed before T tokens). Each method gets about the
same number of batched model calls (forward passes, `forward_calls`):

* smc: N particles, resampling when ESS < N/2: T calls;
* smc_steer: N particles with K children each: T calls;
* mh: C chains of regeneration moves (uniform token position), as many steps as the budget
  allows, each step a batched call per regenerated token.

Reported per method: the fraction of final samples (by weight) that satisfy the constraint, the
log-evidence estimate (MH has none), forward calls, tokens fed and seconds.

Run: `python benchmarks/inference_compare.py [--tokens 12] [--particles 8] [--seed 0]`.
"""

from __future__ import annotations

import argparse
import time

import ppl
from ppl import condition, program, sample


def letters(word: str) -> int:
    return sum(ch.isalpha() for ch in word)


def short(text: str) -> bool:
    return all(letters(w) <= 5 for w in text.split())


@program
def short_words(lm, prompt: str, tokens: int):
    ctx = lm.context(prompt)
    for _ in range(tokens):
        tok = sample(ctx.next_token())
        condition(not tok.is_eos)
        ctx = ctx + tok
        condition(short(ctx.text))
    return ctx.text


def satisfied(post: ppl.Posterior) -> float:
    return sum(float(w) for v, w in zip(post.values, post.weights) if v is not None and short(v))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=12)
    ap.add_argument("--particles", type=int, default=8)
    ap.add_argument("--children", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t0 = time.perf_counter()
    lm = ppl.models.load()
    print(f"model loaded in {time.perf_counter() - t0:.1f} s")
    prompt = lm.chat("Tell me a story for a small child.")
    n, t = a.particles, a.tokens
    rows = []

    def run(name, fn):
        lm.reset_counters()
        start = time.perf_counter()
        post = fn()
        rows.append(
            (
                name,
                satisfied(post),
                post.log_evidence,
                lm.forward_calls,
                lm.tokens_fed,
                time.perf_counter() - start,
                post,
            )
        )

    run("smc", lambda: ppl.smc(short_words, lm, prompt, t, particles=n, seed=a.seed))
    run(
        "smc_steer",
        lambda: ppl.smc_steer(
            short_words, lm, prompt, t, particles=n, children=a.children, seed=a.seed
        ),
    )
    budget = max(rows[0][3], rows[1][3])
    # MH: initial runs cost about T calls; each step regenerates on average half the tokens
    steps = max(1, 2 * (budget - t) // t) if budget > t else 1
    run(
        "mh",
        lambda: ppl.mh(
            short_words, lm, prompt, t, chains=n, steps=steps, proposal="token", seed=a.seed
        ),
    )
    print(f"\nshort-words task: {t} tokens, N = {n}, children = {a.children}, MH steps = {steps}")
    print(
        f"{'method':<10} {'satisfied':>9} {'log Z':>9} {'fwd calls':>9} {'tokens fed':>10} "
        f"{'seconds':>8}"
    )
    for name, sat, log_z, calls, fed, secs, _ in rows:
        z = "n/a" if log_z is None else f"{log_z:.2f}"
        print(f"{name:<10} {sat:9.3f} {z:>9} {calls:9d} {fed:10d} {secs:8.1f}")
    for name, *_, post in rows:
        best = max(zip(post.weights, post.values), key=lambda x: x[0])[1]
        print(f"{name:>10}: {best!r}")


if __name__ == "__main__":
    main()
