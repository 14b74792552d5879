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


def likelihood(text: str) -> float:
    return ("aa" not in text) * flag_probability(text)


def prior(max_tokens: int = MAX_TOKENS) -> dict[str, float]:
    """P(text) for every text the loop can return, by walking the tree of token sequences."""
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


# %% [markdown]
# ## The exact answers
#
# Z, the posterior probability that the text contains a "b", and the two moments of the weight
# that fix the error of IS: E_p[L²] / Z² - 1 (the relative variance of one weight) and the
# limit of ESS / N.


# %%
def exact(max_tokens: int = MAX_TOKENS) -> dict[str, float]:
    prior_probs = prior(max_tokens)
    z = math.fsum(p * likelihood(t) for t, p in prior_probs.items())
    second = math.fsum(p * likelihood(t) ** 2 for t, p in prior_probs.items())
    has_b = math.fsum(p * likelihood(t) for t, p in prior_probs.items() if "b" in t) / z
    return {
        "log_evidence": math.log(z),
        "p_has_b": has_b,
        "relative_variance": second / z**2 - 1,  # Var_p(L) / Z², for one particle
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
                "mean_abs_log_error": float(np.mean(np.abs(log_z - EXACT["log_evidence"]))),
                "ess_fraction": float(ess.mean()),
                "ess_fraction_se": float(ess.std(ddof=1) / math.sqrt(repeats)),
            }
        )
    return rows


# %%
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
    first, last = rows[0], rows[-1]
    shrink = first["rms_relative_error"] / last["rms_relative_error"]
    print(
        f"\nClaim: Ẑ is unbiased (mean Ẑ/Z ≈ 1 at every N) and its error shrinks like 1/√N: "
        f"from N = {first['particles']} to N = {last['particles']} the rms relative error "
        f"fell {shrink:.1f}-fold (1/√N predicts "
        f"{math.sqrt(last['particles'] / first['particles']):.1f})."
    )
    return {"exact": EXACT, "rows": rows}


if __name__ == "__main__":
    main()
