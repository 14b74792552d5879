# %% [markdown]
# # Cascades: tool use
#
# In "Language Model Cascades" (Dohan et al., 2022) a program can hand part of the work to a
# **tool**: the model writes a calculation, ordinary code computes it, the result goes back into
# the context, and the model carries on from there. Inside a ppl program the tool is just Python
# between two model calls; inference runs it once per particle, and the particles keep their KV
# caches across the call.
#
# Here the model (the embedded SmolLM2-135M-Instruct) reads a word problem and writes an
# arithmetic expression, constrained by a Lark grammar so that it always parses. With the tool,
# a small calculator evaluates the expression and the program writes ` = <value>`; without it,
# the model writes the result itself. Either way the model then finishes with
# `So the answer is <number>`. A 135M model often writes the right product (`35 * 9`) and rarely
# its value (315): the tool supplies exactly what it lacks.

# %%
from __future__ import annotations

import argparse
import operator
import random
import sys
import time

import lark

import ppl
from ppl import condition, program, sample

# %% [markdown]
# ## The grammar and the calculator
#
# One set of rules makes two grammars. `REPLY` is the whole reply, `expression = result` and the
# answer line: it constrains every token the model writes, and text the program adds must fit it
# too. `EXPRESSION` is the expression alone; the calculator parses with it and walks the lark
# tree. Nothing is passed to `eval`: the only operations are the three the grammar has.

# %%
RULES = r"""
?sum: product | sum ADD product
?product: NUMBER | product MUL NUMBER
ADD: "+" | "-"
MUL: "*"
NUMBER: /[0-9]{1,3}/
%ignore " "
"""
REPLY = ppl.Grammar(
    'start: sum "=" VALUE "\\nSo the answer is" VALUE\nVALUE: /-?[0-9]{1,5}/\n' + RULES
)
EXPRESSION = ppl.Grammar("start: sum\n" + RULES)
OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def evaluate(tree: lark.Tree | lark.Token) -> int:
    """The value of a parse tree of `EXPRESSION`."""
    if isinstance(tree, lark.Token):
        return int(tree)
    if tree.data == "start":
        return evaluate(tree.children[0])
    left, op, right = tree.children
    return OPERATIONS[str(op)](evaluate(left), evaluate(right))


def calculator(expression: str) -> int:
    """The tool: `calculator("12 * 7 + 1")` is 85."""
    return evaluate(EXPRESSION.parse(expression))


# %% [markdown]
# ## The program
#
# The model writes the expression token by token under `REPLY` until it writes `=` (the grammar
# allows `=` only after a whole expression). Then the two versions differ in one place: the tool
# writes the result, or the model does (up to the end of its line). The final answer is the
# model's again. The constraint's weights make the target the model conditioned on writing in
# this format; the tool itself adds no weight: it is deterministic. (A value of more than five
# digits does not fit `VALUE`; the particle that wrote such an expression gets weight zero.)


# %%
@program
def solve(lm, problem: str, use_tool: bool = True, expression_tokens: int = 12):
    """(answer, expression, result) for a word problem, with or without the calculator."""
    ctx = lm.context(lm.chat(problem))
    for _ in range(expression_tokens):
        ctx = ctx + sample(ctx.next_token(REPLY))
        if "=" in ctx.text:
            break
    condition("=" in ctx.text)  # the expression ended within expression_tokens
    expression = ctx.text.split("=")[0].strip()
    if use_tool:
        ctx = ctx + f" {calculator(expression)}\n"
    else:
        for _ in range(8):
            ctx = ctx + sample(ctx.next_token(REPLY))
            if "\n" in ctx.text:
                break
        condition("\n" in ctx.text)  # the model ended its line (a VALUE has at most 6 tokens)
    result = ctx.text.split("=")[1].strip()
    reply = ppl.generate(ctx + "So the answer is ", constraint=REPLY, max_tokens=8)
    return reply.split("So the answer is")[1].strip(), expression, result


# %% [markdown]
# ## Problems
#
# Made up here: a two-digit number times a one-digit one, asked in three ways.

# %%
TEMPLATES = [
    "What is {a} times {b}?",
    "Multiply {a} by {b}.",
    "What is {b} times {a}?",
]


def problems(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """`n` (problem, answer) pairs."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(12, 49), rng.randint(3, 9)
        out.append((TEMPLATES[i % len(TEMPLATES)].format(a=a, b=b), str(a * b)))
    return out


# %% [markdown]
# ## With the tool and without
#
# The accuracy of a posterior is the mass it puts on the right answer; we average it over the
# problems.


# %%
def mass_on(post: ppl.Posterior, answer: str) -> float:
    """Posterior mass of the particles whose final answer is `answer`."""
    return sum(w for v, w in zip(post.values, post.weights) if w > 0 and v[0] == answer)


# What the small model limits, printed after the claim: the numbers are this model's
MODEL_NOTE = (
    "About the model: SmolLM2-135M rarely computes a two-digit product itself and sometimes\n"
    "writes the wrong expression. The calculator fixes the first, not the second."
)


def main(n_problems: int = 6, particles: int = 8, seed: int = 0, lm=None) -> dict:
    """Solve every problem with and without the calculator; print accuracies and the claim."""
    if lm is None:
        print("loading the embedded model (SmolLM2-135M-Instruct) ...", flush=True)
        lm = ppl.models.load()
    chosen = problems(n_problems, seed)
    runs, seconds = {}, {}
    for use_tool in (True, False):
        start = time.perf_counter()
        runs[use_tool] = list(
            ppl.map(
                ppl.importance,
                solve,
                [(p, use_tool) for p, _ in chosen],
                model=lm,
                particles=particles,
                seed=seed,
                on_error="raise",
            )
        )
        seconds[use_tool] = time.perf_counter() - start

    accuracy = {True: [], False: []}
    for i, (problem, answer) in enumerate(chosen):
        print(f"\n{problem}  (answer {answer})")
        for use_tool, label in ((True, "tool"), (False, "no tool")):
            post = runs[use_tool][i]
            accuracy[use_tool].append(mass_on(post, answer))
            best = max(range(particles), key=lambda j: post.weights[j])
            final, expression, result = post.values[best]
            print(
                f"  {label:8} P(right) = {accuracy[use_tool][-1]:.2f}   heaviest particle: "
                f"{expression} = {result}, so the answer is {final}"
            )

    with_tool = sum(accuracy[True]) / n_problems
    without = sum(accuracy[False]) / n_problems
    print(
        f"\n{n_problems} problems, {particles} particles each: {seconds[True]:.0f} s with the "
        f"tool, {seconds[False]:.0f} s without"
    )
    if with_tool > without:
        verdict = (
            "higher with the tool: the model often writes the right expression and rarely its "
            "value, and the calculator supplies the value"
        )
    else:
        verdict = "the tool did not help here"
    print(
        f"\nClaim (measured): mean posterior mass on the right answer {with_tool:.3f} with the "
        f"calculator and {without:.3f} without: {verdict}."
    )
    print("\n" + MODEL_NOTE)
    return {
        "problems": chosen,
        "with_tool": runs[True],
        "without_tool": runs[False],
        "accuracy_with_tool": accuracy[True],
        "accuracy_without_tool": accuracy[False],
        "mean_with_tool": with_tool,
        "mean_without_tool": without,
    }


# %%
if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="tool use: a calculator between model calls")
    parser.add_argument("--problems", type=int, default=6)
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    # a notebook's kernel has command-line arguments of its own: use the defaults there
    args = parser.parse_args([] if "ipykernel" in sys.modules else None)
    main(args.problems, args.particles, args.seed)
