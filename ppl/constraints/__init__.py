"""Constraints on generated text: Lark grammars, regular expressions, JSON schemas, predicates.

>>> import ppl
>>> digits = ppl.Regex("[0-9]+")
>>> bool(digits.matches("2025")), bool(digits.matches("20x"))
(True, False)

Inside a program, `ctx.next_token(constraint=c)` draws the next token from the model restricted
to what the constraint allows, and `ctx.next_token(where=lambda text: ...)` restricts it by any
Python predicate on the text. Under inference both are exact: the restriction is a proposal and
the particle's weight gains the probability mass it kept (see `ppl.constraints.tokens`), so IS,
SMC and MCMC sample the model conditioned on the constraint instead of a locally renormalised
approximation. `generate(ctx, constraint=c)` produces a whole string.
"""

from ppl.constraints.generate import generate
from ppl.constraints.grammar import Constraint, ConstraintError, Grammar
from ppl.constraints.hf import logits_processor
from ppl.constraints.json_schema import JSONSchema
from ppl.constraints.reference import MaskLeakWarning, Verdict
from ppl.constraints.regex import Regex
from ppl.constraints.tokens import ConstrainedNextToken

__all__ = [
    "Constraint",
    "ConstraintError",
    "MaskLeakWarning",
    "Verdict",
    "Grammar",
    "Regex",
    "JSONSchema",
    "ConstrainedNextToken",
    "generate",
    "logits_processor",
]
