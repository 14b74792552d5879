"""SMC, smc_steer and MH at an equal forward-pass budget on a constrained task, embedded model.

The task: a story of exactly T tokens whose words have at most five letters (a `condition`
after every token; EOS is not allowed before T tokens). Every method gets the same budget of B
batched model calls (forward passes, counted with the model's `forward_calls`), B = 6T by
default:

* smc: N particles resampling when ESS < N/2 cost T calls a run, whatever N; the budget buys
  B // T independent runs, pooled (each run's weights scaled by its evidence estimate, the
  pooled evidence the mean of theirs: still unbiased);
* smc_steer: N particles with K children each, also T calls a run: B // T runs, pooled;
* mh: N chains with `init="smc"` (one SMC sweep of N particles, at most T calls, counted) and
  regeneration moves from a uniform token position, with the calls left after the init. A step
  costs at most T calls (a regeneration feeds at most T tokens), so chains run in chunks of
  (calls left) // T steps, each chunk going on from the last states of the one before
  (`init=` the previous Posterior), until less than T calls are left.

Reported per method: the fraction of the final sample (by weight) that meets the constraint,
the number of distinct texts in it, the log-evidence estimate (MH has none), forward calls,
tokens fed and seconds. The defaults finish in a few minutes on two CPU cores, loading included.

Run: `python benchmarks/inference_compare.py [--tokens 12] [--particles 8] [--children 2]
[--budget 72] [--seed 0] [--smoke]` (`--smoke`: a character-level toy model, T = 3, N = 2).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

from _smoke import parse_args, toy_lm

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


@dataclass
class Row:
    method: str
    satisfied: float  # weight of the sample that meets the constraint
    distinct: int  # distinct texts with positive weight
    log_evidence: float | None
    forward_calls: int
    tokens_fed: int
    seconds: float
    best: str  # the heaviest text


def pooled(posts: list[ppl.Posterior]) -> tuple[float, int, float | None, str]:
    """Satisfaction, distinct texts, log evidence and heaviest text of independent runs pooled.

    Weighted runs (`log_evidence` set) are pooled with run r's normalised weights times
    Z_r / sum Z; the pooled evidence is the mean of the Z_r. MCMC states count equally.
    """
    mass: dict[str, float] = {}
    if posts[0].log_evidence is None:
        share = [1.0 / len(posts)] * len(posts)
        log_z = None
    else:
        lz = [p.log_evidence for p in posts]
        top = max(lz)
        if top == -math.inf:
            return 0.0, 0, -math.inf, ""
        scaled = [math.exp(x - top) for x in lz]
        share = [s / sum(scaled) for s in scaled]
        log_z = top + math.log(sum(scaled) / len(posts))
    for post, s in zip(posts, share):
        for value, w in zip(post.values, post.weights):
            if w > 0 and value is not None:
                mass[value] = mass.get(value, 0.0) + s * float(w)
    satisfied = sum(w for v, w in mass.items() if short(v))
    best = max(mass, key=mass.get) if mass else ""
    return satisfied, len(mass), log_z, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=12, help="T, the length of the text")
    ap.add_argument("--particles", type=int, default=8, help="N, particles or chains")
    ap.add_argument("--children", type=int, default=2, help="K, children for smc_steer")
    ap.add_argument("--budget", type=int, default=None, help="B, forward calls (default 6T)")
    ap.add_argument("--seed", type=int, default=0)
    a = parse_args(ap, tokens=3, particles=2)
    n, t = a.particles, a.tokens
    budget = a.budget if a.budget is not None else 6 * t
    if budget < t:
        ap.error(f"the budget ({budget} calls) must cover one SMC run (T = {t} calls)")
    t0 = time.perf_counter()
    lm = toy_lm() if a.smoke else ppl.models.load()
    print(f"model loaded in {time.perf_counter() - t0:.1f} s")
    prompt = lm.chat("Tell me a story for a small child.")
    rows: list[Row] = []

    def measure(name, runs):
        lm.reset_counters()
        start = time.perf_counter()
        posts = runs()
        seconds = time.perf_counter() - start
        satisfied, distinct, log_z, best = pooled(posts)
        rows.append(
            Row(name, satisfied, distinct, log_z, lm.forward_calls, lm.tokens_fed, seconds, best)
        )

    repeats = budget // t
    measure(
        "smc",
        lambda: [
            ppl.smc(short_words, lm, prompt, t, particles=n, seed=a.seed + r)
            for r in range(repeats)
        ],
    )
    measure(
        "smc_steer",
        lambda: [
            ppl.smc_steer(
                short_words, lm, prompt, t, particles=n, children=a.children, seed=a.seed + r
            )
            for r in range(repeats)
        ],
    )
    mh_steps = []

    def mh_chunks() -> list[ppl.Posterior]:
        # the init costs at most T calls and every step at most T: the first chunk cannot
        # overrun the budget, and later ones take what is left
        post = ppl.mh(
            short_words,
            lm,
            prompt,
            t,
            chains=n,
            steps=max(1, (budget - t) // t),
            init="smc",
            seed=a.seed,
        )
        posts = [post]
        while (budget - lm.forward_calls) // t > 0:
            post = ppl.mh(
                short_words,
                lm,
                prompt,
                t,
                chains=n,
                steps=(budget - lm.forward_calls) // t,
                init=post,
                seed=a.seed + len(posts),
            )
            posts.append(post)
        mh_steps.append(sum(p.stats["steps"] for p in posts))
        mh_steps.append(posts[0].stats["init_forward_calls"])
        return posts

    measure("mh", mh_chunks)
    print(
        f"\nshort-words task: T = {t} tokens, N = {n}, K = {a.children}, budget B = {budget} "
        f"forward calls; smc and smc_steer: {repeats} runs each; mh: init='smc' "
        f"({mh_steps[1]} calls), then {mh_steps[0]} steps per chain"
    )
    print(
        f"| {'method':<9} | {'satisfied':>9} | {'distinct':>8} | {'log Z':>8} | "
        f"{'fwd calls':>9} | {'tokens fed':>10} | {'seconds':>7} |"
    )
    print(f"|{'-' * 11}|{'-' * 11}|{'-' * 10}|{'-' * 10}|{'-' * 11}|{'-' * 12}|{'-' * 9}|")
    for r in rows:
        z = "n/a" if r.log_evidence is None else f"{r.log_evidence:.2f}"
        print(
            f"| {r.method:<9} | {r.satisfied:9.3f} | {r.distinct:8d} | {z:>8} | "
            f"{r.forward_calls:9d} | {r.tokens_fed:10d} | {r.seconds:7.1f} |"
        )
    print()
    for r in rows:
        print(f"{r.method:>10}: {r.best!r}")


if __name__ == "__main__":
    main()
