"""An enumerable toy language model and a program over it whose exact posterior is known."""

import math

from ppl import condition, factor, program, sample
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
