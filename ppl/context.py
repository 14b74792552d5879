"""Language-model contexts, tokens and next-token distributions.

A `Context` is an immutable value: a prompt plus the tokens appended after it. `ctx + token`
makes a new context and leaves `ctx` as it was, so particles can share contexts freely when they
fork. Behind the value, a context remembers the backend state (KV cache) of its longest fed
prefix; the backend extends that state by the pending tokens the first time the context's
next-token distribution is needed, so no token is ever fed twice.

Contexts sit above the models and below the constraints, and the imports run that way:

* `lm.context(prompt)` makes a root context with `Context`'s constructor, which this module
  registers with `ppl.models.base` (`set_context_factory`) when it is imported;
* `ctx.next_token(constraint, where=...)` returns the restricted distribution that
  `ppl.constraints.tokens` registers here (`set_restricted_next_token`) when it is imported.

`import ppl` imports both modules, so the two are in place before any user code runs.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ppl.models import base as _models
from ppl.models.base import Token as Token  # its home: a vocabulary entry of a model

if TYPE_CHECKING:
    from ppl.models.base import LanguageModel


class _Chain:
    """A persistent list of token ids (newest first), shared by every context extending it."""

    __slots__ = ("prev", "ids", "length")

    def __init__(self, prev: _Chain | None, ids: tuple[int, ...]) -> None:
        self.prev = prev
        self.ids = ids
        self.length = len(ids) + (prev.length if prev is not None else 0)

    def to_list(self) -> list[int]:
        parts = []
        node: _Chain | None = self
        while node is not None:
            parts.append(node.ids)
            node = node.prev
        return [t for part in reversed(parts) for t in part]


def _decode_complete(data: bytes) -> str:
    """UTF-8 text of `data`, holding back a trailing incomplete multi-byte character."""
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=False)


class Context:
    """An immutable language-model context: a prompt and the tokens generated after it.

    * `ctx + token` (a `Token`, a token id, or a string, which is encoded) is a new context.
    * `ctx.text` and `ctx.tokens` hold what was added after the prompt; `ctx.prompt` and
      `ctx.prompt_tokens` the prompt. An EOS token is in `tokens` but adds no text.
    * `ctx.next_token()` is the model's distribution over the next token, to `sample` from.
    """

    __slots__ = (
        "_lm",
        "_prompt",
        "_prompt_ids",
        "_chain",
        "_bytes",
        "_text",
        "_base",
        "_pending",
        "_logprobs",
        "_scores",
        "__weakref__",
    )

    _lm: LanguageModel
    _prompt: str
    _prompt_ids: tuple[int, ...]
    _chain: _Chain | None
    _bytes: bytes
    _text: str | None
    _base: Any  # backend state of the fed prefix, None while nothing is fed
    _pending: tuple[int, ...]  # ids after `_base` not yet fed
    _logprobs: torch.Tensor | None  # next-token log-probabilities once fed
    # None, or (for a context a continuation feeds) `_WANTED` until fed, then the
    # log-probability of each pending token after the first, given the ones before it
    _scores: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("contexts are made by lm.context(prompt)")

    @classmethod
    def _root(cls, lm: LanguageModel, prompt: str, ids: tuple[int, ...]) -> Context:
        ctx = object.__new__(cls)
        ctx._lm = lm
        ctx._prompt = prompt
        ctx._prompt_ids = ids
        ctx._chain = None
        ctx._bytes = b""
        ctx._text = ""
        ctx._base = None
        ctx._pending = ids
        ctx._logprobs = None
        ctx._scores = None
        return ctx

    def _set_fed(self, state: Any, logprobs: torch.Tensor, scores: torch.Tensor | None = None):
        self._base = state
        self._pending = ()
        self._logprobs = logprobs
        if self._scores is not None:
            self._scores = scores if scores is not None else torch.empty(0)

    # -- the value -------------------------------------------------------------------------------

    def __add__(self, other: Token | int | str) -> Context:
        lm = self._lm
        if isinstance(other, (int, np.integer)) and not isinstance(other, bool):
            other = lm.token(int(other))
        if isinstance(other, Token):
            ids: tuple[int, ...] = (other.id,)
            added = b"" if other.is_eos else other.bytes  # EOS ends the text, adds none
        elif isinstance(other, str):
            ids = tuple(lm.encode(other, add_special_tokens=False))
            added = b"".join(lm.token_bytes[i] for i in ids)
        else:
            raise TypeError(
                "can only add a Token, a token id or a str to a Context, "
                f"not {type(other).__name__}"
            )
        return self._with(ids, added)

    def _with(self, ids: tuple[int, ...], added: bytes) -> Context:
        """This context followed by the token `ids`, whose text is `added`."""
        lm = self._lm
        new = object.__new__(Context)
        new._lm = lm
        new._prompt = self._prompt
        new._prompt_ids = self._prompt_ids
        new._chain = _Chain(self._chain, ids)
        new._bytes = self._bytes + added
        new._text = None
        new._base = self._base
        new._pending = self._pending + ids
        new._logprobs = None
        new._scores = None
        return new

    @property
    def lm(self) -> LanguageModel:
        return self._lm

    @property
    def text(self) -> str:
        """Text added after the prompt, decoded from the bytes of all its tokens together."""
        if self._text is None:
            self._text = _decode_complete(self._bytes)
        return self._text

    @property
    def bytes(self) -> bytes:
        return self._bytes

    @property
    def tokens(self) -> list[int]:
        """Ids of the tokens added after the prompt."""
        return self._chain.to_list() if self._chain is not None else []

    @property
    def prompt(self) -> str:
        return self._prompt

    @property
    def prompt_tokens(self) -> list[int]:
        return list(self._prompt_ids)

    def __len__(self) -> int:
        """Number of tokens added after the prompt."""
        return self._chain.length if self._chain is not None else 0

    def next_token(self, constraint: Any = None, *, where: Any = None) -> NextToken:
        """The model's distribution over the token that follows this context.

        With `constraint` (a `ppl.Grammar`, `ppl.Regex` or `ppl.JSONSchema`) and/or `where` (a
        predicate on the text after the token), the distribution is restricted to the allowed
        tokens, exactly: see `ppl.constraints`.
        """
        if constraint is None and where is None:
            return NextToken(self)
        if _restricted_next_token is None:
            raise RuntimeError(
                "no restricted next-token distribution is registered: import ppl "
                "(ppl.constraints.tokens registers it)"
            )
        return _restricted_next_token(self, constraint, where)

    def continuation(self, *, eos: bool = False) -> Continuation:
        """The text that comes next after this context, as something to `observe`.

        `observe(ctx.continuation(), " Yes")` adds log p(the next tokens are those of " Yes" |
        ctx): the string's own tokenization (`lm.encode(text, add_special_tokens=False)`),
        followed by EOS when `eos=True`. Under inference all of its tokens are fed in the
        step's one batched forward pass. The context itself is unchanged.
        """
        return Continuation(self, eos)

    def logprobs(self) -> torch.Tensor:
        """Next-token log-probabilities (computes them now if they are not known yet)."""
        if self._logprobs is None:
            self._lm.compute_logprobs([self])
        assert self._logprobs is not None
        return self._logprobs

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Context):
            return NotImplemented
        return (
            self._lm is other._lm
            and self._prompt_ids == other._prompt_ids
            and self.tokens == other.tokens
        )

    def __hash__(self) -> int:
        return hash((id(self._lm), self._prompt_ids, tuple(self.tokens)))

    def __deepcopy__(self, memo: dict) -> Context:
        return self  # immutable: forked particles share it, and with it the KV cache

    def __repr__(self) -> str:
        shown = self.text if len(self.text) <= 60 else "..." + self.text[-57:]
        return f"Context(prompt={self._prompt[-30:]!r}, text={shown!r})"


_models.set_context_factory(Context._root)

#: What `ctx.next_token(constraint, where=...)` returns when either is given: a function
#: `(context, constraint, where) -> NextToken`, registered by `ppl.constraints.tokens` (see the
#: module docstring).
_restricted_next_token: Callable[[Context, Any, Any], NextToken] | None = None


def set_restricted_next_token(factory: Callable[[Context, Any, Any], NextToken]) -> None:
    """Make `factory(context, constraint, where)` what `ctx.next_token(constraint, where=...)`
    returns (`ppl.constraints.tokens` registers its `ConstrainedNextToken`)."""
    global _restricted_next_token
    _restricted_next_token = factory


def stack_rows(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """`torch.stack(rows)` for next-token rows, without the copy where it can be avoided.

    The rows of one batched model call are views of one `[n, V]` tensor. When `rows` are all
    of them, in order, that tensor (or a view of its memory) is the answer as it is; when they
    are some of them (a context repeated, some left out), one `index_select` gathers them.
    Other rows are stacked. Callers must not write into the result.

    Rows are recognised by their memory, not by `Tensor._base`: views of a tensor made in
    inference mode (as models make their outputs) have no `_base`.
    """
    first = rows[0]
    base = first._base
    if (
        base is not None
        and len(rows) == len(base)
        and base.dim() == 2
        and base.shape[1:] == first.shape
    ):
        if all(r._base is base for r in rows) and base.is_contiguous():
            width = base.stride(0)
            if [r.storage_offset() for r in rows] == [
                base.storage_offset() + i * width for i in range(len(base))
            ]:
                return base
    if first.dim() != 1 or first.stride(0) != 1:
        return torch.stack(list(rows))
    size = first.shape[0]
    memory = first.untyped_storage().data_ptr()
    offsets = []
    for r in rows:
        if (
            r.dim() != 1
            or r.shape[0] != size
            or r.stride(0) != 1
            or r.dtype != first.dtype
            or r.untyped_storage().data_ptr() != memory
        ):
            return torch.stack(list(rows))
        offsets.append(r.storage_offset())
    low = min(offsets)
    index = [(o - low) // size for o in offsets]
    if any(o != low + i * size for o, i in zip(offsets, index, strict=True)):
        return torch.stack(list(rows))
    # the rows are those of one [span, size] block of memory, in some order
    span = max(index) + 1
    whole = first.as_strided((span, size), (size, 1), low)
    if index == list(range(span)):
        return whole
    return whole.index_select(0, torch.tensor(index))


#: tokens per block of the two-level draw of `draw_rows`
DRAW_BLOCK = 256


def draw_rows(probs: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One index per row of `probs` (`[n, V]`, non-negative, unnormalised), drawn in proportion
    to the row, and the rows' totals (float64).

    Inverse-CDF sampling in two levels: a block of `DRAW_BLOCK` indices is drawn from the
    blocks' sums, then an index from the float64 running sum within that block. At each level a
    value v = u * total (u uniform on [0, 1), v kept below the total) selects the interval
    [c_{i-1}, c_i) it falls in, of width equal to the weight of block or index i, so neither a
    block nor an index of zero weight is ever drawn, and the chance of index i is its weight
    over the row's total up to the rounding of a block's sum in the rows' dtype (a relative
    error of about 1e-7 in float32, the precision the weights themselves were given in). A
    row that sums to zero gets an arbitrary index; callers check the total.

    A float64 running sum over whole vocabulary-sized rows took 4-25 ms for 64 rows of 49,152
    (much of it making and freeing the float64 temporary); this takes about 1 ms.
    `torch.multinomial` was slower still.
    """
    probs = probs.contiguous()
    n, vocab = probs.shape
    size = DRAW_BLOCK
    full = vocab // size  # whole blocks; the tail, if any, is one more
    # the blocks' sums in the rows' own precision: no vocabulary-sized temporary is made
    sums = probs.as_strided((n, full, size), (vocab, size, 1)).sum(-1)
    if vocab % size:
        sums = torch.cat([sums, probs[:, full * size :].sum(1, keepdim=True)], 1)
    cdf = sums.double().cumsum(1)
    total = cdf[:, -1:]
    u = torch.rand(n, 1, dtype=torch.float64, generator=generator)
    v = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    block = torch.searchsorted(cdf, v, right=True).clamp_(max=cdf.shape[1] - 1)  # [n, 1]
    before = torch.where(block > 0, cdf.gather(1, (block - 1).clamp(min=0)), 0.0)
    ids = block * size + torch.arange(size)  # [n, size]: the block's indices
    inner = torch.where(ids < vocab, probs.gather(1, ids.clamp(max=vocab - 1)), 0.0)
    inner = inner.cumsum(1, dtype=torch.float64)
    last = inner[:, -1:]  # the block's sum again, rounded another way: v stays below it
    rest = torch.minimum(v - before, torch.nextafter(last, torch.zeros_like(last)))
    j = torch.searchsorted(inner, rest, right=True).clamp_(max=size - 1)
    return (block * size + j)[:, 0].clamp_(max=vocab - 1), total[:, 0]


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
        if not isinstance(context, Context):
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
