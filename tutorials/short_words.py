"""Short words: steer a language model to tell a story in which no word is longer than five letters.

Run it with `make demo` (or `python tutorials/short_words.py`). It loads the embedded
SmolLM2-135M-Instruct (some 20-30 s on a laptop CPU), then shows, side by side, 32 stories
sampled from the model as it is (nearly all break the rule) and sequential Monte Carlo with 32
particles (every story obeys it), and says in words how rare a rule-abiding story is.

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
import re
import shutil
import textwrap
import time

import numpy as np

import ppl
from ppl import condition, program, sample
from ppl.inference import summary

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


@program
def plain_story(lm, prompt: str, max_tokens: int = 40):
    """The same story with no rule: the model's own distribution (ancestral sampling)."""
    ctx = lm.context(prompt)
    for _ in range(max_tokens):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        if tok.is_eos:
            break
    return ctx.text.strip()


PROMPT = "Write a short story for a child."


def main(
    particles: int = 32, max_tokens: int = 48, seed: int = 0, lm=None, prompt: str = PROMPT
) -> ppl.Posterior:
    """Plain sampling beside SMC, then the evidence in words; returns the SMC posterior."""
    if lm is None:
        print("loading the embedded model (SmolLM2-135M-Instruct) ...", end=" ", flush=True)
        start = time.perf_counter()
        lm = ppl.models.load()
        print(f"{time.perf_counter() - start:.0f} s", flush=True)
    chat = lm.chat(prompt)
    print(
        f"\nTask: {prompt!r}, with no word longer than {MAX_LETTERS} letters "
        f"(stories end at {max_tokens} tokens)."
    )
    plain = ppl.importance(
        plain_story, lm, chat, max_tokens=max_tokens, particles=particles, seed=seed
    )
    posterior = ppl.smc(
        short_words, lm, chat, max_tokens=max_tokens, particles=particles, seed=seed
    )
    print()
    print(side_by_side(plain.values, posterior))
    print()
    print(verdict(posterior, len(plain.values)))
    return posterior


def mark_long(text: str) -> str:
    """`text` with each word over the limit in [brackets] (punctuation left outside)."""

    def mark(word: str) -> str:
        if letters(word) <= MAX_LETTERS:
            return word
        core = re.match(r"^(\W*)(.*?)(\W*)$", word, re.S)
        return f"{core[1]}[{core[2]}]{core[3]}"

    return " ".join(mark(w) for w in text.split(" "))


def ellipsis(text: str) -> str:
    """A story cut off by the token limit ends with "..." rather than mid-word."""
    return text if text[-1:] in ".!?\"'”" else text + " ..."


def varied(dist: dict[str, float], n: int) -> list[tuple[str, float]]:
    """The `n` most probable texts, preferring ones whose first five words differ."""
    chosen: list[tuple[str, float]] = []
    starts: set[tuple[str, ...]] = set()
    for text, weight in dist.items():
        start = tuple(text.split()[:5])
        if start not in starts and len(chosen) < n:
            chosen.append((text, weight))
            starts.add(start)
    rest = [(t, w) for t, w in dist.items() if (t, w) not in chosen]
    return sorted(chosen + rest[: n - len(chosen)], key=lambda tw: -tw[1])


def side_by_side(stories: list[str], posterior: ppl.Posterior, shown: int = 3) -> str:
    """Plain samples (long words marked) in the left column, SMC's stories in the right."""
    width = max(72, min(shutil.get_terminal_size((100, 24)).columns, 120))
    col = (width - 3) // 2
    broken = sum(not short(s.split()) for s in stories)
    dist = posterior.distribution()
    left = [
        "PLAIN SAMPLING: the model as it is",
        f"{len(stories)} stories, {broken} break the rule",
        "(long words in [brackets])",
        "",
    ]
    right = [
        "SMC: the model, conditioned on the rule",
        f"{posterior.num_particles} particles, {len(dist)} distinct stories",
        "all obey the rule" if all(short(t.split()) for t in dist) else "SOME BREAK THE RULE",
        "",
    ]
    for story in stories[:shown]:
        left += textwrap.wrap(ellipsis(mark_long(story)), col) + [""]
    for text, weight in varied(dist, shown):
        right += textwrap.wrap(f"weight {weight:.3f}: {ellipsis(text)}", col) + [""]
    rows = max(len(left), len(right))
    left += [""] * (rows - len(left))
    right += [""] * (rows - len(right))
    rule = "-" * col + "-+-" + "-" * col
    lines = [f"{a:<{col}} | {b}".rstrip() for a, b in zip(left, right)]
    return "\n".join([rule, *lines[:3], rule, *lines[4:]]).rstrip()


def verdict(posterior: ppl.Posterior, plain: int) -> str:
    """The evidence, the effort and the run's health, in words."""
    s = posterior.stats
    ess = posterior.ess
    z = summary.in_words(posterior.log_evidence)
    lines = [
        f"Evidence: log Z = {posterior.log_evidence:.2f}: {z} of the model's own stories obey "
        "the rule,",
        "so rejection sampling would need that many tries for each story; SMC took "
        f"{s['forward_calls']} batched model calls ({s['seconds']:.1f} s).",
        f"ESS (effective sample size) min {min(ess):.1f}, median {float(np.median(ess)):.1f}, "
        f"final {posterior.final_ess:.1f} of {posterior.num_particles}; "
        f"resampled at {len(posterior.resampled)} of {len(ess)} steps.",
        "posterior.summary() lists every story; posterior.html('run.html') shows the run.",
    ]
    return "\n".join(textwrap.fill(line, 100) for line in lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.particles, args.max_tokens, args.seed)
