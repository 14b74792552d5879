# %% [markdown]
# # Lesson 1: Bayes' rule by enumeration
#
# A probabilistic program describes a joint distribution: its `sample` statements draw the
# hidden quantities x (here, a text) from a **prior** p(x), and its `condition` and `observe`
# statements multiply in a **likelihood** L(x) = p(y | x) of what we saw, y. Bayes' rule gives
# the **posterior**
#
# $$\pi(x) = p(x \mid y) = \frac{p(x)\, L(x)}{Z}, \qquad Z = p(y) = \sum_x p(x)\, L(x).$$
#
# Z, the **evidence** (or marginal likelihood, or normalising constant), is the probability of
# the observation under the model. Every inference algorithm in the later lessons estimates
# π and Z; here the model is small enough to compute them exactly, by listing every text. We
# list them by hand first, then let `ppl.exact` do the listing: the later lessons use it as the
# exact answer that every estimate is compared with.
#
# Run this file as a script (`python tutorials/course/01_bayes_by_enumeration.py`) or open it as
# a notebook (see `tutorials/course/README.md`).

# %%
from __future__ import annotations

import math

import ppl
from ppl import condition, observe, program, sample
from ppl.distributions import Bernoulli
from ppl.handlers import trace
from ppl.models import FunctionLM

# %% [markdown]
# ## A language model small enough to enumerate
#
# `FunctionLM` turns a next-token function into a language model. This one has three letters
# and an end-of-sequence token; the next token depends on the last one (a bigram model). A text
# is at most `MAX_TOKENS` tokens long, EOS included: a text of k < 4 letters ends with EOS, and
# a text that reaches 4 letters stops there, so there are 1 + 3 + 9 + 27 + 81 = 121 texts.

# %%
VOCAB = ["<s>", "a", "b", "c", "<eos>"]
NEXT = {  # P(next token | last token), in VOCAB order
    "<s>": [0.0, 0.5, 0.3, 0.15, 0.05],
    "a": [0.0, 0.3, 0.3, 0.2, 0.2],
    "b": [0.0, 0.4, 0.1, 0.3, 0.2],
    "c": [0.0, 0.2, 0.4, 0.1, 0.3],
}
MAX_TOKENS = 4
lm = FunctionLM(VOCAB, lambda prefix: NEXT[VOCAB[prefix[-1]]], eos="<eos>", bos="<s>")

# %% [markdown]
# ## The program: prior, hard evidence, soft evidence
#
# The text is the hidden variable. We learn two things about it:
#
# * **hard evidence**: it does not contain "aa". `condition(ok)` multiplies the weight by 1 or
#   0: texts with "aa" are impossible afterwards;
# * **soft evidence**: a checker that flags texts containing a "b" with probability 0.9 (and
#   others with probability 0.2, its false-alarm rate) flagged this one. `observe(d, value)`
#   multiplies the weight by d's probability of the value: here P(flag | text).
#
# So L(text) = 1[no "aa"] × P(flag | text). The tokens are named `token0`, `token1`, ... so
# that the handlers below can fix them.


# %%
def flag_probability(text: str) -> float:
    """P(the checker flags the text | the text)."""
    return 0.9 if "b" in text else 0.2


@program
def story(max_tokens: int = MAX_TOKENS):
    ctx = lm.context("")
    for i in range(max_tokens):
        tok = sample(f"token{i}", ctx.next_token())
        ctx = ctx + tok
        if tok.is_eos:
            break
    condition("aa" not in ctx.text)
    observe(Bernoulli(flag_probability(ctx.text)), True)
    return ctx.text


# %% [markdown]
# Called directly, a program just runs once: a draw from the prior, with the evidence ignored.

# %%
print("three draws from the prior:", [story() for _ in range(3)])


# %% [markdown]
# ## The prior, by enumeration
#
# We walk the tree of every token sequence the loop can produce, multiplying the model's
# next-token probabilities along the way (`ctx.logprobs()` is the model's own next-token
# distribution): p(text) = Π_t p(token_t | tokens before t).


# %%
def prior(max_tokens: int = MAX_TOKENS) -> dict[str, float]:
    """P(text) for every text the loop of `story` can return."""
    out: dict[str, float] = {}

    def walk(ctx, prob):
        for tok_id, logp in enumerate(ctx.logprobs().tolist()):
            if logp == -math.inf:
                continue
            nxt, p = ctx + tok_id, prob * math.exp(logp)
            if lm.token(tok_id).is_eos or len(nxt) == max_tokens:
                out[nxt.text] = out.get(nxt.text, 0.0) + p
            else:
                walk(nxt, p)

    walk(lm.context(""), 1.0)
    return out


def likelihood(text: str) -> float:
    """L(text): the product of what `condition` and `observe` contribute."""
    return ("aa" not in text) * flag_probability(text)


# %% [markdown]
# ## Bayes' rule
#
# Multiply, add up, divide. Nothing is estimated: every number below is exact (up to floating
# point).


# %%
def posterior(prior_probs: dict[str, float]) -> tuple[float, dict[str, float]]:
    """The evidence Z and the posterior {text: p(text | evidence)}."""
    joint = {text: p * likelihood(text) for text, p in prior_probs.items()}
    z = math.fsum(joint.values())
    return z, {text: j / z for text, j in joint.items()}


# %% [markdown]
# ## The program scores texts the same way
#
# `ppl.handlers.condition(story, {"token0": ..., ...})` fixes the program's token choices; a
# fixed choice counts as an observation, so the trace's `log_likelihood` is then
# log p(text) + log L(text), the log of the joint. This is what every inference algorithm uses:
# comparing it with our enumeration checks that the enumeration describes the program.


# %%
def program_log_joint(text: str, max_tokens: int = MAX_TOKENS) -> float:
    """log p(text) L(text) as the program itself computes it."""
    ids = lm.encode(text, add_special_tokens=False)
    if len(ids) < max_tokens:
        ids.append(next(iter(lm.eos_token_ids)))
    fixed = {f"token{i}": lm.token(t) for i, t in enumerate(ids)}
    return trace(ppl.handlers.condition(story, fixed)).get_trace(max_tokens).log_likelihood


# %% [markdown]
# ## The same enumeration, by `ppl.exact`
#
# Listing every execution is mechanical, so ppl does it for any program whose choices all have
# finitely many values: `ppl.exact(program, *args)` runs the program once per combination of
# values (each token the model can write at each step, each value of a `Bernoulli` or a
# `Categorical`), multiplies each execution's probabilities and likelihood terms as above, and
# returns a `Posterior` whose weights are the exact π and whose `log_evidence` is the exact
# log Z. It refuses a choice with infinitely many values, and stops past `max_executions`
# executions (100,000 by default). `post.distribution()` gives {text: π(text)}; `post.stats`
# counts the executions it forked. Its answer must be the one we computed by hand; `main`
# asserts that it is.


# %%
def largest_difference(p: dict[str, float], q: dict[str, float]) -> float:
    """max over texts of |p(text) - q(text)| (a text missing from one has probability 0)."""
    return max(abs(p.get(t, 0.0) - q.get(t, 0.0)) for t in set(p) | set(q))


# %% [markdown]
# ## Everything together


# %%
def main(max_tokens: int = MAX_TOKENS, top: int = 8) -> dict:
    """Enumerate the prior, apply Bayes' rule, check it against the program and against
    `ppl.exact`; print a table.

    Returns the prior, the posterior, Z, the largest gap between the enumerated log joint and
    the program's own score over all texts, and `ppl.exact`'s `Posterior` with its largest
    differences from the hand enumeration (in π, and in log Z).
    """
    prior_probs = prior(max_tokens)
    z, post = posterior(prior_probs)
    gap = 0.0
    for text, p in prior_probs.items():
        joint = p * likelihood(text)
        if joint > 0:
            gap = max(gap, abs(program_log_joint(text, max_tokens) - math.log(joint)))
    by_ppl = ppl.exact(story, max_tokens)
    exact_gap = largest_difference(by_ppl.distribution(), post)
    exact_log_gap = abs(by_ppl.log_evidence - math.log(z))

    print(
        f"{len(prior_probs)} texts of at most {max_tokens} tokens; the prior sums to "
        f"{math.fsum(prior_probs.values()):.6f}"
    )
    print(f"\n{'text':8}{'prior':>9}{'L(text)':>9}{'prior×L':>10}{'posterior':>11}")
    for text in sorted(post, key=post.get, reverse=True)[:top]:
        p = prior_probs[text]
        print(
            f"{text or '(empty)':8}{p:9.4f}{likelihood(text):9.2f}{p * likelihood(text):10.4f}"
            f"{post[text]:11.4f}"
        )
    print(f"{'...':8}{'1.0000':>9}{'':9}{z:10.4f}{math.fsum(post.values()):11.4f}   (sums)")
    most_prior = max(prior_probs, key=prior_probs.get)
    most_post = max(post, key=post.get)
    p_b = math.fsum(p for text, p in post.items() if "b" in text)
    p_b_prior = math.fsum(p for text, p in prior_probs.items() if "b" in text)
    print(f"\nZ = P(no 'aa' and flagged) = {z:.6f} (log Z = {math.log(z):.4f})")
    print(f"P(text has a 'b'): prior {p_b_prior:.4f} -> posterior {p_b:.4f}")
    print(f"most probable text: prior {most_prior!r} -> posterior {most_post!r}")
    print(f"program score vs enumeration: largest |difference| in log joint = {gap:.1e}")
    print(
        f"ppl.exact: {by_ppl.stats['executions']} executions forked (finished or not), "
        f"{by_ppl.stats['finished']} finished with positive weight; largest |difference| from "
        f"the enumeration: {exact_gap:.1e} in π, {exact_log_gap:.1e} in log Z"
    )
    total = math.fsum(post.values())
    agrees = (
        f"agrees with the enumeration to {gap:.0e} in log"
        if gap < 1e-9
        else f"differs from the enumeration by up to {gap:.2g} in log: they disagree"
    )
    same = max(exact_gap, exact_log_gap)
    by_exact = (
        f"`ppl.exact` gives the same posterior and Z to {same:.0e}"
        if same < 1e-9
        else f"`ppl.exact` differs from the enumeration by up to {same:.2g}: they disagree"
    )
    print(
        f"\nClaim: the posterior is prior × likelihood / Z, exactly (Z = {z:.6f}); it sums to "
        f"{total:.12f}, the program's own score of every text {agrees}, and {by_exact}."
    )
    assert same < 1e-9, f"ppl.exact disagrees with the enumeration by {same:.2g}"
    return {
        "prior": prior_probs,
        "posterior": post,
        "log_evidence": math.log(z),
        "gap": gap,
        "exact": by_ppl,
        "exact_gap": exact_gap,
        "exact_log_gap": exact_log_gap,
    }


if __name__ == "__main__":
    main()
