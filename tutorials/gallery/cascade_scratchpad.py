# %% [markdown]
# # Cascades: a scratchpad, marginalised
#
# "Language Model Cascades" (Dohan et al., 2022) writes prompting tricks as probabilistic
# programs. The first is the **scratchpad** (chain of thought): before answering, the model
# writes some working, a string r, and then the answer a. As a program that is two draws,
#
# $$r \sim p(r \mid q), \qquad a \sim p(a \mid q, r),$$
#
# and what we want is the answer's **marginal** distribution, the working summed out:
#
# $$p(a \mid q) = \sum_r p(r \mid q)\, p(a \mid q, r).$$
#
# Inference over the whole program does the sum for us: every particle is one reasoning path
# with its answer, and `post.distribution()` adds up the weights of all the paths that end in the
# same answer. No path is picked as *the* reasoning; each counts by its probability.
#
# We ask the embedded SmolLM2-135M-Instruct small word problems twice: once with a line of
# working before `Answer:` and once with `Answer:` straight away, and compare the mass each puts
# on the right answer. The answer is constrained to one or two digits, so the distribution is
# over numbers, not over ways of writing them.

# %%
from __future__ import annotations

import argparse
import sys
import time

import ppl
from ppl import program, sample

# %% [markdown]
# ## The program
#
# The working is free text: tokens from the model until it ends its line (a token with a
# newline, or EOS) or until `reasoning_tokens` tokens. The program then writes `Answer: ` itself
# and the model writes the number.
#
# The constraint covers the whole reply, the hand-written `Answer: ` included (text added with
# `ctx + "..."` is generated text as far as a constraint is concerned), so there are two: with
# working, one line and then the answer line; without, the answer line alone. (One pattern with
# an optional working line would not do: `Answer: 5` would also match as a line of working, and
# the model could write on past its answer.) A named group marks the answer, and `Regex.parse`
# finds it. The working tokens are drawn without the constraint (the program itself stops them at
# the end of the line), so they are the model's own; only the digits are masked, and the weight
# of a particle is the probability the masks kept: the target is the model conditioned on
# answering with a number.
#
# The working tokens are named `working0`, `working1`, ... so that we can read a particle's
# working back from its trace.

# %%
WITH_WORKING = ppl.Regex(r"[^\n]*\nAnswer: (?P<answer>[0-9]{1,2})")
DIRECT = ppl.Regex(r"Answer: (?P<answer>[0-9]{1,2})")


@program
def solve(lm, question: str, reasoning_tokens: int = 16):
    """The answer to `question`, after at most `reasoning_tokens` tokens of working (0: none)."""
    ctx = lm.context(lm.chat(question))
    for i in range(reasoning_tokens):
        tok = sample(f"working{i}", ctx.next_token())
        if tok.is_eos or "\n" in tok.text:
            break  # the line is over; the newline itself is ours to write
        ctx = ctx + tok
    if reasoning_tokens > 0:
        reply = ppl.generate(ctx + "\nAnswer: ", constraint=WITH_WORKING, max_tokens=3)
        return WITH_WORKING.parse(reply)["answer"]
    reply = ppl.generate(ctx + "Answer: ", constraint=DIRECT, max_tokens=3)
    return DIRECT.parse(reply)["answer"]


def working(trace: ppl.Trace) -> str:
    """The line of working of one particle, read from its `working{i}` choices."""
    tokens = [c.value for c in trace if c.name and c.name.startswith("working")]
    # the last choice may be the token that ended the line: it is not part of the working
    return "".join(t.text for t in tokens if not t.is_eos and "\n" not in t.text).strip()


# %% [markdown]
# ## Questions
#
# Word problems with one-digit numbers. Asked for `Answer:` at once, the model mostly repeats a
# number from the question; with a line of working it sometimes writes the sum (`3 + 2 = 5`)
# first.

# %%
QUESTIONS = [
    ("Tom has 3 apples and buys 2 more. How many apples does he have?", "5"),
    ("A box holds 4 red balls and 3 blue balls. How many balls are in the box?", "7"),
    ("Sam had 9 sweets and ate 3. How many sweets are left?", "6"),
    ("There are 5 birds on a tree and 4 more land on it. How many birds are on the tree?", "9"),
    ("Anna has 6 pens and gives away 2. How many pens does she have now?", "4"),
    ("Ben reads 2 books on Monday and 5 books on Tuesday. How many books did he read?", "7"),
    ("A farmer has 8 cows and sells 5. How many cows are left?", "3"),
    ("A cat has 4 legs. How many legs do 2 cats have?", "8"),
]

# %% [markdown]
# ## Both ways, on every question
#
# `ppl.map` runs one importance sampler per question, all questions' particles sharing each
# batched forward pass. Importance sampling is enough: the working carries no weight, only the
# two or three masked answer tokens at the end do, so resampling would have little to act on.
# Without working the program has three tokens to draw, so many more particles cost little there.


# %%
def top(dist: dict[str, float], k: int = 3) -> str:
    return ", ".join(f"{a}: {p:.2f}" for a, p in list(dist.items())[:k])


# What the small model limits, printed after the claim: the numbers are this model's
MODEL_NOTE = (
    "About the model: a 135M model's working is often wrong arithmetic, with or without a\n"
    "scratchpad. The program shows how the answer's marginal sums over reasoning paths; what\n"
    "that gains is bounded by how often this model's working is right."
)


def main(
    questions: int = 6,
    particles: int = 16,
    reasoning_tokens: int = 16,
    direct_particles: int = 64,
    seed: int = 0,
    lm=None,
) -> dict:
    """Compare the marginal answer with working against the direct answer; print both.

    Returns the questions used and, per question, both posteriors and the mass each puts on the
    right answer, with the means over questions.
    """
    if lm is None:
        print("loading the embedded model (SmolLM2-135M-Instruct) ...", flush=True)
        lm = ppl.models.load()
    chosen = QUESTIONS[:questions]
    start = time.perf_counter()
    with_working = ppl.map(
        ppl.importance,
        solve,
        [(q, reasoning_tokens) for q, _ in chosen],
        model=lm,
        particles=particles,
        seed=seed,
        on_error="raise",
    )
    direct = ppl.map(
        ppl.importance,
        solve,
        [(q, 0) for q, _ in chosen],
        model=lm,
        particles=direct_particles,
        seed=seed,
        on_error="raise",
    )
    seconds = time.perf_counter() - start

    right_with, right_direct = [], []
    for (question, answer), post, plain in zip(chosen, with_working, direct):
        marginal, answered = post.distribution(), plain.distribution()
        right_with.append(marginal.get(answer, 0.0))
        right_direct.append(answered.get(answer, 0.0))
        print(f"\n{question}  (right answer: {answer})")
        print(f"  with working   P(right) = {right_with[-1]:.2f}   top: {top(marginal)}")
        print(f"  direct answer  P(right) = {right_direct[-1]:.2f}   top: {top(answered)}")
        heaviest = sorted(range(particles), key=lambda i: -post.weights[i])[:2]
        for i in heaviest:
            print(f"    working -> {post.values[i]}: {working(post.traces[i])!r}")

    mean_with = sum(right_with) / len(chosen)
    mean_direct = sum(right_direct) / len(chosen)
    wins = sum(w > d for w, d in zip(right_with, right_direct))
    print(
        f"\n{len(chosen)} questions, {particles} reasoning paths each (at most "
        f"{reasoning_tokens} tokens) and {direct_particles} direct answers each, {seconds:.0f} s"
    )
    better, worse = ("the scratchpad", "the direct answer")
    if mean_with <= mean_direct:
        better, worse = worse, better
    print(
        f"\nClaim (measured): the mean posterior mass on the right answer is {mean_with:.3f} with "
        f"a line of working, marginalised over {particles} reasoning paths, against "
        f"{mean_direct:.3f} when the model answers at once: {better} puts more mass on the right "
        f"answer than {worse} on average, and the scratchpad does better on {wins} of "
        f"{len(chosen)} questions."
    )
    print("\n" + MODEL_NOTE)
    return {
        "questions": chosen,
        "with_working": list(with_working),
        "direct": list(direct),
        "right_with_working": right_with,
        "right_direct": right_direct,
        "mean_with_working": mean_with,
        "mean_direct": mean_direct,
    }


# %%
if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a scratchpad, marginalised over its working")
    parser.add_argument("--questions", type=int, default=6)
    parser.add_argument("--particles", type=int, default=16)
    parser.add_argument("--reasoning-tokens", type=int, default=16)
    parser.add_argument("--direct-particles", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    # a notebook's kernel has command-line arguments of its own: use the defaults there
    args = parser.parse_args([] if "ipykernel" in sys.modules else None)
    main(args.questions, args.particles, args.reasoning_tokens, args.direct_particles, args.seed)
