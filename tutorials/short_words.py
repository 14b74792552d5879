"""Short words: steer a language model to tell a story in which no word is longer than five letters.

Run it with `make demo` (or `python tutorials/short_words.py`). It loads the embedded
SmolLM2-135M-Instruct (some 20-30 s on a laptop CPU) and runs sequential Monte Carlo with 16
particles.

The program is ordinary Python. Each step samples one token from the model, appends it to an
immutable context, and states the constraint with `condition`: every word so far, the one still
being written included (its letters can only grow), has at most five letters. Under SMC a
particle that breaks the rule gets weight zero and is replaced, at the next resampling, by a copy
of a surviving one; the posterior targets the model's own distribution of
stories restricted to short words, not a distorted one.

Only the model's reply is checked: `ctx.text` is what was generated after the prompt.
"""

from __future__ import annotations

import argparse
import textwrap

import ppl
from ppl import condition, program, sample

MAX_LETTERS = 5


def letters(word: str) -> int:
    """Letters in a word; punctuation and digits do not count ("story." has five)."""
    return sum(ch.isalpha() for ch in word)


def short(words: list[str]) -> bool:
    return all(letters(w) <= MAX_LETTERS for w in words)


@program
def short_words(lm, prompt: str, max_tokens: int = 40):
    ctx = lm.context(prompt)
    for _ in range(max_tokens):
        tok = sample(ctx.next_token())  # one batched forward pass for all particles
        ctx = ctx + tok
        # the last word may still be growing, but its letters never shrink: checking it now
        # rejects a doomed particle early and changes nothing in the target
        condition(short(ctx.text.split()))
        if tok.is_eos:
            break
    return ctx.text.strip()


def main(particles: int = 16, max_tokens: int = 40, seed: int = 0, lm=None) -> ppl.Posterior:
    """Run the task and print the posterior; returns it."""
    if lm is None:
        print("loading the embedded model (SmolLM2-135M-Instruct) ...", flush=True)
        lm = ppl.models.load()
    prompt = lm.chat("Tell me a story.")
    posterior = ppl.smc(
        short_words, lm, prompt, max_tokens=max_tokens, particles=particles, seed=seed
    )
    stats = posterior.stats
    print(
        f"SMC, {particles} particles: {stats['steps']} steps, "
        f"{len(posterior.resampled)} resampling steps, {stats['seconds']:.1f} s, "
        f"{stats['forward_calls']} model calls, {stats['tokens_fed']} tokens fed"
    )
    print("\nposterior (distinct texts, by weight):")
    for text, weight in posterior.distribution().items():
        wrapped = textwrap.fill(text, width=88, initial_indent=" " * 8, subsequent_indent=" " * 8)
        print(f"{weight:6.3f}{wrapped[6:]}")
    print(f"\nlog evidence  {posterior.log_evidence:.3f}")
    print("ESS per step  " + " ".join(f"{e:.1f}" for e in posterior.ess))
    return posterior


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.particles, args.max_tokens, args.seed)
