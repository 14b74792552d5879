# %% [markdown]
# # Lesson 6: Latent variables beside tokens
#
# A program can draw ordinary random variables as well as tokens: a topic, a coin, a rate, a
# mean. Any NumPyro distribution works in `sample`. The target is still p(x) L(x) / Z, with x
# now holding the latent **and** the tokens, and the posterior of the latent alone is its
# marginal:
#
# $$p(z \mid y) = \frac{p(z) \sum_{\text{text}} p(\text{text} \mid z)\, L(\text{text})}{Z}.$$
#
# Part 1 hides a discrete latent (a topic) behind a toy language model and compares SMC's
# estimate of p(topic | evidence) with the exact one (`ppl.exact`). Part 2 runs `ppl.nuts`,
# NumPyro's No-U-Turn sampler, on a continuous model whose posterior is known in closed form.

# %%
from __future__ import annotations

import math

import numpy as np
import numpyro.distributions as nd

import ppl
from ppl import condition, observe, program, sample
from ppl.models import FunctionLM

# %% [markdown]
# ## Part 1: a topic chosen by a coin
#
# The topic is a prompt token: the model writes differently after `<calm>` than after
# `<wild>`. A wild text is rarer a priori (probability 0.2) but writes "b" far more often. We
# observe that the text has at least two "b"s ("2 b" below): which topic wrote it? The
# evidence arrives only when the text is finished, so SMC has nothing to resample on before
# the end; lesson 7 shows how a twist can help in such cases.

# %%
VOCAB = ["<s>", "<calm>", "<wild>", "a", "b", "c", "<eos>"]
TOPICS = ["<calm>", "<wild>"]  # index = the coin
NEXT = {  # topic -> last token -> P(a, b, c, EOS)
    "<calm>": {
        "start": [0.5, 0.1, 0.35, 0.05],
        "a": [0.4, 0.1, 0.3, 0.2],
        "b": [0.4, 0.1, 0.3, 0.2],
        "c": [0.3, 0.1, 0.3, 0.3],
    },
    "<wild>": {
        "start": [0.2, 0.5, 0.2, 0.1],
        "a": [0.2, 0.5, 0.1, 0.2],
        "b": [0.2, 0.4, 0.2, 0.2],
        "c": [0.2, 0.5, 0.1, 0.2],
    },
}
PRIOR_WILD = 0.2
MAX_TOKENS = 4


def next_token_probs(prefix: tuple[int, ...]) -> list[float]:
    topic, last = VOCAB[prefix[1]], VOCAB[prefix[-1]]  # prefix[0] is <s>
    row = NEXT[topic]["start" if last == topic else last]
    return [0.0, 0.0, 0.0, *row]


lm = FunctionLM(VOCAB, next_token_probs, eos="<eos>", bos="<s>")


def enough_bs(text: str) -> bool:
    return text.count("b") >= 2


@program
def which_topic(max_tokens: int = MAX_TOKENS):
    wild = sample("wild", nd.Bernoulli(PRIOR_WILD))  # a Python int, 0 or 1
    ctx = lm.context(TOPICS[wild])
    for _ in range(max_tokens):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        if tok.is_eos:
            break
    condition(enough_bs(ctx.text))
    return wild


# %% [markdown]
# ### Exactly
#
# Both the coin and the tokens have finitely many values, so `ppl.exact` (lesson 1) lists every
# execution: each value of the coin, then every text the model writes after that topic. Its
# `log_evidence` is log p(2 b), and since the program returns the coin (0 or 1), the posterior
# mean of the return value is p(wild | 2 b).


# %%
EXACT = ppl.exact(which_topic)
Z_TOPIC, P_WILD = math.exp(EXACT.log_evidence), EXACT.expectation()
print(f"p(wild) = {PRIOR_WILD} a priori, {P_WILD:.4f} after seeing two b's (Z = {Z_TOPIC:.4f})")

# %% [markdown]
# ### By SMC
#
# Each SMC run gives Ẑ_r and a self-normalised estimate p̂_r of p(wild | evidence). Their
# product Ẑ_r p̂_r is an unbiased estimate of the joint p(wild, evidence) = Z p(wild | evidence),
# so we average those over runs and divide by the average Ẑ_r: the runs pooled by their
# evidence, as if they were one big run.


# %%
def smc_topic(particles: int, repeats: int) -> dict[str, np.ndarray]:
    z, joint = [], []
    for r in range(repeats):
        post = ppl.smc(which_topic, particles=particles, seed=r)
        z_r = math.exp(post.log_evidence)
        z.append(z_r)
        joint.append(z_r * post.expectation())  # the mean of the 0/1 coin is p(wild)
    return {"z": np.array(z), "joint": np.array(joint)}


# %% [markdown]
# ## Part 2: NUTS on a normal-normal model
#
# An unknown mean μ ~ Normal(0, τ²) and observations y_i ~ Normal(μ, σ²). The posterior is
# normal again, with precision 1/τ² + n/σ² and mean (Σ y_i / σ²) / precision. A program whose
# choices are all continuous runs under `ppl.nuts` (a `Posterior` of equal-weight draws, with
# NumPyro's effective sample size in `diagnostics`).

# %%
DATA = np.array([1.2, 0.4, 2.1, 1.5, 0.9, 1.7])
PRIOR_SD, NOISE_SD = 1.0, 0.8


@program
def unknown_mean(data):
    mu = sample("mu", nd.Normal(0.0, PRIOR_SD))
    observe(nd.Normal(mu, NOISE_SD).expand([len(data)]), data)
    return mu


def exact_normal(data) -> tuple[float, float]:
    precision = 1 / PRIOR_SD**2 + len(data) / NOISE_SD**2
    return float(np.sum(data) / NOISE_SD**2 / precision), 1 / math.sqrt(precision)


# %%
def main(particles: int = 200, repeats: int = 20, samples: int = 1000, warmup: int = 500) -> dict:
    """SMC on the topic model against enumeration; NUTS on the normal model against the
    closed form. Prints both and the claim."""
    runs = smc_topic(particles, repeats)
    pooled = runs["joint"].mean() / runs["z"].mean()
    sd = (lambda x: x.std(ddof=1)) if repeats > 1 else (lambda x: math.nan)
    se_z = sd(runs["z"]) / math.sqrt(repeats)
    se_joint = sd(runs["joint"]) / math.sqrt(repeats)
    # the pooled ratio's SE by the delta method: the spread of joint - pooled * z, over mean z
    se_pooled = sd(runs["joint"] - pooled * runs["z"]) / math.sqrt(repeats) / runs["z"].mean()
    print(f"\nPart 1: {repeats} SMC runs of {particles} particles")
    print(f"{'':24}{'exact':>9}{'SMC':>9}{'± se':>8}")
    print(f"{'Z = p(2 b)':24}{Z_TOPIC:9.4f}{runs['z'].mean():9.4f}{se_z:8.4f}")
    print(f"{'p(wild, 2 b)':24}{Z_TOPIC * P_WILD:9.4f}{runs['joint'].mean():9.4f}{se_joint:8.4f}")
    print(f"{'p(wild | 2 b), pooled':24}{P_WILD:9.4f}{pooled:9.4f}{se_pooled:8.4f}")

    post = ppl.nuts(unknown_mean, DATA, samples=samples, warmup=warmup, seed=0)
    draws = np.array(post.values, dtype=float)
    mean, sd = exact_normal(DATA)
    ess = post.diagnostics["effective_sample_size"]["mu"]
    print(
        f"\nPart 2: NUTS, {samples} draws after {warmup} warm-up steps "
        f"(ESS {ess:.0f}, {post.diagnostics['divergences']} divergences)"
    )
    print(f"{'':16}{'exact':>9}{'NUTS':>9}{'± se':>8}")
    print(f"{'posterior mean':16}{mean:9.4f}{draws.mean():9.4f}{sd / math.sqrt(ess):8.4f}")
    print(f"{'posterior sd':16}{sd:9.4f}{draws.std(ddof=1):9.4f}{sd / math.sqrt(2 * ess):8.4f}")
    z = {
        "SMC's p(wild | two b's)": (pooled - P_WILD) / se_pooled,
        "NUTS's posterior mean": (draws.mean() - mean) / (sd / math.sqrt(ess)),
        "NUTS's posterior sd": (draws.std(ddof=1) - sd) / (sd / math.sqrt(2 * ess)),
    }
    numbers = (
        f"p(wild | two b's) {pooled:.3f} vs exact {P_WILD:.3f}; mean {draws.mean():.3f} vs "
        f"{mean:.3f}, sd {draws.std(ddof=1):.3f} vs {sd:.3f}"
    )
    if any(math.isnan(v) for v in z.values()):
        verdict = f"({numbers}); with one SMC run its Monte Carlo error cannot be judged"
    elif max(abs(v) for v in z.values()) < 3:
        largest = max(abs(v) for v in z.values())
        verdict = f"({numbers}), both within Monte Carlo error (largest |z| {largest:.1f})"
    else:
        far = max(z, key=lambda k: abs(z[k]))
        verdict = (
            f"({numbers}), but {far} is {abs(z[far]):.1f} standard errors off, more than "
            f"Monte Carlo error usually gives (|z| under 3)"
        )
    print(
        f"\nClaim: SMC estimates the posterior of a latent topic hidden behind tokens, and NUTS "
        f"the posterior of a continuous mean {verdict}."
    )
    return {
        "topic": {"z": Z_TOPIC, "p_wild": P_WILD, "runs": runs, "pooled": pooled},
        "normal": {"mean": mean, "sd": sd, "draws": draws, "ess": ess},
    }


if __name__ == "__main__":
    main()
