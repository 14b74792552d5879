"""Many inputs as one workload: `ppl.map` against a Python loop of `ppl.smc`, one process.

The task is the short-words story (every word at most five letters) on the embedded model, for
32 different prompts ("Tell me a story about TOPIC."), 8 particles each, at most T tokens. The
loop runs the items one after another, so each forward pass holds one item's 8 rows; `ppl.map`
runs them as one engine, so a forward pass holds the rows of every item in flight (up to the
row budget, 256 by default: all 32 items). Both runs of item i use seed (0, i).

Printed: items per second of each and their ratio (median of the repetitions, interleaved),
forward passes, and tokens fed against the ideal. The ideal feeds each item's prompt once and
each distinct generated prefix whose next-token distribution was needed once; re-encoding would
exceed it. On this model a row's float rounding can depend on its batch (padding, batch size),
so a mapped item may differ from the looped one where a draw sat on a rounding boundary: the
benchmark counts the items whose texts and weights came out identical.

Run: `python benchmarks/many_inputs.py [--items 32] [--particles 8] [--max-tokens 24]
[--reps 3] [--device cpu] [--smoke]` (`--smoke`: a character-level toy model, 3 items x 2
particles, at most 4 tokens).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from _smoke import parse_args, toy_lm

import ppl
from ppl import condition, program, sample

TOPICS = [
    "a cat", "the sea", "a king", "a lost key", "the moon", "a small boat", "a red bird",
    "the rain", "a dog", "an old tree", "a baker", "the snow", "a fox", "a train", "a lamp",
    "a frog", "the wind", "a girl", "a farm", "a bee", "a ghost", "a bell", "a robot", "a fish",
    "a hill", "the sun", "a cook", "a mouse", "a ship", "a star", "a bear", "a drum",
]  # fmt: skip


def letters(word: str) -> int:
    return sum(ch.isalpha() for ch in word)


@program
def short_words(lm, prompt: str, max_tokens: int):
    ctx = lm.context(prompt)
    for _ in range(max_tokens):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        condition(all(letters(w) <= 5 for w in ctx.text.split()))
        if tok.is_eos:
            break
    return ctx.text


def counting(lm):
    """Record every context whose next-token distribution is asked for (the ideal's count)."""
    requested: set[tuple[str, tuple[int, ...]]] = set()
    original = lm.compute_logprobs

    def compute(contexts, **kw):
        for ctx in contexts:
            if ctx._logprobs is None:
                requested.add((tuple(ctx.prompt_tokens), tuple(ctx.tokens)))
        return original(contexts, **kw)

    lm.compute_logprobs = compute
    return requested


def ideal(lm, requested) -> int:
    prompts = {p for p, _ in requested}
    return sum(len(p) for p in prompts) + sum(1 for _, toks in requested if toks)


def main() -> None:
    parser = argparse.ArgumentParser(description="ppl.map against a loop of ppl.smc")
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=256, help="map's row budget")
    parser.add_argument("--device", default="cpu")
    args = parse_args(parser, items=3, particles=2, max_tokens=4, reps=1)
    warnings.simplefilter("ignore", ppl.InferenceWarning)

    lm = toy_lm() if args.smoke else ppl.models.load(device=args.device)
    topics = (TOPICS * (args.items // len(TOPICS) + 1))[: args.items]
    inputs = [(lm, lm.chat(f"Tell me a story about {t}."), args.max_tokens) for t in topics]
    # record=False: the loop runs as ppl.map runs each item (without a per-step record)
    n, kw = args.particles, {"particles": args.particles, "progress": False, "record": False}
    print(
        f"{getattr(lm, 'spec', None) or type(lm).__name__} model on "
        f"{getattr(lm, 'device', 'cpu')}, {torch.get_num_threads()} threads: "
        f"{len(inputs)} items x {n} particles, at most {args.max_tokens} tokens, "
        f"row budget {args.rows}"
    )

    def loop():
        return [ppl.smc(short_words, *x, seed=(0, i), **kw) for i, x in enumerate(inputs)]

    def mapped():
        return ppl.map(ppl.smc, short_words, inputs, seed=0, rows=args.rows, particles=n)

    for run in (loop, mapped):  # untimed: first-call costs out of the way
        run()
    times: dict[str, list[float]] = {"loop": [], "map": []}
    calls: dict[str, int] = {}
    for _ in range(args.reps):
        for name, run in (("loop", loop), ("map", mapped)):
            lm.reset_counters()
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
            calls[name] = lm.forward_calls
    fed, ideals, results = {}, {}, {}
    for name, run in (("loop", loop), ("map", mapped)):
        lm.reset_counters()
        requested = counting(lm)
        try:
            results[name] = run()
        finally:
            del lm.compute_logprobs
        fed[name], ideals[name] = lm.tokens_fed, ideal(lm, requested)
    same = sum(
        a.values == b.values and a.log_weights.tolist() == b.log_weights.tolist()
        for a, b in zip(results["loop"], results["map"])
    )
    header = (
        f"{'':5} {'s (median)':>10} {'items/s':>8} {'fwd calls':>9} {'tokens fed':>10} {'ideal':>6}"
    )
    print(header)
    print("-" * len(header))
    rate = {}
    for name in ("loop", "map"):
        s = statistics.median(times[name])
        rate[name] = len(inputs) / s
        print(
            f"{name:5} {s:>10.2f} {rate[name]:>8.2f} {calls[name]:>9} {fed[name]:>10} "
            f"{ideals[name]:>6}"
        )
    print(f"map / loop items per second: {rate['map'] / rate['loop']:.2f}x (target >= 2)")
    print(f"items identical in both: {same} of {len(inputs)}")
    print(
        "all runs (s): "
        + "; ".join(f"{k} {', '.join(f'{t:.1f}' for t in v)}" for k, v in times.items())
    )


if __name__ == "__main__":
    main()
