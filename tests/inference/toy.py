"""An enumerable toy language model and programs over it whose exact posteriors are known:
`no_double_a` (tokens, conditions and factors) and `rated_text` (a NumPyro Beta latent that
the tokens are observations of)."""

import math
from typing import NamedTuple

import numpyro.distributions as nd
from scipy import stats

from ppl import condition, factor, observe, program, sample, twist
from ppl.distributions import Bernoulli
from ppl.models import FunctionLM

VOCAB = ["<s>", "a", "b", "c", "<eos>"]
# next-token probabilities given the last token (the start of the sequence is "<s>")
TABLE = {
    "<s>": [0.0, 0.5, 0.3, 0.15, 0.05],
    "a": [0.0, 0.3, 0.3, 0.2, 0.2],
    "b": [0.0, 0.4, 0.1, 0.3, 0.2],
    "c": [0.0, 0.2, 0.4, 0.1, 0.3],
}
B_PENALTY = -0.7
MAX_LEN = 4

toy_lm = FunctionLM(VOCAB, lambda prefix: TABLE[VOCAB[prefix[-1]]], eos="<eos>", bos="<s>")


@program
def no_double_a(max_len=MAX_LEN):
    """Strings of at most `max_len` tokens without "aa"; each "b" costs weight exp(-0.7)."""
    ctx = toy_lm.context("")
    for _ in range(max_len):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        condition("aa" not in ctx.text)
        if tok.text == "b":
            factor(B_PENALTY)
        if tok.is_eos:
            break
    return ctx.text


def exact_posterior(max_len=MAX_LEN):
    """Exact normaliser Z and posterior {text: probability} of `no_double_a`, by enumeration."""
    mass = {}

    def walk(last, text, prob, log_w, n):
        if n == max_len:
            mass[text] = mass.get(text, 0.0) + prob * math.exp(log_w)
            return
        for tid, p in enumerate(TABLE[last]):
            if p == 0:
                continue
            tok = VOCAB[tid]
            if tok == "<eos>":
                mass[text] = mass.get(text, 0.0) + prob * p * math.exp(log_w)
                continue
            new = text + tok
            if "aa" in new:
                continue
            walk(tok, new, prob * p, log_w + (B_PENALTY if tok == "b" else 0.0), n + 1)

    walk("<s>", "", 1.0, 0.0, 0)
    z = sum(mass.values())
    return z, {text: m / z for text, m in mass.items()}


MIXED_LEN = 3


@program
def rated_text(twist_strength=0.0):
    """A rate from Beta(2, 2), then up to three tokens, each non-EOS token observed as a
    Bernoulli(rate) event "the token is a"; returns (text, rate). A non-zero `twist_strength`
    twists resampling towards texts with many "a" when the rate is high (target unchanged)."""
    rate = sample("rate", nd.Beta(2.0, 2.0))
    ctx = toy_lm.context("")
    for _ in range(MIXED_LEN):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        if tok.is_eos:
            break
        observe(Bernoulli(rate), tok.text == "a")
        if twist_strength:
            twist(twist_strength * (float(rate) - 0.5) * ctx.text.count("a"))
    return ctx.text, rate


def log_beta(a, b):
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


class MixedPosterior(NamedTuple):
    """The exact posterior of `rated_text`: Z, P(text), E[rate] and the law of the rate."""

    z: float
    strings: dict[str, float]
    mean_rate: float

    def rate_cdf(self, r):
        """P(rate <= r): given a text of n tokens with k "a", the rate is Beta(2 + k, 2 + n - k),
        so its marginal is that mixture over texts (each token is one character)."""
        return sum(
            p * stats.beta.cdf(r, 2 + s.count("a"), 2 + len(s) - s.count("a"))
            for s, p in self.strings.items()
        )


def exact_mixed() -> MixedPosterior:
    """By enumeration. Integrating the rate out, a text s of n tokens of which k are "a" has
    unnormalised mass P_LM(s) B(2 + k, 2 + n - k) / B(2, 2); given s, E[rate] = (2+k)/(4+n)."""
    mass, rate_mass = {}, 0.0

    def walk(last, text, prob, n):
        nonlocal rate_mass
        for tid, p in enumerate(TABLE[last]):
            if p == 0:
                continue
            tok = VOCAB[tid]
            new, m = (text, n) if tok == "<eos>" else (text + tok, n + 1)
            if tok != "<eos>" and m < MIXED_LEN:
                walk(tok, new, prob * p, m)
                continue
            k = new.count("a")
            w = prob * p * math.exp(log_beta(2 + k, 2 + m - k) - log_beta(2, 2))
            mass[new] = mass.get(new, 0.0) + w
            rate_mass += w * (2 + k) / (4 + m)

    walk("<s>", "", 1.0, 0)
    z = sum(mass.values())
    return MixedPosterior(z, {s: w / z for s, w in mass.items()}, rate_mass / z)


letters_lm = FunctionLM(["a", "b", "c", "<eos>"], lambda prefix: [1.0, 1.0, 1.0, 0.0], eos="<eos>")


@program
def letters(n, strength):
    """`n` letters; each "a" weighs exp(strength): ESS stays at N for 0, falls to 1 for 6 (the
    larger the strength, the lower the ESS)."""
    ctx = letters_lm.context("c")
    for _ in range(n):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        factor(strength * (tok.text == "a"))
    return ctx.text
