# %% [markdown]
# # Inference-time scaling: a particle filter over reasoning steps
#
# Spend more compute at inference time and a small model answers more questions, if the compute
# is spent well. This program compares three ways of spending a budget of N sequences per
# question on grade-school arithmetic, all on the embedded SmolLM2-135M-Instruct:
#
# * **best-of-N**: sample N solutions, keep the one the reward likes best (the commonest answer
#   among equally rewarded ones);
# * **beam search** over steps: keep the k best partial solutions, extend each N/k ways;
# * **a particle filter** over steps: N particles, weighted by the reward after every step and
#   resampled, so effort moves to the promising solutions while they are being written; the
#   answer is the one with the most posterior weight.
#
# A *step* is one line of the solution (it ends at a newline). The **reward** is a checker of
# the arithmetic the model writes: every equation `a + b = c` in a step must be right and use
# numbers from the question or from earlier steps (reward 1), a wrong or made-up one gets 0.1,
# and a step without an equation 0.5; at the end, an answer that some equation derived gets 1,
# an answer from nowhere 0.3 and no answer 0.1. It never looks at the true answer. We use a
# checker rather than the model's own judgement (`observe(ctx.continuation(), " Yes")`): the
# 135M model says "Yes" as often to wrong answers as to right ones (see cascade_verifier.py),
# while a checker is what a process reward model
# approximates, and it keeps the comparison about how each method spends its budget.
#
# The questions are made up by this program (`problems`), so no data set is needed and none can
# have leaked into the model's training data.
#
# Memory: every context holds the key/value tensors of the batch it was computed in, and beam
# search keeps its beams' contexts from one step to the next; 24 questions at N=8 peaked at about
# 14 GB, the default 12 questions at about half that.

# %%
from __future__ import annotations

import argparse
import math
import random
import re
import sys
import time
import warnings
from collections import Counter

import ppl
from ppl import factor, program, sample

# %% [markdown]
# ## Questions
#
# Small additions and subtractions in words, with their answers.

# %%
NAMES = ["Tom", "Ana", "Sam", "Mia", "Leo", "Ida"]
# one worked example: without it the model rarely writes equations or an answer line
EXAMPLE = (
    "Solve the problem in short steps, one line each, then write 'Answer: ' and the number.\n"
    "Example: Ben has 2 cups. Ben gets 5 more cups. How many cups does Ben have now?\n"
    "2 + 5 = 7\nAnswer: 7\n\nProblem: "
)
THINGS = ["apples", "books", "coins", "shells", "pens", "cards"]


def problems(n: int, seed: int = 0) -> list[tuple[str, list[int], int]]:
    """`n` word problems: (question, the numbers in it, the answer)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        name, thing = rng.choice(NAMES), rng.choice(THINGS)
        a, b = rng.randint(3, 9), rng.randint(2, 9)
        if rng.random() < 0.5:
            text = f"{name} has {a} {thing}. {name} gets {b} more {thing}."
            answer = a + b
        else:
            a += b  # no negative answers
            text = f"{name} has {a} {thing}. {name} gives away {b} {thing}."
            answer = a - b
        question = EXAMPLE + f"{text} How many {thing} does {name} have now?"
        out.append((question, [a, b], answer))
    return out


# %% [markdown]
# ## The reward and the answer

# %%
EQUATION = re.compile(r"(\d+)\s*([-+x*×])\s*(\d+)\s*=\s*(\d+)")
ANSWER = re.compile(r"[Aa]nswer(?: is)?\s*:?\s*\**'?(\d+)")


def step_reward(line: str, known: set[int]) -> float:
    """1 for a step whose equations are right and use known numbers, 0.1 if one is not, 0.5
    for a step without an equation. Adds each equation's result to `known`."""
    found = EQUATION.findall(line)
    if not found:
        return 0.5
    reward = 1.0
    for a, op, b, c in found:
        a, b, c = int(a), int(b), int(c)
        value = a + b if op == "+" else a - b if op == "-" else a * b
        if value != c or a not in known or b not in known:
            reward = 0.1
        known.add(c)
    return reward


def final_reward(text: str, derived: set[int]) -> float:
    """1 for an answer that one of the equations derived (`derived`), 0.3 for an answer from
    anywhere else, 0.1 for no answer at all. The true answer is never consulted."""
    m = ANSWER.search(text)
    if not m:
        return 0.1
    return 1.0 if int(m.group(1)) in derived else 0.3


def answer_of(text: str) -> int | None:
    """The number after "Answer:", or the last number written; None if there is none."""
    m = ANSWER.search(text)
    if m:
        return int(m.group(1))
    numbers = re.findall(r"\d+", text)
    return int(numbers[-1]) if numbers else None


# %% [markdown]
# ## The program
#
# One program serves best-of-N (importance sampling: the rewards are its weights) and the
# particle filter (SMC: the same weights, with resampling). `factor` applies a step's reward
# the moment its line ends.


# %%
@program
def solve(lm, question: str, numbers: list, steps: int = 3, step_tokens: int = 20):
    ctx = lm.context(lm.chat(question))
    known = set(numbers)
    for _ in range(steps):
        line = ""
        done = False
        for _ in range(step_tokens):
            tok = sample(ctx.next_token())
            ctx = ctx + tok
            line += tok.text
            if tok.is_eos:
                done = True
                break
            if "\n" in tok.text:
                break
        factor(math.log(step_reward(line, known)))
        if done or ANSWER.search(line):
            break
    factor(math.log(final_reward(ctx.text, known - set(numbers))))
    return ctx.text


@program
def one_step(lm, ctx, step_tokens: int = 20):
    """One line after `ctx`, for beam search: the new context and whether the solution ended."""
    done = False
    for _ in range(step_tokens):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        if tok.is_eos:
            done = True
            break
        if "\n" in tok.text:
            break
    return ctx, done


# %% [markdown]
# ## Three ways to spend N sequences
#
# Each runs every question at once with `ppl.map`: the rows of all questions share each forward
# pass. Item `i` is seeded `(seed, i)`.


# %%
def best_of_n(lm, qs, n, seed, steps, step_tokens):
    posts = ppl.map(ppl.importance, solve, [(lm, q, nums, steps, step_tokens) for q, nums, _ in qs],
                    particles=n, seed=seed)  # fmt: skip
    answers = []
    for post in posts:  # the best reward; among equally rewarded solutions, the commonest answer
        best = max(post.log_weights)
        tied = Counter(answer_of(v) for v, w in zip(post.values, post.log_weights) if w == best)
        answers.append(f"Answer: {tied.most_common(1)[0][0]}" if best > -math.inf else "")
    return answers


def particle_filter(lm, qs, n, seed, steps, step_tokens):
    posts = ppl.map(ppl.smc, solve, [(lm, q, nums, steps, step_tokens) for q, nums, _ in qs],
                    particles=n, seed=seed)  # fmt: skip
    answers = []
    for post in posts:
        votes: Counter = Counter()
        for text, w in zip(post.values, post.weights):
            if w > 0:
                votes[answer_of(text)] += float(w)
        answers.append(f"Answer: {votes.most_common(1)[0][0]}" if votes else "")
    return answers


def beam_search(lm, qs, n, seed, steps, step_tokens):
    """k = max(1, n // 4) beams per question, each extended n // k ways at every step; the k
    partial solutions with the best product of step rewards go on (ties: model probability)."""
    k = max(1, n // 4)
    children = n // k
    beams = [[(lm.context(lm.chat(q)), 0.0, set(nums), False)] for q, nums, _ in qs]
    for step in range(steps):
        todo = [(qi, b) for qi, bs in enumerate(beams) for b in bs if not b[3]]
        if not todo:
            break
        # rows=64: a kept beam's context holds on to the key/value tensors of the batch it was
        # computed in, so small batches keep the memory of the beams carried over small
        posts = ppl.map(ppl.importance, one_step, [(lm, b[0], step_tokens) for _, b in todo],
                        particles=children, seed=(seed, step), rows=64)  # fmt: skip
        grown: list[list] = [[b for b in bs if b[3]] for bs in beams]
        for (qi, (ctx, score, known, _)), post in zip(todo, posts):
            for new_ctx, done in post.values:
                line = new_ctx.text[len(ctx.text) :]
                seen = set(known)
                reward = math.log(step_reward(line, seen))
                grown[qi].append((new_ctx, score + reward, seen, done or bool(ANSWER.search(line))))
        beams = [sorted(g, key=lambda b: -b[1])[:k] for g in grown]
        del posts, grown  # the children not kept, and the caches only they hold, go now
    # the final reward, as the other two methods weigh it, then the best beam
    return [
        max(bs, key=lambda b: b[1] + math.log(final_reward(b[0].text, b[2] - set(nums))))[0].text
        for bs, (_, nums, _) in zip(beams, qs)
    ]


METHODS = {"best-of-N": best_of_n, "beam search": beam_search, "particle filter": particle_filter}


# %% [markdown]
# ## Accuracy as the budget grows


# %%
# What the small model limits, printed after the claim: the numbers are this model's
MODEL_NOTE = (
    "About the model: a 135M model rarely writes checkable arithmetic steps, so every\n"
    "method's accuracy stays low and differs by a question or two. The comparison is about\n"
    "how each method spends its budget, not about what a larger model would reach."
)


def main(
    budgets=(1, 4, 8),
    questions: int = 12,
    steps: int = 3,
    step_tokens: int = 16,
    seed: int = 0,
    lm=None,
    plot: str | None = None,
) -> dict[str, dict[int, float]]:
    """Accuracy of each method at each budget N; prints the table (and tokens fed per question)."""
    if lm is None:
        print("loading the embedded model (SmolLM2-135M-Instruct) ...", flush=True)
        lm = ppl.models.load()
    qs = problems(questions, seed)
    accuracy: dict[str, dict[int, float]] = {m: {} for m in METHODS}
    fed: dict[str, dict[int, float]] = {m: {} for m in METHODS}
    print(f"{questions} questions, at most {steps} steps of {step_tokens} tokens\n")
    print(f"{'N':>3}  " + "  ".join(f"{m:>22}" for m in METHODS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ppl.InferenceWarning)  # a question all particles fail
        for n in budgets:
            cells = []
            for name, method in METHODS.items():
                lm.reset_counters()
                start = time.perf_counter()
                texts = method(lm, qs, n, seed, steps, step_tokens)
                seconds = time.perf_counter() - start
                right = sum(answer_of(t) == truth for t, (_, _, truth) in zip(texts, qs))
                accuracy[name][n] = right / len(qs)
                fed[name][n] = lm.tokens_fed / len(qs)
                cells.append(f"{right:>2}/{len(qs)} {fed[name][n]:>6.0f} tok {seconds:>4.0f} s")
            print(f"{n:>3}  " + "  ".join(f"{c:>22}" for c in cells), flush=True)
    print("\n(each cell: questions answered right, tokens fed per question, seconds)")
    best = {m: max(a.values()) for m, a in accuracy.items()}
    top = max(budgets)
    print(
        f"\nAt N={top}: particle filter {accuracy['particle filter'][top]:.0%}, best-of-N "
        f"{accuracy['best-of-N'][top]:.0%}, beam search {accuracy['beam search'][top]:.0%} "
        f"(best at any N: " + ", ".join(f"{m} {a:.0%}" for m, a in best.items()) + ")."
    )
    low = min(budgets)
    gains = {m: accuracy[m][top] - accuracy[m][low] for m in METHODS}
    helped = [m for m, g in gains.items() if g > 0]
    print(
        f"Claim (measured): from N={low} to N={top}, "
        + (
            ", ".join(f"{m} gained {gains[m]:+.0%}" for m in helped)
            if helped
            else "no method answered more questions right"
        )
        + f" on {len(qs)} questions. The budget only pays where the model writes checkable "
        "steps; a 135M model mostly does not, and each question is one sample of luck."
    )
    print("\n" + MODEL_NOTE)
    if plot:
        _plot(accuracy, plot)
    return accuracy


def _plot(accuracy: dict[str, dict[int, float]], path: str) -> None:
    try:
        import matplotlib
    except ImportError:
        print("(no plot: it needs matplotlib; in a clone of ppl, pip install -e '.[plot]' adds it)")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, acc in accuracy.items():
        ax.plot(list(acc), list(acc.values()), marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("budget N (sequences per question)")
    ax.set_ylabel("accuracy")
    ax.set_title("Arithmetic word problems, SmolLM2-135M")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot saved to {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="particle filter vs best-of-N vs beam search")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--questions", type=int, default=12)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--step-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="scaling_reasoning.png")
    # in a notebook, argparse would read the kernel's own arguments
    args = parser.parse_args([] if "ipykernel" in sys.modules else None)
    main(args.budgets, args.questions, args.steps, args.step_tokens, args.seed, plot=args.plot)
