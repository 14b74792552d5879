# %% [markdown]
# # Cascades: the model verifies its own answer
#
# The second program of "Language Model Cascades" (Dohan et al., 2022) adds a **verifier**: the
# model answers a question, then is shown its answer and asked whether it is correct. Reading the
# verifier's "Yes" as an *observation* turns it into Bayes' rule over answers:
#
# $$p(a \mid q, \text{judge says Yes}) \;\propto\; p(a \mid q)\; p(\text{Yes} \mid q, a).$$
#
# In ppl that is one line, `observe(judge.continuation(), "Yes")`: the particle's weight gains
# log p(the judge's reply starts with "Yes" | q, a), every token of "Yes" scored in the step's one
# batched forward pass. Nothing is sampled from the judge; its opinion only reweights.
#
# Whether this helps depends on the judge: if p(Yes | q, a) is larger for right answers than for
# wrong ones, the verified posterior moves mass onto right answers. We measure it for the
# embedded SmolLM2-135M-Instruct on small sums, and print what we find.

# %%
from __future__ import annotations

import argparse
import math
import sys
import time

import ppl
from ppl import observe, program

# %% [markdown]
# ## The program
#
# The answer is constrained to `Answer: ` and one or two digits. The judge is the same model, in
# the same chat, one turn later: the question, its own answer, and "Is this answer correct?".
# Particles that gave the same answer build the same judge prompt, and `lm.context` returns the
# same context for the same prompt, so the model reads each distinct judge prompt once. The
# observed text is "Yes" with no leading space: in the chat template the assistant's reply starts
# on a fresh line, so that is how the model would write it.

# %%
ANSWER = ppl.Regex(r"Answer: (?P<answer>[0-9]{1,2})")
JUDGE_QUESTION = "Is this answer correct? Answer Yes or No."


def judge_prompt(lm, question: str, answer: str) -> str:
    """The chat in which the model is asked to judge its own answer."""
    return lm.chat(
        [
            {"role": "user", "content": question},
            {"role": "assistant", "content": f"Answer: {answer}"},
            {"role": "user", "content": JUDGE_QUESTION},
        ]
    )


@program
def answer(lm, question: str, verify: bool = True):
    """The model's numeric answer to `question`; with `verify`, weighted by the judge's Yes."""
    ctx = lm.context(lm.chat(question))
    reply = ppl.generate(ctx + "Answer: ", constraint=ANSWER, max_tokens=3)
    value = ANSWER.parse(reply)["answer"]
    if verify:
        judge = lm.context(judge_prompt(lm, question, value))
        observe(judge.continuation(), "Yes")
    return value


# %% [markdown]
# ## Questions
#
# Sums and differences of one-digit numbers: the model gets them right some of the time, so
# there is mass on wrong answers for a verifier to move.

# %%
QUESTIONS = [
    ("What is 4 + 4?", "8"),
    ("What is 7 - 2?", "5"),
    ("What is 9 - 4?", "5"),
    ("What is 3 + 6?", "9"),
    ("What is 8 - 5?", "3"),
    ("What is 2 + 5?", "7"),
]

# %% [markdown]
# ## Verified against unverified
#
# Both runs use the same seed, so their particles draw the same answers; the verified weights
# are the unverified ones times p(Yes | q, a). We print, per question, the mass on the right
# answer both ways, and p(Yes) for right and for wrong answers: the judge's discrimination.


# %%
def p_yes(lm, question: str, value: str) -> float:
    """p(the judge's reply starts with "Yes" | question, answer), computed directly."""
    return math.exp(lm.context(judge_prompt(lm, question, value)).continuation().log_prob("Yes"))


# What the small model limits, printed after the claim: the numbers are this model's
MODEL_NOTE = (
    "About the model: the judge is the same 135M model, and how well it tells right answers\n"
    "from wrong ones is what the numbers above measure. What the program guarantees is the\n"
    "reweighting by p(Yes), not the judge's competence."
)


def main(questions: int = 6, particles: int = 32, seed: int = 0, lm=None) -> dict:
    """Run with and without the verifier on each question; print the comparison and the claim.

    Returns per question both posteriors, the mass on the right answer both ways, and the
    judge's p(Yes) of every answer that a particle gave.
    """
    if lm is None:
        print("loading the embedded model (SmolLM2-135M-Instruct) ...", flush=True)
        lm = ppl.models.load()
    chosen = QUESTIONS[:questions]
    start = time.perf_counter()
    plain = ppl.map(
        ppl.importance,
        answer,
        [(q, False) for q, _ in chosen],
        model=lm,
        particles=particles,
        seed=seed,
        on_error="raise",
    )
    verified = ppl.map(
        ppl.importance,
        answer,
        [(q, True) for q, _ in chosen],
        model=lm,
        particles=particles,
        seed=seed,
        on_error="raise",
    )
    seconds = time.perf_counter() - start

    right_plain, right_verified, judged = [], [], []
    yes_right, yes_wrong = [], []
    gap = 0.0  # largest |log w_verified - log w_unverified - log p(Yes)| over all particles
    for (question, right), before, after in zip(chosen, plain, verified):
        prior, post = before.distribution(), after.distribution()
        yes = {a: p_yes(lm, question, a) for a in prior}
        judged.append(yes)
        yes_right += [p for a, p in yes.items() if a == right]
        yes_wrong += [p for a, p in yes.items() if a != right]
        right_plain.append(prior.get(right, 0.0))
        right_verified.append(post.get(right, 0.0))
        for a, b, lw_a, lw_b in zip(
            before.values, after.values, before.log_weights, after.log_weights
        ):
            if a is None or a != b:  # a particle that failed, or drew another answer
                gap = math.inf
            else:
                gap = max(gap, abs(lw_b - lw_a - math.log(yes[a])))
        print(f"\n{question}  (right answer: {right})")
        print(f"  {'answer':>6}{'unverified':>12}{'p(Yes)':>9}{'verified':>10}")
        shown = list(prior)[:6] + ([right] if right in list(prior)[6:] else [])
        for a in shown:  # the six likeliest answers, and the right one
            mark = "  <- right" if a == right else ""
            print(f"  {a:>6}{prior[a]:12.3f}{yes[a]:9.3f}{post.get(a, 0.0):10.3f}{mark}")

    mean_plain = sum(right_plain) / len(chosen)
    mean_verified = sum(right_verified) / len(chosen)
    mean_yes_right = sum(yes_right) / max(len(yes_right), 1)
    mean_yes_wrong = sum(yes_wrong) / max(len(yes_wrong), 1)
    print(f"\n{len(chosen)} questions, {particles} particles each, both runs: {seconds:.0f} s")
    print(
        f"judge: mean p(Yes) {mean_yes_right:.3f} over the right answers given "
        f"({len(yes_right)}), {mean_yes_wrong:.3f} over the wrong ones ({len(yes_wrong)})"
    )
    print(f"largest |log w_verified - log w_unverified - log p(Yes)| = {gap:.1e}")
    moved = "moves mass onto" if mean_verified > mean_plain else "does not move mass onto"
    ratio = mean_yes_right / mean_yes_wrong if yes_right and yes_wrong else math.nan
    if abs(ratio - 1) < 0.1:
        judge = f"says Yes to right and wrong answers alike (ratio {ratio:.2f}), so it cannot help"
    else:
        judge = f"says Yes {ratio:.2f} times as readily to right answers as to wrong ones"
    print(
        f"\nClaim (measured): the mean mass on the right answer is {mean_plain:.3f} unverified "
        f"and {mean_verified:.3f} verified ({mean_verified - mean_plain:+.3f}): the verifier "
        f"{moved} right answers. The 135M judge {judge}. What holds "
        f"exactly is the reweighting itself: each verified weight is the unverified one times "
        f"p(Yes | q, a), to {gap:.0e} in log."
    )
    print("\n" + MODEL_NOTE)
    return {
        "questions": chosen,
        "unverified": list(plain),
        "verified": list(verified),
        "p_yes": judged,
        "right_unverified": right_plain,
        "right_verified": right_verified,
        "mean_unverified": mean_plain,
        "mean_verified": mean_verified,
        "mean_yes_right": mean_yes_right,
        "mean_yes_wrong": mean_yes_wrong,
        "log_weight_gap": gap,
    }


# %%
if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the model verifies its own answer")
    parser.add_argument("--questions", type=int, default=6)
    parser.add_argument("--particles", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    # a notebook's kernel has command-line arguments of its own: use the defaults there
    args = parser.parse_args([] if "ipykernel" in sys.modules else None)
    main(args.questions, args.particles, args.seed)
