"""The distributions a context gives: over its next token, and over the text that follows it.

* `NextToken` (`ctx.next_token()`): the model's distribution over the token after a context.
  Sampling it is where particles meet: the scheduler gathers the `NextToken` choices of every
  particle at a step and makes one batched model call (`_contexts`), then draws all their
  tokens at once (`_draw_batch`, with `ppl.draws`). Token distributions of other kinds subclass
  it and override those two: `TokenProposal` here, `ppl.constraints.ConstrainedNextToken`.
* `TokenProposal` (`sample(ctx.next_token(), proposal=other.next_token())`): the target's
  token drawn from another context's distribution, the weight gaining log p - log q.
* `Continuation` (`ctx.continuation()`): the text that follows a context, to `observe`; bound
  to one text it is a `ScoredText`, which says what to feed and how to score it.

This module sits below `ppl.context`, which imports it to make these distributions (and
re-exports their names): it reads contexts only through their methods and fields, and imports
none of `ppl.context`. `ppl.context` registers its `Context` class here (`set_context_type`)
when it is imported, for `Continuation` to check what it is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ppl.draws import draw_rows, stack_rows
from ppl.models.base import Token

if TYPE_CHECKING:
    from ppl.context import Context

#: `ppl.context.Context`, registered by `ppl.context` when it is imported (see the docstring)
_context_type: type | None = None


def set_context_type(cls: type) -> None:
    """Make `cls` the class a `Continuation` follows (`ppl.context` registers `Context`)."""
    global _context_type
    _context_type = cls


def _token_id(lm: Any, value: Any) -> int | None:
    """The id of `value` if it is a token of `lm` (a `Token` with the bytes `lm` gives its id,
    or an int id in the vocabulary, a NumPy integer or 0-d integer array too); else None."""
    if isinstance(value, Token):
        token_id = value.id
        if 0 <= token_id < lm.vocab_size and lm.token_bytes[token_id] == value.bytes:
            return token_id
        return None
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        token_id = int(value)
    elif hasattr(value, "__array__"):  # a 0-d integer array or tensor
        try:
            a = np.asarray(value)
        except Exception:
            return None
        if a.ndim != 0 or a.dtype.kind not in "iu":
            return None
        token_id = int(a)
    else:
        return None
    return token_id if 0 <= token_id < lm.vocab_size else None


class NextToken:
    """The distribution of the token following `context` under its language model.

    Sampling it inside a program is where particles meet: the scheduler gathers the
    `NextToken` choices of all particles at a step and makes one batched model call.
    """

    __slots__ = ("context",)

    def __init__(self, context: Context) -> None:
        self.context = context

    def log_prob(self, value: Token | int) -> float:
        """log p(value), -inf for a value that is not a token of this model (`support_error`)."""
        token_id = _token_id(self.context.lm, value)
        if token_id is None:
            return -math.inf
        return float(self.context.logprobs()[token_id])

    def support_error(self, value: Any) -> str | None:
        """None for a token of this model: a `Token` it made, or an int id in its vocabulary;
        else what a token value is (`observe` raises with it)."""
        lm = self.context.lm
        if _token_id(lm, value) is not None:
            return None
        last = lm.vocab_size - 1
        if isinstance(value, Token):
            if 0 <= value.id <= last:
                return (
                    f"{value!r} is not a token of this model ({lm!r}), whose token "
                    f"{value.id} is {lm.token(value.id)!r}; observe a Token of the context's own "
                    "model, or its int id"
                )
            return (
                f"{value!r} is not a token of this model ({lm!r}): its id {value.id} is outside "
                f"the vocabulary (0..{last})"
            )
        what = f"a value is a Token of this model ({lm!r}) or its int id in 0..{last}"
        if isinstance(value, str):
            return (
                f"{what}, not text; to observe text use observe(ctx.continuation(), {value!r}) "
                "(the probability that the text comes next, over as many tokens as it takes)"
            )
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return f"{what}; {int(value)} is outside the vocabulary"
        return what

    # -- the scheduler's protocol: token distributions of other kinds (proposals, constraints)
    # -- subclass NextToken and override these two

    def _contexts(self) -> tuple[Context, ...]:
        """The contexts whose next-token log-probabilities a draw needs.

        The scheduler computes them for all particles of a step, one batched call per model,
        before it calls `_draw_batch`.
        """
        return (self.context,)

    @classmethod
    def _draw_batch(
        cls, dists: Sequence[NextToken], generator: torch.Generator
    ) -> list[tuple[Token, float, float]]:
        """One token for each distribution in `dists` (all of class `cls`, contexts computed).

        Returns, per distribution, `(token, log p(token), log weight increment)`: the increment
        is log p - log q when the token was drawn from a proposal q instead of p.
        """
        rows = stack_rows([d.context._logprobs for d in dists])
        ids, _ = draw_rows(rows.exp(), generator)
        log_p = rows.gather(1, ids.unsqueeze(1))[:, 0].tolist()
        return [
            (d.context.lm.token(i), lp, 0.0)
            for d, i, lp in zip(dists, ids.tolist(), log_p, strict=True)
        ]

    def sample(self, rng: np.random.Generator) -> Token:
        probs = self.context.logprobs().double().exp().numpy()
        token_id = int(rng.choice(len(probs), p=probs / probs.sum()))
        return self.context.lm.token(token_id)

    def draw(self, generator: torch.Generator) -> Token:
        """A token drawn with `generator` exactly as the scheduler draws the token of a particle
        alone in its step (`_draw_batch` of this one distribution).

        A direct run under `ppl.handlers.seed` draws its tokens with it, from the torch
        generator of its seed, so it makes the choices of `importance(..., particles=1)`.
        """
        for ctx in self._contexts():
            ctx.logprobs()
        return self._draw_batch([self], generator)[0][0]

    def __deepcopy__(self, memo: dict) -> NextToken:
        return self

    def __repr__(self) -> str:
        return f"NextToken({self.context!r})"


class TokenProposal(NextToken):
    """The next token of `context`, drawn from the next-token distribution of `proposal`.

    Made by `sample(ctx.next_token(), proposal=other.next_token())`. The target is unchanged: the
    choice's log probability is log p(token) under `context`, and the run's weight gains
    log p(token) - log q(token), q being `proposal`'s distribution. `proposal` may be another
    prompt or another model with the same vocabulary; where q is zero and p is not, the estimate
    is biased, so q should cover p.
    """

    __slots__ = ("proposal",)

    def __init__(self, context: Context, proposal: Context) -> None:
        super().__init__(context)
        if proposal.lm.vocab_size != context.lm.vocab_size:
            raise ValueError(
                f"a token proposal needs the target's vocabulary: {proposal.lm!r} has "
                f"{proposal.lm.vocab_size} tokens, {context.lm!r} has {context.lm.vocab_size}"
            )
        self.proposal = proposal

    def _contexts(self) -> tuple[Context, ...]:
        return (self.context, self.proposal)

    @classmethod
    def _draw_batch(
        cls, dists: Sequence[NextToken], generator: torch.Generator
    ) -> list[tuple[Token, float, float]]:
        target = stack_rows([d.context._logprobs for d in dists]).double()
        q = stack_rows([d.proposal._logprobs for d in dists]).double()  # type: ignore[attr-defined]
        ids, _ = draw_rows(q.exp(), generator)
        rows = torch.arange(len(dists))
        log_p = target[rows, ids].tolist()
        log_q = q[rows, ids].tolist()
        return [
            (d.context.lm.token(i), lp, lp - lq if lp > -float("inf") else lp)
            for d, i, lp, lq in zip(dists, ids.tolist(), log_p, log_q, strict=True)
        ]

    def sample(self, rng: np.random.Generator) -> Token:
        probs = self.proposal.logprobs().double().exp().numpy()
        token_id = int(rng.choice(len(probs), p=probs / probs.sum()))
        return self.context.lm.token(token_id)

    def log_weight(self, value: Token | int) -> float:
        """log p(value) - log q(value)."""
        log_p = self.log_prob(value)
        if log_p == -float("inf"):
            return log_p
        return log_p - float(self.proposal.logprobs()[int(value)])

    def __repr__(self) -> str:
        return f"TokenProposal({self.context!r}, proposal={self.proposal!r})"


SAMPLE_CONTINUATION = (
    "a continuation is observed, not sampled: observe(ctx.continuation(), text) scores a given "
    "text; to sample a whole text use ppl.generate(ctx, ...) or sample ctx.next_token()"
)

_WANTED = torch.empty(0)  # `Context._scores` of a context whose fed tokens are to be scored


class Continuation:
    """The text that follows `context`: a distribution over strings, to observe.

    log p(text) = sum_k log p(t_k | context, t_1 .. t_{k-1}) over the tokens t_1 .. t_n of
    `text` (plus log p(EOS | context, text) with `eos`, summed over the model's EOS ids). One
    model call computes it: the context extended by t_1 .. t_{n-1} (or .. t_n with `eos`) is fed
    as one row whose forward pass scores every position. Sampling whole texts is
    `ppl.generate`'s job, not this one's.
    """

    __slots__ = ("context", "eos")

    def __init__(self, context: Context, eos: bool = False) -> None:
        if _context_type is not None and not isinstance(context, _context_type):
            raise TypeError(f"a continuation follows a Context, not {type(context).__name__}")
        self.context = context
        self.eos = bool(eos)

    def observing(self, text: str) -> ScoredText:
        """This continuation bound to the text it observes: what to feed, and how to score it."""
        return ScoredText(self, text)

    def log_prob(self, text: str) -> float:
        """log p(text follows the context) (computes what it needs now).

        The context itself is fed first, once, so scoring many texts after one prompt feeds the
        prompt once (under inference the step's batched call does this instead).
        """
        self.context.logprobs()
        scored = self.observing(text)
        self.context.lm.compute_logprobs(scored._contexts())
        return scored.log_prob(text)

    def sample(self, rng: Any = None) -> str:
        raise TypeError(SAMPLE_CONTINUATION)

    def __deepcopy__(self, memo: dict) -> Continuation:
        return self

    def __repr__(self) -> str:
        return f"Continuation({self.context!r}{', eos=True' if self.eos else ''})"


class ScoredText:
    """A `Continuation` bound to one text: the contexts to feed and the log-probability."""

    __slots__ = ("text", "ids", "eos", "context", "target", "offset")

    def __init__(self, continuation: Continuation, text: str) -> None:
        if not isinstance(text, str):
            raise TypeError(
                f"observe(ctx.continuation(), text) takes the text as a str, got "
                f"{type(text).__name__}"
            )
        ctx = continuation.context
        self.text = text
        self.eos = continuation.eos
        self.ids = tuple(ctx.lm.encode(text, add_special_tokens=False))
        self.context = ctx
        fed = self.ids if self.eos else self.ids[:-1]
        # the row that scores the text: the context's own pending tokens, then `fed`
        eos_ids = ctx.lm.eos_token_ids
        added = b"".join(ctx.lm.token_bytes[i] for i in fed if i not in eos_ids)
        self.target = ctx._with(tuple(fed), added) if fed else ctx
        self.offset = len(ctx._pending)  # the text's first token sits after these in the row
        if fed:
            self.target._scores = _WANTED

    def _contexts(self) -> tuple[Context, ...]:
        if self.target is self.context or self.offset > 0:
            return (self.target,)
        return (self.context, self.target)  # the first token's distribution is the context's

    def log_prob(self, value: Any = None) -> float:
        ids, target = self.ids, self.target
        if target is self.context:  # nothing to feed: the context's own next-token row
            if self.eos:  # the empty text, then EOS
                return _log_eos(target)
            return float(target._logprobs[ids[0]]) if ids else 0.0
        scores = target._scores
        total = 0.0
        fed = len(ids) if self.eos else len(ids) - 1
        for k in range(fed):  # token k is predicted at row position offset + k - 1
            position = self.offset + k - 1
            if position < 0:
                total += float(self.context._logprobs[ids[0]])
            else:
                total += float(scores[position])
        if self.eos:
            total += _log_eos(target)
        else:
            total += float(target._logprobs[ids[-1]])
        return total

    def __repr__(self) -> str:
        return f"ScoredText({self.text!r}, after {self.context!r})"


def _log_eos(ctx: Context) -> float:
    """log p(the sequence ends next | ctx): the mass of all EOS ids."""
    eos = sorted(ctx.lm.eos_token_ids)
    return float(torch.logsumexp(ctx._logprobs[eos], 0)) if eos else -math.inf
