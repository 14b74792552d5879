"""What token masks cost: grammar-constrained SMC against unconstrained SMC, same process.

On the embedded model (SmolLM2-135M-Instruct), N particles each draw exactly T tokens, from
`ctx.next_token(constraint=grammar)` in one program and from `ctx.next_token()` in the other
(no early stop, no resampling: both make T batched forward passes over the same shapes), in
one process, interleaved. What constraints add is everything outside the forward pass: grammar
states, the masks of all particles at each step, masking and the weight update. The forward
passes are identical work, so the benchmark times them apart and reports the masks' cost as
the difference of the rest, against the unconstrained run's total: on a shared machine the
forward pass alone spreads by 10-25% from run to run, which buries a few percent in the plain
wall-clock ratio (also printed, with the forward-pass ratio, which shows that noise and any
slowdown the masks would cause the model itself).

A third run, "unchecked", is the constrained one with the reference check turned off (the
check that reads each text the mask would let end, `ppl.constraints.reference`): what the
check adds is printed against it. `--schema` uses a JSON schema (one the mask enforces whole,
so nothing beyond the end check runs) instead of the Lark grammar.

Run: `python benchmarks/constraint_speed.py [--particles 16] [--tokens 32] [--reps 7] [--seed 0]
[--schema] [--smoke]` (`--smoke`: a character-level toy model, N = 2, T = 4). Targets: the
constrained run takes at most 10% longer than the free one, and the reference check adds at most
10% to the unchecked run.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

from _smoke import parse_args, toy_lm

import ppl
from ppl import program, sample
from ppl.constraints import tokens as constrained_tokens
from ppl.constraints.masks import model_masks
from ppl.next_token import NextToken

GRAMMAR = r"""
start: "{" pair ("," pair)* "}"
pair: STRING ":" value
?value: STRING | NUMBER | "true" | "false" | "[" [value ("," value)*] "]" | start
STRING: /"[^"\\\n]{0,24}"/
NUMBER: /-?[0-9]{1,6}(\.[0-9]{1,3})?/
%ignore /[ \n]/
"""

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 40},
        "colour": {"enum": ["black", "white", "ginger", "grey", "tabby"]},
        "indoor": {"type": "boolean"},
        "toys": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 4},
    },
    "required": ["name", "age", "colour"],
    "additionalProperties": False,
}


class Unchecked:
    """Turns the reference check of `constraint` on `lm` off while it lives."""

    def __init__(self, constraint: ppl.constraints.Constraint, lm: object) -> None:
        self.states = constraint.states(lm)

    def __enter__(self) -> Unchecked:
        self.ends, self.states.ends = self.states.ends, None
        return self

    def __exit__(self, *exc: object) -> None:
        self.states.ends = self.ends


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


class ForwardTimer:
    """Adds up the time spent in the model's batched forward passes."""

    def __init__(self, lm: ppl.models.HFModel) -> None:
        self.lm, self.seconds = lm, 0.0

    def __enter__(self) -> ForwardTimer:
        original = type(self.lm)._extend

        def timed(*args: object, **kwargs: object) -> object:
            t0 = time.perf_counter()
            try:
                return original(self.lm, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        self.lm._extend = timed  # an instance attribute: shadows the method while it lives
        return self

    def __exit__(self, *exc: object) -> None:
        del self.lm._extend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--schema", action="store_true", help="a JSON schema, not the grammar")
    args = parse_args(parser, particles=2, tokens=4, reps=1)

    t0 = time.perf_counter()
    lm = toy_lm() if args.smoke else ppl.models.load(device=args.device)
    print(f"model loaded in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    model_masks(lm)
    print(f"mask tokenizer for {lm.vocab_size} tokens built in {time.perf_counter() - t0:.2f} s")
    grammar = ppl.JSONSchema(SCHEMA) if args.schema else ppl.Grammar(GRAMMAR)
    assert not getattr(grammar, "relaxed", None), "the mask must enforce the schema whole"
    prompt = lm.chat("Describe a cat as a JSON object.")
    n, t = args.particles, args.tokens
    # warm-up at full length: allocations of the KV caches, grammar states for this model
    ppl.smc(free, lm, prompt, t, particles=n, seed=args.seed)
    ppl.smc(constrained, lm, prompt, t, grammar, particles=n, seed=args.seed)

    names = ("free", "constrained", "unchecked")
    times: dict[str, list[float]] = {k: [] for k in names}
    forward_times: dict[str, list[float]] = {k: [] for k in names}
    draw_times: dict[str, list[float]] = {k: [] for k in names}
    sample_text = ""
    resampled: dict[str, int] = {}
    for _ in range(args.reps):
        for name in names:  # interleaved: both see the same machine load
            cls = NextToken if name == "free" else constrained_tokens.ConstrainedNextToken
            extra = () if name == "free" else (grammar,)
            prog = free if name == "free" else constrained
            checks = Unchecked(grammar, lm) if name == "unchecked" else contextlib.nullcontext()
            with DrawTimer(cls) as draws, ForwardTimer(lm) as forward, checks:
                t0 = time.perf_counter()
                # one seed for every repetition: each repeats the same work, so the spread
                # of the times is the machine's
                post = ppl.smc(prog, lm, prompt, t, *extra, particles=n, seed=args.seed)
                times[name].append(time.perf_counter() - t0)
            draw_times[name].append(draws.seconds)
            forward_times[name].append(forward.seconds)
            resampled[name] = len(post.resampled)
            if name == "constrained":
                sample_text = post.samples(1)[0] if post.log_evidence > -float("inf") else ""
    med = {k: statistics.median(v) for k, v in times.items()}
    fwd = {k: statistics.median(v) for k, v in forward_times.items()}
    draw = {k: statistics.median(v) for k, v in draw_times.items()}
    rest = {k: statistics.median(a - b for a, b in zip(times[k], forward_times[k])) for k in names}
    print(f"\nSMC, N={n} particles, T={t} tokens, median of {args.reps} runs, per step (ms)")
    print(f"{'':14}{'total':>9}{'forward':>9}{'other':>9}{'of which draws':>16}")
    for k in names:
        print(
            f"{k:14}{1000 * med[k] / t:9.1f}{1000 * fwd[k] / t:9.1f}{1000 * rest[k] / t:9.1f}"
            f"{1000 * draw[k] / t:16.1f}"
        )
    # The forward passes are the same work in both programs (same shapes, no resampling), so
    # their spread is the machine's; what the masks add is the difference of everything else.
    added = (rest["constrained"] - rest["free"]) / med["free"]
    print(f"masks add {100 * added:+.1f}% to the run time (target <= 10%): the difference")
    print("  outside the forward pass, against the free run's total")
    paired = statistics.median(c / f - 1 for c, f in zip(times["constrained"], times["free"]))
    wall = med["constrained"] / med["free"] - 1
    print(
        f"wall clock, constrained / free - 1: of the medians {100 * wall:+.1f}%, "
        f"median of the paired runs {100 * paired:+.1f}%"
    )
    checked = (rest["constrained"] - rest["unchecked"]) / med["unchecked"]
    paired = statistics.median(c / u - 1 for c, u in zip(times["constrained"], times["unchecked"]))
    print(
        f"the reference check adds {100 * checked:+.1f}% to the unchecked run (target <= 10%; "
        f"median of the paired wall-clock ratios {100 * paired:+.1f}%)"
    )
    forward_ratio = fwd["constrained"] / fwd["free"] - 1
    print(
        f"forward passes, constrained / free - 1: {100 * forward_ratio:+.1f}% (the same work: "
        "the machine's noise, plus any slowdown the masks cause the model)"
    )
    print(
        f"resampling steps per run: {resampled['constrained']} constrained, "
        f"{resampled['free']} free"
    )
    print(f"a constrained sample: {sample_text!r}")
    print(f"parses: {grammar.matches(sample_text) or 'prefix (T tokens may stop mid-object)'}")


if __name__ == "__main__":
    main()
