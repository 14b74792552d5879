"""`generate`: a whole constrained string as one call inside (or as) a program."""

from __future__ import annotations

from ppl.compiler import program
from ppl.primitives import condition, sample


@program
def generate(context, constraint=None, where=None, max_tokens=256, keep_unfinished=False):
    """Add tokens to `context` one by one until EOS, under `constraint` and/or `where`.

    Returns `ctx.text` of the final context: all the text after the prompt of `context`, that is
    any text `context` already held after its prompt followed by the generated tokens' text (the
    EOS token adds none). For `context = lm.context(prompt)` that is just the generated text.

    A sub-program: `text = generate(lm.context(prompt), constraint=g, max_tokens=64)` inside a
    program, or `ppl.smc(generate, lm.context(prompt), constraint=g, particles=16)` on its own.
    Each token is a choice, so SMC reweights and resamples between tokens, and the masked draws
    carry their exact weights (see `ppl.constraints`).

    A particle that reaches `max_tokens` tokens without EOS is dropped (weight zero: the target
    is the model conditioned on finishing within `max_tokens`), unless `keep_unfinished=True`,
    which returns its unfinished text (the target then also holds every unfinished prefix of
    length `max_tokens`, weighted by its probability).

    The context and `max_tokens` new tokens must fit in the model's context window
    (`lm.max_length`): if they may not, `ContextWindowError` is raised before any token is
    generated. `max_tokens=None` generates until EOS or until the window is full (which then
    counts as reaching `max_tokens`). `max_tokens=0` generates nothing: the text is returned as
    it is with `keep_unfinished=True`, and the particle is dropped without it.
    """
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0
    ):
        raise ValueError(
            f"generate: max_tokens must be a whole number >= 0 (or None: up to the context "
            f"window), got {max_tokens!r}"
        )
    lm = context.lm
    if max_tokens is None:
        if lm.max_length is None:
            raise ValueError(
                "generate(max_tokens=None) generates until the context window is full, and the "
                "window of this model is unknown (lm.max_length is None): give max_tokens"
            )
        max_tokens = max(lm.max_length - len(context.prompt_tokens) - len(context), 0)
    lm.check_length(len(context.prompt_tokens), len(context), planned=max_tokens)
    ctx = context
    for _ in range(max_tokens):
        tok = sample(ctx.next_token(constraint, where=where))
        ctx = ctx + tok
        if tok.is_eos:
            return ctx.text
    # a run in which no particle finishes reports this line, comment included
    condition(keep_unfinished)  # max_tokens reached without EOS; keep_unfinished=True keeps it
    return ctx.text
