# %% [markdown]
# # Lesson 7: Better proposals and twists
#
# IS and SMC draw each token from the model itself and fix the mismatch with the target
# afterwards, through the weights. Two tools make that mismatch smaller without changing the
# target.
#
# **A proposal.** `sample(p, proposal=q)` draws the token from q instead of p and multiplies
# the weight by p(t) / q(t). Any q that is positive wherever the target is keeps the estimates
# unbiased (the importance-sampling identity Σ q(t) · p(t)/q(t) · f(t) = Σ p(t) f(t)). The
# closer q is to the target's own next-token law, the more even the weights, the higher the
# ESS, for the same number of particles. For a language model, q can be the same model with
# another prompt, a smaller model with the same vocabulary, or, as here, a model that knows
# something about the constraint.
#
# **A twist.** `ppl.twist(log_psi)` multiplies a particle's weight by ψ_t *for the resampling
# decision at step t only*: the driver divides it out at the next step, so the weight
# increment of step t is G_t ψ_t / ψ_{t-1}, with ψ = 1 at the end. Twists change which
# particles survive resampling, never the target, the final weights' meaning or the
# unbiasedness of Ẑ. A twist is a guess of how well a prefix will do in the end: a heuristic,
# a critic, a lookahead. It helps most when the evidence arrives late.
#
# Both are shown on the task of lesson 3 (texts of 12 letters with no letter twice in a row),
# whose exact answer we know.

# %%
from __future__ import annotations

import math
import warnings

import numpy as np

import ppl
from ppl import condition, program, sample, twist
from ppl.models import FunctionLM

# %% [markdown]
# ## The model of lesson 3

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


LOG_Z = ppl.exact(no_repeats).log_evidence  # by enumeration, as in lesson 3
print(f"exact log Z = {LOG_Z:.4f}")

# %% [markdown]
# ## A proposal that knows the rule
#
# `guide` is the same model with repeats and EOS made 20 times less likely. It is not the
# target's conditional (that would need the mass of every future), but it is close, and it is
# positive wherever the model is. The program keeps a context of the guide beside the model's
# and feeds both the same tokens; the guide's probabilities are computed in the same batched
# step as the model's.


# %%
def guide_probs(prefix: tuple[int, ...]) -> list[float]:
    last = VOCAB[prefix[-1]]
    probs = next_token_probs(prefix)
    return [p / 20 if v in (last, "<eos>") else p for v, p in zip(VOCAB, probs)]


guide = FunctionLM(VOCAB, guide_probs, eos="<eos>", bos="<s>")


@program
def guided(max_tokens: int = MAX_TOKENS):
    ctx, hint = lm.context(""), guide.context("")
    for _ in range(max_tokens):
        tok = sample(ctx.next_token(), proposal=hint.next_token())  # weight *= p(tok) / q(tok)
        condition(allowed(ctx.text, tok))
        ctx, hint = ctx + tok, hint + tok
    return ctx.text


# %% [markdown]
# ## A twist when the evidence comes late
#
# Now suppose the rule is checked only once the text is finished, as a verifier would:
# `late_check` conditions after the loop. The target is the same as `no_repeats`' (same Z),
# but until the end every particle has weight 1, so SMC has nothing to resample on and is no
# better than IS. A twist that penalises a prefix that already has a repeat (or has stopped)
# lets SMC drop the doomed particles early, while the final weights and Ẑ keep their meaning.


# %%
def has_repeat(text: str) -> bool:
    return any(x == y for x, y in zip(text, text[1:]))


@program
def late_check(max_tokens: int = MAX_TOKENS, strength: float = 0.0):
    ctx = lm.context("")
    for _ in range(max_tokens):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        if strength:
            twist(-strength * (has_repeat(ctx.text) or tok.is_eos))
        if tok.is_eos:
            break
    condition(not tok.is_eos and not has_repeat(ctx.text))
    return ctx.text


# %% [markdown]
# ## Equal particles, many seeds
#
# "ESS/step" is the ESS averaged over the steps, "final ESS" the ESS of the final weights.
# Under a late check the ESS per step looks healthy, since every weight is 1 until the
# verifier speaks at the last step, and then collapses. The guide's final ESS is close to
# SMC's, but its weights are even at every step, so its Ẑ varies far less.


# %%
def run_many(method, program, args: tuple, particles: int, repeats: int) -> dict[str, float]:
    """Mean ESS over steps, mean final ESS, and the spread of log Ẑ over `repeats` seeds."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ppl.InferenceWarning)  # runs that lose every particle
        runs = [method(program, *args, particles=particles, seed=r) for r in range(repeats)]
    lz = np.array([p.log_evidence for p in runs])
    finite = np.isfinite(lz)
    ratio = np.exp(lz - LOG_Z)
    return {
        "lost": int((~finite).sum()),
        "mean_ess": float(np.mean([np.mean(p.ess) for p in runs])),
        "final_ess": float(np.mean([p.final_ess for p in runs])),
        "mean_ratio": float(ratio.mean()),
        "ratio_se": float(ratio.std(ddof=1) / math.sqrt(repeats)) if repeats > 1 else math.nan,
        "relative_variance": float(ratio.var(ddof=1)),
        "log_variance": float(lz[finite].var(ddof=1)) if finite.sum() > 1 else math.nan,
    }


def print_table(rows: dict[str, dict[str, float]]) -> None:
    print(
        f"{'':24}{'lost':>5}{'ESS/step':>9}{'final ESS':>10}{'mean Ẑ/Z':>10}{'± se':>7}"
        f"{'var log Ẑ':>10}"
    )
    for name, r in rows.items():
        print(
            f"{name:24}{r['lost']:5d}{r['mean_ess']:9.1f}{r['final_ess']:10.1f}"
            f"{r['mean_ratio']:10.3f}{r['ratio_se']:7.3f}{r['log_variance']:10.4f}"
        )


def moved(what: str, before: float, after: float) -> str:
    """ "raised WHAT from 1.2 to 3.4", "lowered ...", or "left WHAT about where it was"."""
    if after > 1.05 * before:
        return f"raised {what} from {before:.1f} to {after:.1f}"
    if after < before / 1.05:
        return f"lowered {what} from {before:.1f} to {after:.1f}"
    return f"left {what} about where it was ({before:.1f} -> {after:.1f})"


def claim(proposals: dict, twists: dict, n: int) -> str:
    """The lesson's claim, in words that follow the numbers of this run."""
    plain, good = proposals["IS, model as proposal"], proposals["IS, guide as proposal"]
    smc = proposals["SMC, model as proposal"]
    late, twisted = twists["SMC, late check"], twists["SMC, late check + twist"]
    if good["lost"] or smc["lost"]:
        spread = (
            f"runs that lost every particle (guide {good['lost']}, SMC {smc['lost']}) leave "
            f"the variance of log Ẑ infinite"
        )
    else:
        ratio = smc["log_variance"] / good["log_variance"] if good["log_variance"] else math.inf
        word = "smaller" if ratio >= 1 else "larger"
        spread = (
            f"its variance of log Ẑ, {good['log_variance']:.4f}, is "
            f"{max(ratio, 1 / ratio):.1f} times {word} than SMC's with the model as proposal "
            f"({smc['log_variance']:.4f})"
        )
    guide_ess = moved("IS's final ESS", plain["final_ess"], good["final_ess"])
    twist_ess = moved("SMC's final ESS", late["final_ess"], twisted["final_ess"])
    text = (
        f"Claim: at the same {n} particles the guide {guide_ess}, and {spread}; with a late "
        f"check, the twist {twist_ess} (runs lost: {late['lost']} -> {twisted['lost']})."
    )
    rows = {**proposals, **twists}
    z = {k: abs(r["mean_ratio"] - 1) / r["ratio_se"] for k, r in rows.items() if r["ratio_se"] > 0}
    if not z:
        return text + " With one run each, whether the target changed cannot be judged."
    far = max(z, key=z.get)
    if z[far] < 3:
        return text + (
            f" Neither changes the target: every mean Ẑ/Z is within {z[far]:.1f} standard "
            f"errors of 1."
        )
    return text + (
        f" The mean Ẑ/Z of {far!r} is {z[far]:.1f} standard errors from 1, more than Monte "
        f"Carlo error usually gives; neither tool changes the target, but over few runs a rare "
        f"heavy Ẑ makes the standard error of IS-like estimates unreliable."
    )


def main(particles: int = 100, repeats: int = 30, strength: float = 5.0) -> dict:
    """Compare the proposals, then the twist, at `particles` particles over `repeats` seeds."""
    n = particles
    proposals = {
        "IS, model as proposal": run_many(ppl.importance, no_repeats, (), n, repeats),
        "SMC, model as proposal": run_many(ppl.smc, no_repeats, (), n, repeats),
        "IS, guide as proposal": run_many(ppl.importance, guided, (), n, repeats),
    }
    twists = {
        "SMC, late check": run_many(ppl.smc, late_check, (MAX_TOKENS, 0.0), n, repeats),
        "SMC, late check + twist": run_many(
            ppl.smc, late_check, (MAX_TOKENS, strength), n, repeats
        ),
    }
    exact_is_variance = (math.exp(-LOG_Z) - 1) / n
    print(
        f"\nexact log Z = {LOG_Z:.4f}; N = {n} particles, {repeats} seeds; 'lost': runs in "
        f"which every particle died (var log Ẑ is over the others)"
    )
    print("\nProposals")
    print_table(proposals)
    print(f"\nTwists (strength {strength}; IS's exact var Ẑ/Z here is {exact_is_variance:.3f})")
    print_table(twists)
    print("\n" + claim(proposals, twists, n))
    return {
        "log_evidence": LOG_Z,
        "exact_is_relative_variance": exact_is_variance,
        "proposals": proposals,
        "twists": twists,
    }


if __name__ == "__main__":
    main()
