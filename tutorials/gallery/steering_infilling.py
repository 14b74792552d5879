# %% [markdown]
# # Steering: infilling, text between fixed fragments
#
# The third task of "Sequential Monte Carlo Steering of Large Language Models using
# Probabilistic Programs" (Lew et al., 2023): fill the blanks between given fragments,
#
# > To tell the truth, every ___ he ___ to ___ another
#
# so that the whole reads as the model would write it. A left-to-right model cannot look ahead;
# a program can *condition* on what comes next. Each blank is a few tokens sampled from the
# model, and then the next fragment is observed:
#
# $$\pi(x_1, \dots, x_k) \;\propto\; \prod_i p(x_i \mid \text{text so far})\;
#   p(f_{i+1} \mid \text{text so far}, x_i).$$
#
# `observe(ctx.continuation(), fragment)` adds log p(fragment | ctx), all of the fragment's
# tokens scored in the step's one batched forward pass; then the fragment is appended and the
# next blank begins. Under SMC the particles are reweighted and resampled at every fragment, so
# the later blanks grow from the earlier ones that fit.

# %%
from __future__ import annotations

import argparse
import sys

import numpy as np

import ppl
from ppl import condition, observe, program, sample

# %% [markdown]
# ## The program
#
# A blank is exactly `blank_tokens` tokens, none of them EOS (the text goes on after it).


# %%
@program
def infill(lm, fragments: tuple, blank_tokens: int = 3):
    ctx = lm.context(fragments[0])
    blanks = ()
    for fragment in fragments[1:]:
        start = len(ctx.text)
        for _ in range(blank_tokens):
            tok = sample(ctx.next_token())
            condition(not tok.is_eos)
            ctx = ctx + tok
        blanks = blanks + (ctx.text[start:],)
        observe(ctx.continuation(), fragment)  # log p(fragment | everything before it)
        ctx = ctx + fragment
    return blanks


def filled(fragments, blanks) -> str:
    """The fragments with the blanks between them, each blank in [brackets]."""
    parts = [fragments[0]]
    for blank, fragment in zip(blanks, fragments[1:]):
        parts += [f"[{blank}]", fragment]
    return "".join(parts)


# %% [markdown]
# ## Measuring it
#
# A particle's `log_likelihood` is the sum of its `observe` terms: log p(every fragment | the
# text before it). We compare it for the posterior's infills (SMC, weighted) and for plain ones
# (`ppl.importance`: each blank drawn from the model without looking ahead, equally weighted;
# a plain infill that drew EOS is not an infill and is left out). The runs have different
# seeds: their draws are independent.


# %%
def mean_log_fragments(post: ppl.Posterior, weighted: bool) -> float:
    """Mean over a run's infills of log p(all fragments | the text before each)."""
    scores = np.array([t.log_likelihood for t in post.traces])
    ok = np.isfinite(scores)  # -inf: rejected by `condition` (EOS in a blank)
    w = post.weights[ok] if weighted else np.full(ok.sum(), 1 / max(ok.sum(), 1))
    return float(w @ scores[ok])


FRAGMENTS = ("To tell the truth, every", " he", " to", " another")


# What the small model limits, printed after the claim: the numbers are this model's
MODEL_NOTE = (
    "About the model: a 135M model's infills are often ungrammatical or odd even when they\n"
    "make the fragments likely. The claim measures log p(fragments), not how well the\n"
    "sentence reads; SMC targets the exact conditional of this model on the fragments."
)


def main(
    particles: int = 64, blank_tokens: int = 3, seed: int = 0, fragments=FRAGMENTS, lm=None
) -> dict:
    """Infill the blanks under SMC and plainly; print the infills and log p(fragments)."""
    if lm is None:
        print("loading the embedded model (SmolLM2-135M-Instruct) ...", flush=True)
        lm = ppl.models.load()
    fragments = tuple(fragments)
    args = (infill, lm, fragments, blank_tokens)
    posterior = ppl.smc(*args, particles=particles, seed=seed)
    plain = ppl.importance(*args, particles=particles, seed=seed + 1)

    print(f"fragments: {' ___'.join(fragments)}  ({blank_tokens} tokens a blank)")
    print(f"\nposterior, SMC with {particles} particles (distinct infills, by weight):")
    for blanks, weight in list(posterior.distribution().items())[:5]:
        print(f"{weight:6.3f}  {filled(fragments, blanks)!r}")
    print("\nplain infills (the first five):")
    for blanks in [v for v in plain.values if v is not None][:5]:
        print(f"        {filled(fragments, blanks)!r}")

    post_score = mean_log_fragments(posterior, weighted=True)
    plain_score = mean_log_fragments(plain, weighted=False)
    n = len(fragments) - 1
    print(f"\nlog evidence {posterior.log_evidence:.2f}")
    print(
        f"\nClaim (measured): the posterior's infills give the {n} fragments after them a mean "
        f"log probability of {post_score:.2f} nats ({post_score / n:.2f} per fragment), plain "
        f"infills {plain_score:.2f} ({plain_score / n:.2f} per fragment): "
        f"{post_score - plain_score:+.2f} nats, a factor of about "
        f"{np.exp(post_score - plain_score):.2g} in probability."
    )
    print("\n" + MODEL_NOTE)
    return {
        "posterior": posterior,
        "plain": plain,
        "posterior_log_fragments": post_score,
        "plain_log_fragments": plain_score,
    }


# %%
if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="text between fixed fragments")
    parser.add_argument("--particles", type=int, default=64)
    parser.add_argument("--blank-tokens", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fragments", nargs="+", default=list(FRAGMENTS), help="the fixed texts, in order"
    )
    # a notebook's kernel has command-line arguments of its own: use the defaults there
    args = parser.parse_args([] if "ipykernel" in sys.modules else None)
    main(args.particles, args.blank_tokens, args.seed, args.fragments)
