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

from ppl import constraints, distributions, handlers, models
from ppl._version import __version__ as __version__
from ppl.compiler import CompileError, Program, program
from ppl.constraints import (
    ConstraintError,
    Grammar,
    JSONSchema,
    MaskLeakWarning,
    Regex,
    generate,
)
from ppl.context import Context
from ppl.inference import (
    InferenceWarning,
    MHKernel,
    NotEnumerable,
    Posterior,
    Proposal,
    exact,
    importance,
    mh,
    pgibbs,
    pimh,
    smc,
    smc_steer,
)
from ppl.inference.nuts import nuts
from ppl.models.base import Token
from ppl.next_token import NextToken
from ppl.primitives import condition, factor, observe, sample, twist
from ppl.trace import Choice, Trace
from ppl.workloads import imap
from ppl.workloads import map as map  # ppl.map, kept out of `from ppl import *`

# `ppl.map` is not in `__all__`: `from ppl import *` must not shadow the builtin `map`
__all__ = [
    "program",
    "Program",
    "CompileError",
    "sample",
    "observe",
    "factor",
    "condition",
    "smc",
    "smc_steer",
    "mh",
    "pimh",
    "pgibbs",
    "MHKernel",
    "Proposal",
    "twist",
    "importance",
    "exact",
    "NotEnumerable",
    "nuts",
    "imap",
    "Trace",
    "Choice",
    "handlers",
    "Posterior",
    "InferenceWarning",
    "Context",
    "Token",
    "NextToken",
    "distributions",
    "models",
    "constraints",
    "Grammar",
    "Regex",
    "JSONSchema",
    "ConstraintError",
    "MaskLeakWarning",
    "generate",
]
