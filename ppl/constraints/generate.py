"""`generate`: a whole constrained string as one call inside (or as) a program."""

from __future__ import annotations

from ppl.compiler import program
from ppl.primitives import condition, sample


@program
def generate(context, constraint=None, where=None, max_tokens=256, keep_unfinished=False):
    """Text added to `context` token by token until EOS, under `constraint` and/or `where`.

    A sub-program: `text = generate(lm.context(prompt), constraint=g, max_tokens=64)` inside a
    program, or `ppl.smc(generate, lm.context(prompt), constraint=g, particles=16)` on its own.
    Each token is a choice, so SMC reweights and resamples between tokens, and the masked draws
    carry their exact weights (see `ppl.constraints`).

    A particle that reaches `max_tokens` tokens without EOS is dropped (weight zero: the target
    is the model conditioned on finishing within `max_tokens`), unless `keep_unfinished=True`,
    which returns its unfinished text (the target then also holds every unfinished prefix of
    length `max_tokens`, weighted by its probability).
    """
    ctx = context
    for _ in range(max_tokens):
        tok = sample(ctx.next_token(constraint, where=where))
        ctx = ctx + tok
        if tok.is_eos:
            return ctx.text
    # a run in which no particle finishes reports this line, comment included
    condition(keep_unfinished)  # max_tokens reached without EOS; keep_unfinished=True keeps it
    return ctx.text
