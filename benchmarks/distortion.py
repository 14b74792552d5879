"""How far constrained decoders are from the model's conditional distribution.

A small grammar (balanced parentheses around a word of a's and b's) and an enumerable toy LM
whose next-token probabilities depend on the last token. By enumeration we get the exact
conditional distribution P(text | text in L, at most T tokens) and the exact distribution of
mask-and-renormalise decoding (what a decoder with token masks alone samples: at each step the
model's probabilities restricted to the mask and renormalised, sequences that hit T tokens
dropped). We report KL(Q || P) for

* Q = mask-and-renormalise decoding (exact, no sampling error), and
* Q = the pooled weighted samples of ppl's IS and SMC (R runs of N particles).

An estimated distribution has KL > 0 from sampling error alone. The reference is the KL of an
exact sampler given as many samples as the run's effective sample size (its 99% quantile over
simulated replicates): ppl's figures must fall below it.

Run: `python benchmarks/distortion.py [--runs 200] [--particles 16] [--max-tokens 7]
[--plot PATH] [--smoke]`; the plot goes to `benchmarks/results/distortion.png` by default (with
`--smoke`, to a temporary folder).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import warnings

import numpy as np
from _smoke import parse_args

import ppl
from ppl.models import FunctionLM

VOCAB = ["<s>", "a", "b", "(", ")", "ab", "<eos>"]
TABLE = {
    "<s>": [0.0, 0.2, 0.1, 0.4, 0.05, 0.15, 0.1],
    "a": [0.0, 0.2, 0.3, 0.1, 0.2, 0.1, 0.1],
    "b": [0.0, 0.1, 0.1, 0.3, 0.3, 0.1, 0.1],
    "(": [0.0, 0.2, 0.1, 0.5, 0.05, 0.1, 0.05],
    ")": [0.0, 0.1, 0.1, 0.1, 0.4, 0.1, 0.2],
    "ab": [0.0, 0.1, 0.1, 0.2, 0.3, 0.1, 0.2],
}
MAX_TOKENS = 7
lm = FunctionLM(VOCAB, lambda prefix: TABLE[VOCAB[prefix[-1]]], eos="<eos>", bos="<s>")
GRAMMAR = ppl.Grammar('start: "(" start ")" | WORD\nWORD: /[ab]+/')


@ppl.program
def parens(max_tokens):
    return ppl.generate(lm.context(""), constraint=GRAMMAR, max_tokens=max_tokens)


def exact_conditional(max_tokens: int = MAX_TOKENS) -> dict[str, float]:
    mass: dict[str, float] = {}

    def walk(last: str, text: str, prob: float, n: int) -> None:
        if n == max_tokens:
            return
        for tid, p in enumerate(TABLE[last]):
            tok = VOCAB[tid]
            if p == 0:
                continue
            if tok == "<eos>":
                if GRAMMAR.matches(text):
                    mass[text] = mass.get(text, 0.0) + prob * p
            else:
                walk(tok, text + tok, prob * p, n + 1)

    walk("<s>", "", 1.0, 0)
    z = math.fsum(mass.values())
    return {k: v / z for k, v in mass.items()}


def mask_and_renormalise(max_tokens: int = MAX_TOKENS) -> dict[str, float]:
    """The exact distribution of masked decoding, by enumerating its choices."""
    mass: dict[str, float] = {}

    def walk(ctx, last: str, prob: float, n: int) -> None:
        if n == max_tokens:
            return  # dropped: did not finish
        dist = ctx.next_token(GRAMMAR)
        allowed = [(tid, p) for tid, p in enumerate(TABLE[last]) if p > 0 and dist.allows(tid)]
        total = sum(p for _, p in allowed)
        for tid, p in allowed:
            q = prob * p / total
            if VOCAB[tid] == "<eos>":
                mass[ctx.text] = mass.get(ctx.text, 0.0) + q
            else:
                walk(ctx + tid, VOCAB[tid], q, n + 1)

    walk(lm.context(""), "<s>", 1.0, 0)
    z = math.fsum(mass.values())
    return {k: v / z for k, v in mass.items()}


def kl(q: dict[str, float], p: dict[str, float]) -> float:
    return math.fsum(v * math.log(v / p[k]) for k, v in q.items() if v > 0)


def pooled(
    method, runs: int, particles: int, max_tokens: int = MAX_TOKENS, **opts
) -> tuple[dict[str, float], float]:
    """Distribution of all runs' weighted samples (each run weighted by its evidence) and the
    pooled effective sample size."""
    weights: dict[str, float] = {}
    ess = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ppl.InferenceWarning)
        for seed in range(runs):
            post = method(parens, max_tokens, particles=particles, seed=seed, **opts)
            if post.log_evidence == -math.inf:
                continue
            z = math.exp(post.log_evidence)
            for value, w in zip(post.values, post.weights):
                if w > 0:
                    weights[value] = weights.get(value, 0.0) + z * w
            ess += post.final_ess
    total = math.fsum(weights.values())
    return {k: v / total for k, v in weights.items()}, ess


def null_kl(p: dict[str, float], n: int, reps: int, rng: np.random.Generator) -> np.ndarray:
    """KL of the empirical distribution of n exact samples from p, over `reps` replicates."""
    keys = list(p)
    probs = np.array([p[k] for k in keys])
    out = np.empty(reps)
    for r in range(reps):
        counts = rng.multinomial(n, probs)
        q = counts / n
        nz = q > 0
        out[r] = float(np.sum(q[nz] * np.log(q[nz] / probs[nz])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--particles", type=int, default=16)
    parser.add_argument("--plot", default="benchmarks/results/distortion.png")
    parser.add_argument(
        "--max-tokens", type=int, default=MAX_TOKENS, help="T (the enumeration grows as 6^T)"
    )
    args = parse_args(parser, runs=4, particles=4, max_tokens=4, plot=None)
    if args.plot is None:  # --smoke: leave the results folder alone
        args.plot = os.path.join(tempfile.mkdtemp(prefix="ppl_smoke_"), "distortion.png")

    p = exact_conditional(args.max_tokens)
    rows = [("mask-and-renormalise", kl(mask_and_renormalise(args.max_tokens), p), None)]
    rng = np.random.default_rng(0)
    for name, method, opts in [
        ("ppl importance", ppl.importance, {}),
        ("ppl SMC", ppl.smc, {"ess_threshold": 0.5}),
    ]:
        q, ess = pooled(method, args.runs, args.particles, args.max_tokens, **opts)
        reference = float(np.quantile(null_kl(p, int(ess), 2000, rng), 0.99))
        rows.append((name, kl(q, p), reference))

    print(f"grammar: {GRAMMAR.source!r}; {len(p)} texts within {args.max_tokens} tokens")
    print(f"{args.runs} runs x {args.particles} particles for IS and SMC\n")
    print(f"{'decoder':24}{'KL(Q || P)':>12}{'sampling-error 99% bound':>27}")
    for name, value, reference in rows:
        bound = "exact (no sampling)" if reference is None else f"{reference:.2e}"
        print(f"{name:24}{value:12.2e}{bound:>27}")
    for name, value, reference in rows[1:]:
        verdict = "within" if value <= reference else "OUTSIDE"
        print(f"{name}: {verdict} Monte Carlo error of zero")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = [r[0] for r in rows]
    values = [r[1] for r in rows]
    ax.bar(names, values, color=["#c44e52", "#4c72b0", "#55a868"])
    for i, (_, _, reference) in enumerate(rows):
        if reference is not None:
            ax.hlines(reference, i - 0.4, i + 0.4, colors="k", linestyles="dashed")
    ax.set_yscale("log")
    ax.set_ylim(bottom=min(values) / 4)
    ax.set_ylabel("KL(Q || exact conditional)")
    title = "Distortion of constrained decoding\n(dashed: 99% sampling-error bound)"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
    fig.savefig(args.plot, dpi=120)
    print(f"plot saved to {args.plot}")


if __name__ == "__main__":
    main()
