# %% [markdown]
# # Lesson 3: Why SMC resamples
#
# Importance sampling (lesson 2) runs every particle to the end before it looks at the
# weights. When a condition kills most paths, almost every particle dies along the way and the
# few survivors carry the whole estimate: the ESS collapses and $\hat Z$ swings from run to run.
# With 0/1 weights the relative variance of $\hat Z$ is exactly (1/Z - 1)/N, which grows like
# 1/Z: exponentially in the length of the text when every step kills a fixed fraction.
#
# **Sequential Monte Carlo** (SMC) checks the weights after every token. When the ESS falls
# below half the particles it **resamples**: it draws N new particles from the current ones
# with probabilities proportional to their weights (dead particles are never drawn, heavy ones
# are copied) and resets all weights to their mean. The evidence estimate becomes a product
# of the mean weights at the resampling steps,
#
# $$\hat Z = \prod_{t \in \text{resampled}} \bar w_t \;\times\; \bar w_T,$$
#
# still unbiased, and its relative variance now grows roughly *linearly* in the number of
# steps instead of exponentially. Below, the same task runs under both algorithms at the same
# number of particles, many times, and the spread of log $\hat Z$ is compared with the exact
# log Z.

# %%
from __future__ import annotations

import math
import textwrap
import warnings
from functools import cache

import numpy as np

import ppl
from ppl import condition, program, sample
from ppl.models import FunctionLM

# %% [markdown]
# ## A model that likes to repeat itself
#
# After a letter, the model repeats it with probability 0.5 ("a"), 0.3 ("b") or 0.1 ("c"), and
# stops (EOS) with probability 0.01. We ask for texts of exactly `MAX_TOKENS` letters with no
# letter twice in a row: each step after the first kills about a third of the paths (32% on
# average), and 98.6% of all paths die somewhere. The cell after the exact evidence computes
# both figures.

# %%
VOCAB = ["<s>", "a", "b", "c", "<eos>"]
REPEAT = {"a": 0.5, "b": 0.3, "c": 0.1}
STOP = 0.01
MAX_TOKENS = 12


def next_token_probs(prefix: tuple[int, ...]) -> list[float]:
    last = VOCAB[prefix[-1]]
    if last == "<s>":
        return [0.0, 1 / 3, 1 / 3, 1 / 3, 0.0]
    other = (1 - STOP - REPEAT[last]) / 2
    return [0.0] + [REPEAT[last] if v == last else other for v in "abc"] + [STOP]


lm = FunctionLM(VOCAB, next_token_probs, eos="<eos>", bos="<s>")


def allowed(text: str, tok) -> bool:
    """May `tok` follow `text`? Not EOS (the text must be full length), not a repeat."""
    return not tok.is_eos and not text.endswith(tok.text)


@program
def no_repeats(max_tokens: int = MAX_TOKENS):
    ctx = lm.context("")
    for _ in range(max_tokens):
        tok = sample(ctx.next_token())
        condition(allowed(ctx.text, tok))
        ctx = ctx + tok
    return ctx.text


# %% [markdown]
# ## The exact evidence
#
# Z = P(a text of `MAX_TOKENS` letters with no repeat), by `ppl.exact` (lesson 1). It forks
# every execution once per token the model can write, and `condition` ends a fork as soon as
# it fails, so it walks only the 3 × 2^(T-1) surviving texts and their dead ends, not every
# text the model can write (`post.stats` counts the executions it forked and those that
# finished).


# %%
@cache  # `main` asks again for the same length: enumerate once
def exact_posterior(max_tokens: int = MAX_TOKENS) -> ppl.Posterior:
    return ppl.exact(no_repeats, max_tokens)


def death_rates(log_z: float, max_tokens: int = MAX_TOKENS) -> tuple[float, float]:
    """The fraction of the prior's paths that die, and the mean fraction killed per step after
    the first (the first letter cannot repeat anything): 1 - Z and 1 - Z^(1/(T-1))."""
    z = math.exp(log_z)
    return 1 - z, 1 - z ** (1 / max(max_tokens - 1, 1))


EXACT = exact_posterior()
LOG_Z = EXACT.log_evidence
DEAD, DEAD_PER_STEP = death_rates(LOG_Z)
print(
    f"ppl.exact forked {EXACT.stats['executions']} executions; {EXACT.stats['finished']} "
    f"texts survive (3 × 2^{MAX_TOKENS - 1} = {3 * 2 ** (MAX_TOKENS - 1)})"
)
print(
    f"exact log Z = {LOG_Z:.4f}: Z = {math.exp(LOG_Z):.4f} of the prior's paths survive, "
    f"{DEAD:.1%} die; each step after the first kills {DEAD_PER_STEP:.0%} on average"
)

# %% [markdown]
# ## One run of each, step by step
#
# `post.ess` is the ESS after each step's reweighting (before any resampling); step t is the
# state after t tokens. `post.resampled` lists the steps at which SMC resampled. The IS column
# falls and never recovers; the SMC column falls below N/2, resamples, and starts again near
# N.

# %%
is_run = ppl.importance(no_repeats, particles=200, seed=0)
smc_run = ppl.smc(no_repeats, particles=200, seed=0)
print(f"{'step':>4}{'IS ESS':>9}{'SMC ESS':>9}")
for t, (a, b) in enumerate(zip(is_run.ess, smc_run.ess)):
    mark = "  resampled" if t in smc_run.resampled else ""
    print(f"{t:4d}{a:9.1f}{b:9.1f}{mark}")


# %% [markdown]
# ## Many runs: the spread of log Ẑ
#
# The same task, `repeats` seeds for each algorithm at equal N. Both estimates are unbiased for
# Z (their mean Ẑ/Z is near 1, within the noise of `repeats` runs), but their spreads differ.
# For IS we also know the exact variance of Ẑ/Z, (1/Z - 1)/N, and print it beside the
# measured one; the claim compares SMC's measured variance with it, which is fair at any
# number of runs. "Runs lost" counts the runs in which every particle died: their Ẑ is 0 and
# log Ẑ = -inf, so as soon as one run is lost the variance of log Ẑ is infinite (the table
# says `inf`), and only the variance of Ẑ/Z can be compared. With few particles IS loses most
# of its runs (try `main(particles=20, repeats=20)`).


# %%
def compare(particles: int = 200, repeats: int = 50, max_tokens: int = MAX_TOKENS) -> dict:
    """Run IS and SMC `repeats` times each; return their log-evidence estimates and final ESS."""
    out = {}
    with warnings.catch_warnings():
        # an IS run whose particles all die warns; here that is part of the lesson
        warnings.simplefilter("ignore", ppl.InferenceWarning)
        for name, method in (("importance", ppl.importance), ("smc", ppl.smc)):
            runs = [
                method(no_repeats, max_tokens, particles=particles, seed=r) for r in range(repeats)
            ]
            out[name] = {
                "log_evidence": np.array([p.log_evidence for p in runs]),
                "final_ess": np.array([p.final_ess for p in runs]),
            }
    return out


def times(a: float, b: float) -> str:
    """How `a` compares with `b`, in words: "4.2 times smaller than", "about equal to", ..."""
    if a == b:
        return "equal to"
    if b == 0 or a == 0:
        return "larger than" if a > b else "smaller than"
    ratio = max(a, b) / min(a, b)
    if ratio < 1.05:
        return "about equal to"
    return f"{ratio:.1f} times {'smaller' if a < b else 'larger'} than"


def log_variance(lz: np.ndarray) -> float:
    """The variance of log Ẑ over runs: infinite once a run lost every particle."""
    if not np.all(np.isfinite(lz)):
        return math.inf
    return float(lz.var(ddof=1)) if len(lz) > 1 else math.nan


def claim(summary: dict, particles: int, repeats: int) -> str:
    """The lesson's claim, in words that follow the numbers of this run."""
    is_, smc = summary["importance"], summary["smc"]
    dead, _ = death_rates(summary["log_evidence"], summary["max_tokens"])
    head = f"on a task that kills {dead:.1%} of the prior's paths, with N = {particles} particles"
    exact_var = summary["exact_is_relative_variance"]
    if repeats < 2:
        parts = [f"{head}, one run of each cannot measure a variance (repeats must be 2 or more)"]
    else:
        parts = [
            f"{head}, SMC's variance of Ẑ/Z ({smc['relative_variance']:.4f} over {repeats} runs) "
            f"is {times(smc['relative_variance'], exact_var)} IS's exact variance "
            f"({exact_var:.4f})"
        ]
    lost_is, lost_smc = is_["lost"], smc["lost"]
    if lost_is and lost_smc:
        parts.append(
            f"both lost every particle in some runs (IS in {lost_is}, SMC in {lost_smc} of "
            f"{repeats}), so neither variance of log Ẑ is finite"
        )
    elif lost_is or lost_smc:
        (loser, lost), (keeper, kept) = (
            (("IS", is_), ("SMC", smc)) if lost_is else (("SMC", smc), ("IS", is_))
        )
        parts.append(
            f"{loser} lost every particle in {lost['lost']} of {repeats} runs (Ẑ = 0, "
            f"log Ẑ = -inf), so its variance of log Ẑ is infinite, against "
            f"{kept['log_variance']:.4f} for {keeper}, which lost none"
        )
        others = repeats - lost["lost"]
        if others >= max(repeats / 2, 2):  # most runs kept a particle: compare those too
            parts[-1] += (
                f" (over the {others} runs in which {loser} kept a particle its variance is "
                f"{lost['log_variance_kept']:.4f}, "
                f"{times(lost['log_variance_kept'], kept['log_variance'])} {keeper}'s)"
            )
    elif repeats >= 2:
        parts.append(
            f"SMC's variance of log Ẑ ({smc['log_variance']:.4f}) is "
            f"{times(smc['log_variance'], is_['log_variance'])} IS's "
            f"({is_['log_variance']:.4f}); neither lost a run"
        )
    parts.append(
        f"SMC's mean final ESS is {smc['final_ess']:.1f} of {particles} against IS's "
        f"{is_['final_ess']:.1f}"
    )
    return "Claim: " + "; ".join(parts) + "."


def wrap(text: str, width: int = 100) -> str:
    """`text` in lines of at most `width`, never breaking "N = 20" apart."""
    return textwrap.fill(text.replace(" = ", "\u00a0=\u00a0"), width).replace("\u00a0", " ")


def main(particles: int = 200, repeats: int = 50, max_tokens: int = MAX_TOKENS) -> dict:
    """Compare IS and SMC over `repeats` seeds; print a table and the claim."""
    log_z = exact_posterior(max_tokens).log_evidence
    runs = compare(particles, repeats, max_tokens)
    exact_is_var = (math.exp(-log_z) - 1) / particles
    print(f"\nexact log Z = {log_z:.4f}; N = {particles} particles, {repeats} seeds each\n")
    print(
        f"{'':12}{'runs lost':>10}{'mean Ẑ/Z':>10}{'var Ẑ/Z':>9}"
        f"{'var log Ẑ':>11}{'mean final ESS':>16}"
    )
    summary = {
        "log_evidence": log_z,
        "max_tokens": max_tokens,
        "exact_is_relative_variance": exact_is_var,
    }
    for name, r in runs.items():
        lz = r["log_evidence"]
        ratio = np.exp(lz - log_z)
        summary[name] = {
            "lost": int((~np.isfinite(lz)).sum()),
            "mean_ratio": float(ratio.mean()),
            "relative_variance": float(ratio.var(ddof=1)) if repeats > 1 else math.nan,
            "log_variance": log_variance(lz),  # inf once a run is lost
            "log_variance_kept": log_variance(lz[np.isfinite(lz)]),  # over the other runs
            "final_ess": float(r["final_ess"].mean()),
            "log_evidence_runs": lz,
        }
        s = summary[name]
        print(
            f"{name:12}{s['lost']:10d}{s['mean_ratio']:10.3f}{s['relative_variance']:9.4f}"
            f"{s['log_variance']:11.4f}{s['final_ess']:16.1f}"
        )
    print(f"{'IS, exact':12}{'':10}{1.0:10.3f}{exact_is_var:9.4f}")
    text = claim(summary, particles, repeats)
    print("\n" + wrap(text))
    summary["claim"] = text
    return summary


if __name__ == "__main__":
    main()
