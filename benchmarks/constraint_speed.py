"""What token masks cost: grammar-constrained SMC against unconstrained SMC, same process.

On the embedded model (SmolLM2-135M-Instruct), N particles each draw exactly T tokens, from
`ctx.next_token(constraint=grammar)` in one program and from `ctx.next_token()` in the other
(no early stop, so both make T batched forward passes over N rows). The difference in wall time
is what constraints add: grammar states, masks computed in one batched llguidance call per
step, masking and the weight update. Also reported: the time spent inside the draws of each
kind (the mask work itself), and the one-off cost of building the model's mask tokenizer.

Run: `python benchmarks/constraint_speed.py [--particles 16] [--tokens 32] [--reps 7] [--seed 0]`.
Target: the constrained run takes at most 10% longer.
"""

from __future__ import annotations

import argparse
import statistics
import time

import ppl
from ppl import program, sample
from ppl.constraints import tokens as constrained_tokens
from ppl.constraints.masks import model_masks
from ppl.context import NextToken

GRAMMAR = r"""
start: "{" pair ("," pair)* "}"
pair: STRING ":" value
?value: STRING | NUMBER | "true" | "false" | "[" [value ("," value)*] "]" | start
STRING: /"[^"\\\n]{0,24}"/
NUMBER: /-?[0-9]{1,6}(\.[0-9]{1,3})?/
%ignore /[ \n]/
"""


@program
def free(lm, prompt, tokens):
    ctx = lm.context(prompt)
    for _ in range(tokens):
        ctx = ctx + sample(ctx.next_token())
    return ctx.text


@program
def constrained(lm, prompt, tokens, grammar):
    ctx = lm.context(prompt)
    for _ in range(tokens):
        ctx = ctx + sample(ctx.next_token(grammar))
    return ctx.text


class DrawTimer:
    """Adds up the time spent in the draws of one token-distribution class."""

    def __init__(self, cls: type) -> None:
        self.cls, self.seconds = cls, 0.0
        self.original = cls.__dict__["_draw_batch"]

    def __enter__(self) -> DrawTimer:
        original = self.original.__func__

        def timed(cls, dists, generator):
            t0 = time.perf_counter()
            try:
                return original(cls, dists, generator)
            finally:
                self.seconds += time.perf_counter() - t0

        self.cls._draw_batch = classmethod(timed)
        return self

    def __exit__(self, *exc: object) -> None:
        self.cls._draw_batch = self.original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    t0 = time.perf_counter()
    lm = ppl.models.load(device=args.device)
    print(f"model loaded in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    model_masks(lm)
    print(f"mask tokenizer for {lm.vocab_size} tokens built in {time.perf_counter() - t0:.2f} s")
    grammar = ppl.Grammar(GRAMMAR)
    prompt = lm.chat("Describe a cat as a JSON object.")
    n, t = args.particles, args.tokens
    # warm-up at full length: allocations of the KV caches, grammar states for this model
    ppl.smc(free, lm, prompt, t, particles=n, seed=args.seed)
    ppl.smc(constrained, lm, prompt, t, grammar, particles=n, seed=args.seed)

    times: dict[str, list[float]] = {"free": [], "constrained": []}
    draw_times: dict[str, list[float]] = {"free": [], "constrained": []}
    sample_text = ""
    resampled: dict[str, int] = {}
    for _ in range(args.reps):
        for name in ("free", "constrained"):  # interleaved: both see the same machine load
            cls = NextToken if name == "free" else constrained_tokens.ConstrainedNextToken
            extra = () if name == "free" else (grammar,)
            prog = free if name == "free" else constrained
            with DrawTimer(cls) as timer:
                t0 = time.perf_counter()
                # one seed for every repetition: each repeats the same work, so the spread
                # of the times is the machine's
                post = ppl.smc(prog, lm, prompt, t, *extra, particles=n, seed=args.seed)
                times[name].append(time.perf_counter() - t0)
            draw_times[name].append(timer.seconds)
            resampled[name] = len(post.resampled)
            if name == "constrained":
                sample_text = post.samples(1)[0] if post.log_evidence > -float("inf") else ""
    med = {k: statistics.median(v) for k, v in times.items()}
    draw = {k: statistics.median(v) for k, v in draw_times.items()}
    overhead = med["constrained"] / med["free"] - 1
    print(f"\nSMC, N={n} particles, T={t} tokens, median of {args.reps} runs")
    print(f"{'':14}{'total s':>10}{'draws s':>10}{'per step ms':>13}")
    for k in ("free", "constrained"):
        print(f"{k:14}{med[k]:10.2f}{draw[k]:10.3f}{1000 * med[k] / t:13.1f}")
    print(f"masks add {100 * overhead:+.1f}% to the run time (target <= 10%)")
    paired = [c / f - 1 for c, f in zip(times["constrained"], times["free"])]
    print(
        f"per repetition (constrained / free - 1): median {100 * statistics.median(paired):+.1f}%"
        f"; " + ", ".join(f"{100 * x:+.1f}%" for x in paired)
    )
    print(
        f"resampling steps per run: {resampled['constrained']} constrained, "
        f"{resampled['free']} free"
    )
    print(
        f"draw time per step: {1000 * draw['constrained'] / t:.2f} ms constrained, "
        f"{1000 * draw['free'] / t:.2f} ms free"
    )
    # everything that differs between the two programs happens inside the draws, so the draw
    # difference is the masks' cost, measured with far less noise than the wall-clock ratio
    mask_share = (draw["constrained"] - draw["free"]) / med["free"]
    print(f"mask work inside the draws: {100 * mask_share:+.1f}% of the free run's time")
    print(f"a constrained sample: {sample_text!r}")
    print(f"parses: {grammar.matches(sample_text) or 'prefix (T tokens may stop mid-object)'}")


if __name__ == "__main__":
    main()
