"""An enumerable toy LM and exact conditional distributions of constrained generation over it."""

import math

import ppl
from ppl.models import FunctionLM

VOCAB = ["<s>", "a", "b", "(", ")", "ab", "<eos>"]
# next-token probabilities given the last token; "ab" spells what "a" then "b" spells
TABLE = {
    "<s>": [0.0, 0.2, 0.1, 0.4, 0.05, 0.15, 0.1],
    "a": [0.0, 0.2, 0.3, 0.1, 0.2, 0.1, 0.1],
    "b": [0.0, 0.1, 0.1, 0.3, 0.3, 0.1, 0.1],
    "(": [0.0, 0.2, 0.1, 0.5, 0.05, 0.1, 0.05],
    ")": [0.0, 0.1, 0.1, 0.1, 0.4, 0.1, 0.2],
    "ab": [0.0, 0.1, 0.1, 0.2, 0.3, 0.1, 0.2],
}
MAX_TOKENS = 6

toy_lm = FunctionLM(VOCAB, lambda prefix: TABLE[VOCAB[prefix[-1]]], eos="<eos>", bos="<s>")

# balanced parentheses around a word of a's and b's
PARENS = ppl.Grammar('start: "(" start ")" | WORD\nWORD: /[ab]+/')


def sequences(max_tokens=MAX_TOKENS):
    """Every token sequence the model can produce within `max_tokens` draws that ends in EOS,
    with its probability: (tuple of token strings, probability)."""

    def walk(last, toks, prob):
        if len(toks) == max_tokens:
            return
        for tid, p in enumerate(TABLE[last]):
            if p == 0:
                continue
            tok = VOCAB[tid]
            if tok == "<eos>":
                yield toks, prob * p
            else:
                yield from walk(tok, (*toks, tok), prob * p)

    yield from walk("<s>", (), 1.0)


def exact(accept, max_tokens=MAX_TOKENS):
    """Normaliser Z and distribution {text: probability} of the finished texts `accept` keeps."""
    mass = {}
    for toks, prob in sequences(max_tokens):
        text = "".join(toks)
        if accept(toks):
            mass[text] = mass.get(text, 0.0) + prob
    z = math.fsum(mass.values())
    return z, {text: m / z for text, m in mass.items()}


def prefix_ok(toks, predicate):
    """Every prefix text (each token's, EOS included) satisfies `predicate`."""
    text = ""
    for t in toks:
        text += t
        if not predicate(text):
            return False
    return True
