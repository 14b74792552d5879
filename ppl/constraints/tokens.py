"""The next token under a constraint and/or a predicate, as a proposal with exact weights.

`ctx.next_token(constraint=c, where=pred)` is the model's next-token distribution p restricted
to the allowed tokens T (those the mask of `c` keeps, and those for which `pred` holds):

    mu(t) = p(t) 1[t in T]    (unnormalised: the constraint conditions, it does not renormalise)

The choice's log probability is log p(t) (-inf outside T), as for `observe`. Drawing under
inference:

* mask only: t ~ q(t) = mu(t) / Z with Z = sum_{t in mask} p(t), computed exactly from the mask;
  the weight gains log Z = log p(t) - log q(t). The mask is the proposal.
* with a predicate: `ppl.constraints.predicate.draw` over the (masked) probabilities returns t
  with an unbiased weight W, E[W f(t)] = sum_t mu(t) f(t), checking the predicate only on the
  tokens it draws.

Either way the particle's expected weighted outcome is exactly that of the conditioned model, so
IS, SMC and MCMC target p(text | text in L) with no distortion. When no token is allowed (a dead
end), the weight becomes zero and the run goes on with the other particles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ppl.constraints import predicate as _predicate
from ppl.constraints.grammar import Constraint
from ppl.context import Context, _decode_complete, set_restricted_next_token
from ppl.draws import draw_rows, stack_rows
from ppl.models.base import Token
from ppl.next_token import NextToken

Predicate = Callable[[str], Any]


class ConstrainedNextToken(NextToken):
    """The next token of `context`, restricted by `constraint` and/or `where` (see the module).

    `where(text)` is called with the text the context would have after the token (for EOS, the
    text as it is) and must return a truth value.
    """

    __slots__ = ("constraint", "where")

    def __init__(
        self, context: Context, constraint: Constraint | None = None, where: Predicate | None = None
    ) -> None:
        super().__init__(context)
        if constraint is not None and not isinstance(constraint, Constraint):
            raise TypeError(
                "constraint must be a ppl.Grammar, ppl.Regex or ppl.JSONSchema, "
                f"got {type(constraint).__name__}"
            )
        if where is not None and not callable(where):
            raise TypeError(f"where must be a function of the text, got {type(where).__name__}")
        self.constraint = constraint
        self.where = where

    # -- scoring ---------------------------------------------------------------------------------

    def allows(self, value: Token | int) -> bool:
        """Is `value` an allowed next token?"""
        tid = int(value)
        ctx = self.context
        c = self.constraint
        if c is not None:
            if not c.states(ctx.lm).allows(ctx, tid):
                return False
            if _breaks_prefix(c, ctx, ctx.lm.token(tid)):
                return False
        return self.where is None or bool(self.where(_text_after(ctx, ctx.lm.token(tid))))

    def log_prob(self, value: Token | int) -> float:
        """log p(value) under the model if `value` is allowed, else -inf."""
        if not self.allows(value):
            return -math.inf
        return super().log_prob(value)

    def log_mass(self) -> float:
        """log of the model probability of the tokens the mask allows (0 without a constraint)."""
        if self.constraint is None:
            return 0.0
        row = self.context.logprobs().double()
        mask = self.constraint.states(self.context.lm).masks([self.context])[0]
        return float(torch.logsumexp(row.masked_fill(~mask, -math.inf), 0))

    def _matcher(self) -> Any:
        assert self.constraint is not None
        return self.constraint.states(self.context.lm).matcher(self.context)

    # -- drawing ---------------------------------------------------------------------------------

    @classmethod
    def _draw_batch(
        cls, dists: Sequence[NextToken], generator: torch.Generator
    ) -> list[tuple[Token, float, float]]:
        """One token per distribution: masks in one batched call per (constraint, model)."""
        full = stack_rows([d.context._logprobs for d in dists])
        probs = full.exp()
        allowed = _allowed(dists)  # type: ignore[arg-type]
        if allowed is not None:
            probs.mul_(allowed)
        # mask only: the token from the masked row, the weight its mass (the total kept)
        ids, mass = draw_rows(probs, generator)
        log_p = full.gather(1, ids.unsqueeze(1))[:, 0].tolist()
        log_mass = mass.log().tolist()
        out: list[tuple[Token, float, float]] = []
        for i, d in enumerate(dists):
            lm = d.context.lm
            t, lp, log_w = int(ids[i]), log_p[i], log_mass[i]
            where = d.where  # type: ignore[attr-defined]
            if where is not None and log_w > -math.inf:
                ctx = d.context
                row = full[i].double()
                if allowed is not None:
                    row = row.masked_fill(~allowed[i], -math.inf)
                drawn, log_w = _predicate.draw(
                    row,
                    lambda tid, ctx=ctx, where=where: bool(
                        where(_text_after(ctx, ctx.lm.token(tid)))
                    ),
                    generator,
                )
                if drawn is not None:
                    t, lp = drawn, float(full[i, drawn])
            c = d.constraint  # type: ignore[attr-defined]
            if c is not None and log_w > -math.inf and _breaks_prefix(c, d.context, lm.token(t)):
                # the text has broken a rule the mask leaves to the reference: no completion is
                # in the language, so the particle's weight is zero from here
                log_w = -math.inf
            if log_w == -math.inf:  # a dead end: no allowed token; the particle gets weight zero
                dead = next(iter(lm.eos_token_ids), 0)
                out.append((lm.token(dead), -math.inf, -math.inf))
            else:
                out.append((lm.token(t), lp, log_w))
        return out

    def sample(self, rng: np.random.Generator) -> Token:
        """A token from the restricted distribution, renormalised (direct runs: no weights)."""
        return self.draw(torch.Generator().manual_seed(int(rng.integers(2**63 - 1))))

    def draw(self, generator: torch.Generator) -> Token:
        """`NextToken.draw`; a dead end (no allowed token) raises, where the scheduler gives the
        particle weight zero."""
        self.context.logprobs()
        token, log_p, _ = self._draw_batch([self], generator)[0]
        if log_p == -math.inf:
            raise ValueError(f"no allowed token follows {self.context!r}: a dead end")
        return token

    def __repr__(self) -> str:
        parts = [repr(self.context)]
        if self.constraint is not None:
            parts.append(f"constraint={self.constraint!r}")
        if self.where is not None:
            parts.append(f"where={getattr(self.where, '__name__', 'predicate')}")
        return f"ConstrainedNextToken({', '.join(parts)})"


# what `ctx.next_token(constraint, where=...)` returns (`ppl.context` imports no constraint code)
set_restricted_next_token(ConstrainedNextToken)


def _breaks_prefix(constraint: Constraint, ctx: Context, token: Token) -> bool:
    """Does `token` close a value of the text that breaks `constraint` (`prefix_violation`)?
    Asked only after tokens that may close one."""
    if not constraint.checks_prefixes or token.is_eos:
        return False
    if not constraint.may_close(token.bytes.decode("utf-8", "ignore")):
        return False
    return constraint.prefix_violation(_text_after(ctx, token)) is not None


def _text_after(ctx: Context, token: Token) -> str:
    if token.is_eos:
        return ctx.text
    return _decode_complete(ctx.bytes + token.bytes)


def _allowed(dists: Sequence[ConstrainedNextToken]) -> torch.Tensor | None:
    """`[len(dists), V]` bool: the tokens each distribution's constraint allows (every token
    where it has none); None when no distribution has a constraint."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, d in enumerate(dists):
        if d.constraint is not None:
            groups.setdefault((id(d.constraint), id(d.context.lm)), []).append(i)
    allowed = None
    for members in groups.values():
        first = dists[members[0]]
        states = first.constraint.states(first.context.lm)  # type: ignore[union-attr]
        # one mask per distinct context (resampled particles share theirs)
        slot: dict[int, int] = {}
        contexts = []
        where = []
        for i in members:
            ctx = dists[i].context
            k = slot.get(id(ctx))
            if k is None:
                k = slot[id(ctx)] = len(contexts)
                contexts.append(ctx)
            where.append(k)
        masks = states.masks(contexts)
        rows = masks if len(contexts) == len(members) else masks[where]
        if len(members) == len(dists):  # the usual case: one constraint for all
            return rows
        if allowed is None:
            allowed = torch.ones((len(dists), rows.shape[1]), dtype=torch.bool)
        allowed[members] = rows
    return allowed
