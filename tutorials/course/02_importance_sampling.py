# %% [markdown]
# # Lesson 2: Importance sampling
#
# Enumeration stops working as soon as texts get long: a real model has tens of thousands of
# tokens per step. **Importance sampling** (IS) replaces the sum over all texts with an average
# over a few random ones. Run the program N times from its prior, x_i ~ p, and give run i the
# **weight** w_i = L(x_i), the product of its `condition` and `observe` terms. Then
#
# $$\hat Z = \frac1N \sum_{i=1}^N w_i, \qquad
#   \hat{\mathbb E}_\pi[f] = \frac{\sum_i w_i f(x_i)}{\sum_i w_i}.$$
#
# $\hat Z$ is **unbiased**: E[w] = Σ_x p(x) L(x) = Z. Its variance is Var_p(L) / N, so its
# relative error is
#
# $$\frac{\operatorname{sd}(\hat Z)}{Z} = \sqrt{\frac{1}{N}\left(\frac{\mathbb E_p[L^2]}{Z^2}
#   - 1\right)},$$
#
# shrinking like $1/\sqrt N$. The **effective sample size** ESS = (Σ w_i)² / Σ w_i² says how
# many independent posterior draws the weighted sample is worth; for large N,
# ESS / N → Z² / E_p[L²]. On the toy model of lesson 1 every one of these numbers is also
# known exactly, so we can watch the estimates converge to them.

# %%
from __future__ import annotations

import math
import textwrap

import numpy as np

import ppl
from ppl import condition, observe, program, sample
from ppl.distributions import Bernoulli
from ppl.models import FunctionLM

# %% [markdown]
# ## The model and program of lesson 1

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


def flag_probability(text: str) -> float:
    """P(the checker flags the text | the text)."""
    return 0.9 if "b" in text else 0.2


@program
def story(max_tokens: int = MAX_TOKENS):
    ctx = lm.context("")
    for _ in range(max_tokens):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        if tok.is_eos:
            break
    condition("aa" not in ctx.text)
    observe(Bernoulli(flag_probability(ctx.text)), True)
    return ctx.text


# %% [markdown]
# ## The exact answers
#
# Z, the posterior probability that the text contains a "b", and the two moments of the weight
# that fix the error of IS: E_p[L²] / Z² - 1 (the relative variance of one weight) and the
# limit of ESS / N.
#
# `ppl.exact` (lesson 1) lists every execution of the program. Besides the exact posterior and
# log Z, each execution's trace carries its prior probability p(x) (`trace.log_prior`, the sum
# of its choices' log probabilities) and its likelihood L(x) (`trace.log_likelihood`): L(x) is
# exactly the weight that IS gives a particle that wrote x. The posterior lists only the texts
# of positive weight; the others (every text with "aa") hold the rest of the prior mass,
# 1 - Σ p(x), and have weight 0. The moments of the weight under the prior follow.


# %%
def exact(max_tokens: int = MAX_TOKENS) -> dict[str, float]:
    post = ppl.exact(story, max_tokens)
    prior = np.exp([t.log_prior for t in post.traces])  # p(x), for each x with L(x) > 0
    weight = np.exp([t.log_likelihood for t in post.traces])  # L(x), the weight IS gives x
    ruled_out = 1 - math.fsum(prior)  # the prior mass of the texts of weight 0
    z = math.exp(post.log_evidence)
    second = math.fsum(prior * weight**2)
    # a text of weight 0 has (L/Z - 1)^4 = 1
    fourth = math.fsum(prior * (weight / z - 1) ** 4) + ruled_out
    return {
        "log_evidence": post.log_evidence,
        "p_has_b": post.expectation(lambda t: "b" in t),
        "relative_variance": second / z**2 - 1,  # Var_p(L) / Z², for one particle
        "relative_fourth_moment": fourth,  # E_p[(L/Z - 1)^4], for the error of the error
        "ess_fraction": z**2 / second,  # the limit of ESS / N
    }


EXACT = exact()
print({k: round(v, 4) for k, v in EXACT.items()})

# %% [markdown]
# ## One run
#
# `ppl.importance` runs the particles (all model calls of a step in one batch) and returns a
# `Posterior`: each particle's value and log weight, the evidence estimate `log_evidence`
# (log $\hat Z$) and the ESS. A particle whose text contains "aa" has weight 0 and value
# None; the others weigh P(flag | text), 0.9 or 0.2.

# %%
post = ppl.importance(story, particles=100, seed=0)
for text, w in list(zip(post.values, np.exp(post.log_weights)))[:6]:
    print(f"  {text!r:8} weight {w:.2f}")
print(f"log Z: estimate {post.log_evidence:.4f}, exact {EXACT['log_evidence']:.4f}")
print(f"ESS {post.final_ess:.1f} of {post.num_particles}")
print(
    f"P(has b): estimate {post.expectation(lambda t: 'b' in t):.3f}, exact {EXACT['p_has_b']:.3f}"
)


# %% [markdown]
# ## How the error shrinks with N
#
# For each N we repeat the run with `repeats` different seeds and measure the relative error
# $\hat Z / Z - 1$ (its root mean square) and $|\log \hat Z - \log Z|$ (its mean). The theory
# column is the exact standard deviation above; √N × error should stay near the constant
# √(E_p[L²]/Z² - 1).
#
# The measured rms is itself an estimate, from `repeats` runs, so it has a Monte Carlo error
# of its own. It is known exactly here, from the fourth moment of the weight: if
# D = Ẑ/Z - 1 with N particles, the rms of `repeats` draws of D has a relative standard error of
# about √(Var(D²) / repeats) / (2 E[D²]), where E[D²] = m₂/N and
# E[D⁴] = (m₄ + 3(N-1) m₂²)/N³ with m_k = E_p[(L/Z - 1)^k]. With the default 50 runs it is
# about 10% at every N, so a measured fall of the error from N = 10 to N = 1000 scatters around
# 1/√N's 10-fold by about ±14%. The claim prints these figures for the run it made.


# %%
def error_table(sizes=(10, 100, 1000), repeats: int = 50) -> list[dict[str, float]]:
    """For each N: the relative errors of Z-hat over `repeats` seeds, and the mean ESS / N."""
    z = math.exp(EXACT["log_evidence"])
    rows = []
    for n in sizes:
        runs = [ppl.importance(story, particles=n, seed=(n, r)) for r in range(repeats)]
        log_z = np.array([p.log_evidence for p in runs])
        ratio = np.exp(log_z) / z  # Z-hat / Z
        ess = np.array([p.final_ess / n for p in runs])
        rows.append(
            {
                "particles": n,
                "mean_ratio": float(np.mean(ratio)),
                "rms_relative_error": float(np.sqrt(np.mean((ratio - 1) ** 2))),
                "theory": math.sqrt(EXACT["relative_variance"] / n),
                "rms_relative_se": rms_relative_se(n, repeats),
                "mean_abs_log_error": float(np.mean(np.abs(log_z - EXACT["log_evidence"]))),
                "ess_fraction": float(ess.mean()),
                "ess_fraction_se": (
                    float(ess.std(ddof=1) / math.sqrt(repeats)) if repeats > 1 else math.nan
                ),
            }
        )
    return rows


def rms_relative_se(n: int, repeats: int) -> float:
    """The relative standard error of the rms of `repeats` draws of D = Ẑ/Z - 1 at N = n
    (exact moments of D, then the delta method from the mean of D² to its square root)."""
    m2, m4 = EXACT["relative_variance"], EXACT["relative_fourth_moment"]
    d2 = m2 / n  # E[D²]
    d4 = (m4 + 3 * (n - 1) * m2**2) / n**3  # E[D⁴]
    return math.sqrt((d4 - d2**2) / repeats) / (2 * d2)


# %%
def claim(rows: list[dict[str, float]], repeats: int) -> str:
    """The lesson's claim, in words that follow the numbers of this run."""
    # unbiased: each mean of Ẑ/Z against 1, in exact standard errors (theory / √repeats)
    z = [(r["mean_ratio"] - 1) / (r["theory"] / math.sqrt(repeats)) for r in rows]
    worst = max(range(len(rows)), key=lambda i: abs(z[i]))
    if abs(z[worst]) < 3:
        text = (
            f"Claim: Ẑ is unbiased: at every N the mean Ẑ/Z of {repeats} runs is within "
            f"{abs(z[worst]):.1f} standard errors of 1."
        )
    else:
        text = (
            f"Claim: at N = {rows[worst]['particles']} the mean Ẑ/Z of {repeats} runs is "
            f"{abs(z[worst]):.1f} standard errors from 1, more than Monte Carlo error usually "
            f"gives (Ẑ is unbiased: E[Ẑ] = Z exactly)."
        )
    first, last = min(rows, key=lambda r: r["particles"]), max(rows, key=lambda r: r["particles"])
    if first is last:
        return text + " With a single N the fall of the error cannot be judged."
    measured = first["rms_relative_error"] / last["rms_relative_error"]
    predicted = math.sqrt(last["particles"] / first["particles"])
    spread = math.hypot(first["rms_relative_se"], last["rms_relative_se"])  # relative
    away = abs(math.log(measured / predicted)) / spread  # a ratio: its log is nearer normal
    moved = f"fell {measured:.1f}-fold" if measured >= 1 else f"rose {1 / measured:.1f}-fold"
    text += (
        f" From N = {first['particles']} to N = {last['particles']} the rms relative error "
        f"{moved}, where 1/√N predicts a {predicted:.1f}-fold fall (the exact theory column "
        f"falls exactly that much). The measured rms is itself estimated from only {repeats} "
        f"runs: its relative standard error is {first['rms_relative_se']:.0%} at "
        f"N = {first['particles']} and {last['rms_relative_se']:.0%} at N = {last['particles']}, "
        f"so a fall measured this way scatters around {predicted:.1f} by about ±{spread:.0%}"
    )
    if away < 1:
        text += f", and {measured:.1f} is within one such error of it."
    elif away < 3:
        text += (
            f": {measured:.1f} is {away:.1f} such errors from it, a difference that Monte "
            f"Carlo error explains, not a failure of 1/√N."
        )
    else:
        text += (
            f": {measured:.1f} is {away:.1f} such errors from it, more than Monte Carlo error "
            f"usually gives."
        )
    return text


def wrap(text: str, width: int = 100) -> str:
    """`text` in lines of at most `width`, never breaking "N = 10" apart."""
    return textwrap.fill(text.replace(" = ", "\u00a0=\u00a0"), width).replace("\u00a0", " ")


def main(sizes=(10, 100, 1000), repeats: int = 50) -> dict:
    """Print the error table and the claim; return the exact values and the table."""
    rows = error_table(sizes, repeats)
    print(f"exact log Z = {EXACT['log_evidence']:.4f}; {repeats} seeds per N\n")
    print(
        f"{'N':>6}{'mean Ẑ/Z':>10}{'rms(Ẑ/Z-1)':>13}{'theory':>9}{'√N·rms':>8}"
        f"{'mean|logẐ-logZ|':>17}{'ESS/N':>7}"
    )
    for r in rows:
        print(
            f"{r['particles']:6d}{r['mean_ratio']:10.3f}{r['rms_relative_error']:13.4f}"
            f"{r['theory']:9.4f}{math.sqrt(r['particles']) * r['rms_relative_error']:8.3f}"
            f"{r['mean_abs_log_error']:17.4f}{r['ess_fraction']:7.3f}"
        )
    print(
        f"exact: √(E[L²]/Z² - 1) = {math.sqrt(EXACT['relative_variance']):.3f}, "
        f"ESS/N -> Z²/E[L²] = {EXACT['ess_fraction']:.3f}"
    )
    text = claim(rows, repeats)
    print("\n" + wrap(text))
    return {"exact": EXACT, "rows": rows, "claim": text}


if __name__ == "__main__":
    main()
