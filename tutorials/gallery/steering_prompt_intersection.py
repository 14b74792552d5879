# %% [markdown]
# # Steering: prompt intersection, one text that two prompts both find likely
#
# The second task of "Sequential Monte Carlo Steering of Large Language Models using
# Probabilistic Programs" (Lew et al., 2023): complete two prompts with **the same text**, a
# text that is likely after the first *and* after the second. With p1 and p2 the model's
# distributions over continuations of the two prompts, the target is their product:
#
# $$\pi(x) \;\propto\; p_1(x)\, p_2(x).$$
#
# A program states it directly: draw each token from the first context, and `observe` the same
# token under the second, `observe(ctx2.next_token(), tok)`. Each particle's weight gains
# log p2(token | its text so far), so the weight of a whole text is log p2(text); both contexts
# of all particles are computed in the step's one batched forward pass.

# %%
from __future__ import annotations

import argparse
import sys
import textwrap

import numpy as np

import ppl
from ppl import observe, program, sample

# %% [markdown]
# ## The program
#
# The prompts are plain text, not chat turns: the model completes a sentence.


# %%
@program
def intersection(lm, prompt1: str, prompt2: str, max_tokens: int = 24):
    ctx1 = lm.context(prompt1)
    ctx2 = lm.context(prompt2)
    for _ in range(max_tokens):
        tok = sample(ctx1.next_token())  # the text is p1's ...
        observe(ctx2.next_token(), tok)  # ... weighted by how likely p2 finds it
        ctx1 = ctx1 + tok
        ctx2 = ctx2 + tok
        if tok.is_eos:
            break
    return ctx1.text


# %% [markdown]
# ## Measuring it
#
# Every particle's trace holds both scores: `log_prior`, the sum of its tokens' log
# probabilities under p1, and `log_likelihood`, the sum of its `observe` terms, which is
# log p2(text). We compare log p2 per token of the posterior's texts (SMC, weighted) with that
# of plain samples from the first prompt: `ppl.importance` with the program as its own
# proposal draws its texts from p1, and taking their plain (unweighted) mean measures p1's own
# texts. The two runs have different seeds: their draws are independent.


# %%
def per_token(post: ppl.Posterior, weighted: bool) -> tuple[float, float]:
    """Mean log p1 and log p2 per token of a run's texts, by weight or unweighted."""
    lengths = np.array([max(len(t), 1) for t in post.traces], dtype=float)  # tokens drawn
    log_p1 = np.array([t.log_prior for t in post.traces]) / lengths
    log_p2 = np.array([t.log_likelihood for t in post.traces]) / lengths
    w = post.weights if weighted else np.full(len(lengths), 1 / len(lengths))
    keep = w > 0  # a zero weight may sit on a -inf score
    return float(w[keep] @ log_p1[keep]), float(w[keep] @ log_p2[keep])


# What the small model limits, printed after the claim: the numbers are this model's
MODEL_NOTE = (
    "About the model: a 135M model knows little about physicists or writers, so a text both\n"
    "prompts find likely may name a garbled or made-up person with a made-up description, and\n"
    "with few particles SMC often keeps a single text. The claim measures how likely each\n"
    "prompt finds the texts, not whether they are true; SMC targets the exact product p1 x p2\n"
    "of this model's two distributions."
)


def main(particles: int = 16, max_tokens: int = 24, seed: int = 0, lm=None) -> dict:
    """Run the intersection under SMC and plain sampling from the first prompt; print both."""
    if lm is None:
        print("loading the embedded model (SmolLM2-135M-Instruct) ...", flush=True)
        lm = ppl.models.load()
    prompt1, prompt2 = "My favorite physicist is probably", "My favorite writer is probably"
    args = (intersection, lm, prompt1, prompt2)
    posterior = ppl.smc(*args, max_tokens=max_tokens, particles=particles, seed=seed)
    plain = ppl.importance(*args, max_tokens=max_tokens, particles=particles, seed=seed + 1)

    print(f"first prompt:  {prompt1!r}\nsecond prompt: {prompt2!r}")
    print(f"\nposterior, SMC with {particles} particles (distinct texts, by weight):")
    for text, weight in list(posterior.distribution().items())[:5]:
        if weight >= 0.001:
            print(f"{weight:6.3f}  {text!r}")
    print("\nplain samples from the first prompt (the first five):")
    for text in plain.values[:5]:
        print("  - " + textwrap.shorten(repr(text), width=94))

    post_p1, post_p2 = per_token(posterior, weighted=True)
    plain_p1, plain_p2 = per_token(plain, weighted=False)
    print(f"\n{'mean log p per token':>22}{'p1 (first)':>12}{'p2 (second)':>13}")
    print(f"{'posterior':>22}{post_p1:12.3f}{post_p2:13.3f}")
    print(f"{'plain samples':>22}{plain_p1:12.3f}{plain_p2:13.3f}")
    print(
        f"\nClaim (measured): under the second prompt the posterior's texts score "
        f"{post_p2:.2f} nats per token against {plain_p2:.2f} for plain samples from the first "
        f"prompt ({post_p2 - plain_p2:+.2f}); under the first prompt {post_p1:.2f} against "
        f"{plain_p1:.2f}."
    )
    print("\n" + MODEL_NOTE)
    return {
        "posterior": posterior,
        "plain": plain,
        "posterior_log_p2_per_token": post_p2,
        "plain_log_p2_per_token": plain_p2,
        "posterior_log_p1_per_token": post_p1,
        "plain_log_p1_per_token": plain_p1,
    }


# %%
if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one text that two prompts both find likely")
    parser.add_argument("--particles", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    # a notebook's kernel has command-line arguments of its own: use the defaults there
    args = parser.parse_args([] if "ipykernel" in sys.modules else None)
    main(args.particles, args.max_tokens, args.seed)
