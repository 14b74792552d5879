# %% [markdown]
# # Lesson 5: Constraints are conditioning
#
# We often want text from a language model that obeys a rule: a date format, a grammar, a JSON
# schema. The rule is a set L of allowed strings, and what we want is the model's distribution
# **conditioned** on it:
#
# $$p(x \mid x \in L) = \frac{p(x)\, \mathbb 1[x \in L]}{p(L)}.$$
#
# Constrained decoders usually do something else: at every step they **mask** the tokens that
# cannot lead to a string of L and **renormalise** the rest. That is a different distribution.
# Masking is greedy: it only sees one step ahead, so once a path has started it is finished at
# any cost, however unlikely the model finds the only allowed continuation. Conditioning weighs
# each path by all of its probability.
#
# ppl uses the same mask, but as a **proposal**: the token is drawn from the masked,
# renormalised distribution q(t) = p(t) 1[t allowed] / M and the particle's weight is
# multiplied by M = Σ_{allowed t} p(t), the mass the mask kept. The product of the weight and
# q is then p restricted to L, so IS, SMC and MCMC target the conditional exactly. Here we
# compute all three distributions on a toy model: the exact conditional and the masked
# decoder's by enumeration (`ppl.exact`, lesson 1), ppl's by importance sampling.

# %%
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

import ppl
from ppl import condition, program, sample
from ppl.distributions import Categorical
from ppl.models import FunctionLM

# %% [markdown]
# ## A model and a regular language
#
# The model likes "a" and, after an "a", more "a"s; it rarely writes "b" after "a". The
# constraint asks for up to two letters from {a, c} followed by one "b": seven strings.

# %%
VOCAB = ["<s>", "a", "b", "c", "<eos>"]
NEXT = {  # P(next token | last token), in VOCAB order
    "<s>": [0.0, 0.6, 0.1, 0.25, 0.05],
    "a": [0.0, 0.6, 0.05, 0.2, 0.15],
    "b": [0.0, 0.2, 0.2, 0.2, 0.4],
    "c": [0.0, 0.3, 0.3, 0.2, 0.2],
}
MAX_TOKENS = 4
lm = FunctionLM(VOCAB, lambda prefix: NEXT[VOCAB[prefix[-1]]], eos="<eos>", bos="<s>")
PATTERN = ppl.Regex(r"[ac]{0,2}b")


# %% [markdown]
# ## The exact conditional
#
# The definition, as a program: let the model write freely within `MAX_TOKENS` tokens, then
# condition on a finished text in L (`PATTERN.matches`). `ppl.exact` lists every text the model
# can write and renormalises over those in L; its `log_evidence` is log p(L).


# %%
@program
def conditioned(max_tokens: int = MAX_TOKENS):
    ctx = lm.context("")
    for _ in range(max_tokens):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        if tok.is_eos:
            break
    condition(tok.is_eos and PATTERN.matches(ctx.text))
    return ctx.text


# %% [markdown]
# ## Mask-and-renormalise decoding
#
# A decoder with token masks, in a few lines: at each step keep the tokens the constraint
# allows (`ctx.next_token(PATTERN).allows(t)`: the same mask ppl uses) and sample from the
# model's probabilities among them, renormalised. Written as a program, each token is an
# ordinary `Categorical` choice: a direct run decodes once, and since the program has no
# evidence, `ppl.exact` gives its output distribution exactly (each text weighs the product of
# the renormalised probabilities of its tokens).


# %%
def masked_probs(ctx) -> dict[int, float]:
    """The masked decoder's next-token distribution after `ctx`."""
    allowed = ctx.next_token(PATTERN)
    kept = {t: p for t, p in enumerate(ctx.logprobs().exp().tolist()) if allowed.allows(t)}
    total = sum(kept.values())
    return {t: p / total for t, p in kept.items()}


@program
def masked_decoder(max_tokens: int = MAX_TOKENS):
    ctx = lm.context("")
    for _ in range(max_tokens):
        probs = masked_probs(ctx)
        tok = sample(Categorical(list(probs), list(probs.values())))
        ctx = ctx + tok
        if lm.token(tok).is_eos:
            break
    return ctx.text


with ppl.handlers.seed(rng_seed=0):  # a direct run draws from the decoder
    print("masked decoding:", [masked_decoder() for _ in range(8)])


# %% [markdown]
# ## ppl: the constraint as a condition
#
# `ctx.next_token(PATTERN)` is the model's next-token distribution restricted to the tokens the
# mask allows. Under inference it is drawn from the mask and the weight gains the kept mass.
# `constrained` below is therefore the same target as `conditioned` above: `ppl.exact` gives
# both the same posterior, and `main` prints how close.
#
# An importance-sampling run estimates p(text | L) by its weighted frequencies; with
# normalised weights w̄_i the standard error of the estimate p̂ of one text's probability is
# (delta method)
#
# $$\operatorname{se}(\hat p) \approx \sqrt{\textstyle\sum_i \bar w_i^2\,
#   (\mathbb 1[x_i = \text{text}] - \hat p)^2}.$$


# %%
@program
def constrained(max_tokens: int = MAX_TOKENS):
    ctx = lm.context("")
    for _ in range(max_tokens):
        tok = sample(ctx.next_token(PATTERN))
        ctx = ctx + tok
        if tok.is_eos:
            break
    return ctx.text


def ppl_estimate(particles: int, seed: int) -> tuple[ppl.Posterior, dict, dict]:
    """An IS run and, for each text it found, the estimated probability and its SE."""
    post = ppl.importance(constrained, particles=particles, seed=seed)
    w = post.weights
    estimate, se = {}, {}
    for text, p in post.distribution().items():
        hit = np.array([v == text for v in post.values], dtype=float)
        estimate[text] = p
        se[text] = float(np.sqrt(np.sum(w**2 * (hit - p) ** 2)))
    return post, estimate, se


def total_variation(p: dict[str, float], q: dict[str, float]) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


# %% [markdown]
# ## The comparison, and a plot
#
# The plot needs matplotlib, an optional extra (`make test` installs it, `make demo` does not);
# without it the lesson prints its table and claim and says how to add the picture.


# %%
PLOT_NOTE = (
    "(no plot: it needs matplotlib, which `make demo` does not install; in a clone of ppl, "
    "pip install -e '.[plot]' adds it)"
)


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_distributions(texts, exact, masked, estimate, se, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(texts))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(x - 0.27, [exact[t] for t in texts], 0.27, label="exact p(text | L)", color="#4c72b0")
    ax.bar(
        x, [masked.get(t, 0) for t in texts], 0.27, label="mask and renormalise", color="#c44e52"
    )
    ax.bar(
        x + 0.27,
        [estimate.get(t, 0) for t in texts],
        0.27,
        yerr=[2 * se.get(t, 0) for t in texts],
        label="ppl importance (±2 se)",
        color="#55a868",
    )
    ax.set_xticks(x, [repr(t) for t in texts])
    ax.set_ylabel("probability")
    ax.set_title(f"Texts matching /{PATTERN.source}/", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(particles: int = 4000, seed: int = 0, plot: str | None = None) -> dict:
    """Exact vs masked vs ppl for every text of L; saves a plot to `plot` when given."""
    reference = ppl.exact(conditioned)
    log_z, exact = reference.log_evidence, reference.distribution()
    masked = ppl.exact(masked_decoder).distribution()
    same_target = total_variation(ppl.exact(constrained).distribution(), exact)
    post, estimate, se = ppl_estimate(particles, seed)
    texts = sorted(exact, key=exact.get, reverse=True)
    print(f"\nL = /{PATTERN.source}/: {len(texts)} texts; p(L) = {math.exp(log_z):.4f}")
    print(f"{'text':8}{'exact':>8}{'masked':>8}{'ppl':>8}{'± se':>8}{'z':>6}")
    z_scores = {}
    for t in texts:
        gap = estimate.get(t, 0.0) - exact[t]
        z_scores[t] = gap / se[t] if se.get(t, 0.0) > 0 else math.copysign(math.inf, gap)
        print(
            f"{t!r:8}{exact[t]:8.4f}{masked.get(t, 0.0):8.4f}{estimate.get(t, 0.0):8.4f}"
            f"{se.get(t, math.nan):8.4f}{z_scores[t]:6.1f}"
        )
    tv_masked, tv_ppl = total_variation(masked, exact), total_variation(estimate, exact)
    print(
        f"\nTV distance to the exact conditional: masked {tv_masked:.3f}, ppl {tv_ppl:.3f} "
        f"({particles} particles, ESS {post.final_ess:.0f})"
    )
    print(f"log p(L): exact {log_z:.4f}, ppl's log evidence {post.log_evidence:.4f}")
    print(f"ppl.exact of `constrained` vs `conditioned`: TV {same_target:.1e}")
    worst = max(texts, key=lambda t: abs(masked.get(t, 0.0) - exact[t]))
    far = max(texts, key=lambda t: abs(z_scores[t]))
    missing = [t for t in texts if t not in estimate]
    if missing:
        plural = "s" * (particles != 1)
        verdict = (
            f"ppl's {particles} particle{plural} found no {', '.join(map(repr, missing))}, so "
            f"this run is too small to judge its error on every text (TV {tv_ppl:.3f}; try "
            f"more particles)"
        )
    elif abs(z_scores[far]) < 3:
        verdict = (
            f"ppl's constrained sampling matches the exact conditional within Monte Carlo error "
            f"(largest |z| {abs(z_scores[far]):.1f}, under 3; TV {tv_ppl:.3f})"
        )
    else:
        verdict = (
            f"ppl's estimate of {far!r} is {abs(z_scores[far]):.1f} standard errors from the "
            f"exact value, more than Monte Carlo error usually gives (|z| under 3), though with "
            f"an ESS of {post.final_ess:.0f} the standard error itself is rough (TV {tv_ppl:.3f})"
        )
    target = (
        f"the constrained program's target is the conditional (exact TV {same_target:.0e})"
        if same_target < 1e-9
        else f"the constrained program's target differs from the conditional (TV {same_target:.2g})"
    )
    print(
        f"\nClaim: masking and renormalising distorts the distribution ({worst!r}: "
        f"{masked[worst]:.3f} instead of {exact[worst]:.3f}; TV {tv_masked:.2f}); {target}; "
        f"{verdict}."
    )
    if plot is not None and not have_matplotlib():
        print(PLOT_NOTE)
    elif plot is not None:
        plot_distributions(texts, exact, masked, estimate, se, plot)
        print(f"plot saved to {plot}")
    return {
        "log_evidence": log_z,
        "exact": exact,
        "masked": masked,
        "estimate": estimate,
        "se": se,
        "ppl_log_evidence": post.log_evidence,
        "tv_masked": tv_masked,
        "tv_ppl": tv_ppl,
    }


if __name__ == "__main__":
    main(plot="build/05_constraints.png")  # build/ is ignored by git
