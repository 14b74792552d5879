"""ppl: a probabilistic programming language embedded in Python for steering language models.

import ppl
from ppl import program, sample, condition

lm = ppl.models.load()

@program
def story(prompt):
    ctx = lm.context(prompt)
    for _ in range(40):
        tok = sample(ctx.next_token())
        ctx = ctx + tok
        condition(...)
        if tok.is_eos:
            break
    return ctx.text

posterior = ppl.smc(story, "Once upon a time", particles=16, seed=0)
"""

from ppl import distributions, models
from ppl.compiler import CompileError, Program, program
from ppl.context import Context, NextToken, Token
from ppl.inference import InferenceWarning, Posterior, importance, smc
from ppl.primitives import condition, factor, observe, sample

__version__ = "0.1.0"

__all__ = [
    "program",
    "Program",
    "CompileError",
    "sample",
    "observe",
    "factor",
    "condition",
    "smc",
    "importance",
    "Posterior",
    "InferenceWarning",
    "Context",
    "Token",
    "NextToken",
    "distributions",
    "models",
]
