# %% [markdown]
# # Cascades: selection-inference
#
# Selection-inference (Creswell et al., 2022), one of the programs of "Language Model Cascades"
# (Dohan et al., 2022), splits a reasoning step in two: first **select** the fact that matters,
# then **infer** a conclusion from that fact alone. The selected fact is a latent variable, and
# a probabilistic program can treat it as one:
#
# $$s \sim \text{Uniform}(\text{facts}), \qquad
#   \text{weight} \mathrel{*}= p_\text{LM}(\text{the reply is } s \mid \text{facts}, q), \qquad
#   c \sim p_\text{LM}(c \mid s, q).$$
#
# The prior over facts is uniform; the model's own probability of repeating fact s, when asked
# which fact answers the question, is the likelihood (`observe(select.continuation(), fact)`,
# all tokens of the fact scored in one batched forward pass). The posterior over selections is
# then p(s | q) ∝ p_LM(s | facts, q), and the conclusion is drawn from the selected fact only,
# so the answer cannot lean on the facts that were not selected.
#
# The selection has four values, so its exact posterior is four numbers: we compute them
# directly and print them beside the importance-sampling estimate and the uniform prior.

# %%
from __future__ import annotations

import argparse
import math
import sys
import time

import ppl
from ppl import observe, program, sample
from ppl.distributions import Categorical

# %% [markdown]
# ## Facts and questions
#
# Each question needs exactly one of the facts; we know which, so we can check where the
# posterior puts its mass, and which word a right conclusion contains.

# %%
FACTS = [
    "Mary lives in Paris.",
    "John has a red car.",
    "The cat sleeps on the sofa.",
    "Tom plays the piano.",
]
QUESTIONS = [  # (question, the index of the fact it needs, a word of the right answer)
    ("What colour is John's car?", 1, "red"),
    ("Where does Mary live?", 0, "paris"),
    ("What does Tom play?", 3, "piano"),
    ("Where does the cat sleep?", 2, "sofa"),
]

# %% [markdown]
# ## The program
#
# Selection: a uniform choice among the facts, weighted by the model's probability of replying
# with it. Inference: a fresh chat holding only the selected fact and the question; the model
# writes one line (at most `infer_tokens` tokens). Particles that selected the same fact build
# the same prompt and share its context.


# %%
def selection_prompt(lm, facts: list[str], question: str) -> str:
    listing = "\n".join(f"- {fact}" for fact in facts)
    return lm.chat(
        f"Facts:\n{listing}\n\nQuestion: {question}\n"
        "Which fact answers the question? Repeat that fact."
    )


def inference_prompt(lm, fact: str, question: str) -> str:
    return lm.chat(f"Fact: {fact}\nQuestion: {question}\nAnswer in one short sentence.")


@program
def select_and_infer(lm, facts: list[str], question: str, infer_tokens: int = 12):
    """(the selected fact, the conclusion drawn from it)."""
    fact = sample("selection", Categorical(facts))
    select = lm.context(selection_prompt(lm, facts, question))
    observe(select.continuation(), fact)
    ctx = lm.context(inference_prompt(lm, fact, question))
    for _ in range(infer_tokens):
        tok = sample(ctx.next_token())
        if tok.is_eos or "\n" in tok.text:
            break
        ctx = ctx + tok
    return fact, ctx.text.strip()


# %% [markdown]
# ## Exact selection posterior
#
# p(s | q) = p_LM(s | facts, q) / Σ_s' p_LM(s' | facts, q): one `continuation().log_prob` per
# fact.


# %%
def exact_selection(lm, facts: list[str], question: str) -> dict[str, float]:
    select = lm.context(selection_prompt(lm, facts, question))
    select.logprobs()  # read the prompt once; each fact then costs only its own tokens
    log_p = {fact: select.continuation().log_prob(fact) for fact in facts}
    top = max(log_p.values())
    z = sum(math.exp(v - top) for v in log_p.values())
    return {fact: math.exp(v - top) / z for fact, v in log_p.items()}


def selections(post: ppl.Posterior) -> dict[str, float]:
    """The posterior over selected facts: the weights summed over conclusions."""
    out: dict[str, float] = {}
    for value, w in zip(post.values, post.weights):
        if w > 0:
            out[value[0]] = out.get(value[0], 0.0) + float(w)
    return out


# %% [markdown]
# ## Every question


# %%
# What the small model limits, printed after the claim: the numbers are this model's
MODEL_NOTE = (
    "About the model: a 135M model's conclusions are often wrong even from the needed fact\n"
    "(the mass on conclusions with the right word, above). Selection and inference are exact\n"
    "for this model; they do not make it a better reasoner."
)


def main(questions: int = 4, particles: int = 16, infer_tokens: int = 12, seed: int = 0, lm=None):
    """Select and infer for each question; print prior, estimate and exact posterior; the claim.

    Returns the posteriors, the exact selection posteriors, and the mass on the relevant fact.
    """
    if lm is None:
        print("loading the embedded model (SmolLM2-135M-Instruct) ...", flush=True)
        lm = ppl.models.load()
    chosen = QUESTIONS[:questions]
    start = time.perf_counter()
    posts = ppl.map(
        ppl.importance,
        select_and_infer,
        [(FACTS, q, infer_tokens) for q, _, _ in chosen],
        model=lm,
        particles=particles,
        seed=seed,
        on_error="raise",
    )
    seconds = time.perf_counter() - start
    prior = 1 / len(FACTS)

    estimated, exact, right_conclusion = [], [], []
    for (question, needed, word), post in zip(chosen, posts):
        estimate = selections(post)
        truth = exact_selection(lm, FACTS, question)
        relevant = FACTS[needed]
        estimated.append(estimate.get(relevant, 0.0))
        exact.append(truth[relevant])
        right_conclusion.append(
            sum(w for v, w in zip(post.values, post.weights) if w > 0 and word in v[1].lower())
        )
        print(f"\n{question}")
        print(f"  {'fact':30}{'prior':>7}{'estimate':>10}{'exact':>8}")
        for fact in FACTS:
            mark = "  <- needed" if fact == relevant else ""
            print(f"  {fact:30}{prior:7.2f}{estimate.get(fact, 0.0):10.2f}{truth[fact]:8.2f}{mark}")
        best = max(range(particles), key=lambda i: post.weights[i])
        print(
            f"  heaviest particle: selected {post.values[best][0]!r}, "
            f"concluded {post.values[best][1]!r}"
        )
        print(f"  mass on conclusions that contain {word!r}: {right_conclusion[-1]:.2f}")

    n = len(chosen)
    mean_estimate, mean_exact = sum(estimated) / n, sum(exact) / n
    above = sum(p > prior for p in exact)
    print(f"\n{n} questions, {particles} particles each, {seconds:.0f} s")
    verdict = "concentrates" if mean_exact > prior else "does not concentrate"
    print(
        f"\nClaim (measured): the posterior over selections {verdict} on the needed fact: mean "
        f"mass {mean_estimate:.2f} estimated ({mean_exact:.2f} exact) against {prior:.2f} under "
        f"the uniform prior; the needed fact gains mass on {above} of {n} questions. Mean mass "
        f"on conclusions with the right word: {sum(right_conclusion) / n:.2f}."
    )
    print("\n" + MODEL_NOTE)
    return {
        "questions": chosen,
        "posteriors": list(posts),
        "relevant_estimate": estimated,
        "relevant_exact": exact,
        "right_conclusion": right_conclusion,
        "prior": prior,
    }


# %%
if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="selection-inference with a latent selection")
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--particles", type=int, default=16)
    parser.add_argument("--infer-tokens", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    # a notebook's kernel has command-line arguments of its own: use the defaults there
    args = parser.parse_args([] if "ipykernel" in sys.modules else None)
    main(args.questions, args.particles, args.infer_tokens, args.seed)
