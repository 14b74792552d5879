"""Language-model contexts: a prompt and the tokens after it, as an immutable value.

A `Context` is an immutable value: a prompt plus the tokens appended after it. `ctx + token`
makes a new context and leaves `ctx` as it was, so particles can share contexts freely when they
fork. Behind the value, a context remembers the backend state (KV cache) of its longest fed
prefix; the backend extends that state by the pending tokens the first time the context's
next-token distribution is needed, so no token is ever fed twice.

The distributions a context gives (`ctx.next_token()`, `ctx.continuation()`) live in
`ppl.next_token`, and the batched draws in `ppl.draws`, both below this module. Contexts sit
above the models and below the constraints, and the imports run that way:

* `lm.context(prompt)` makes a root context with `Context`'s constructor, which this module
  registers with `ppl.models.base` (`set_context_factory`) when it is imported;
* `ctx.next_token(constraint, where=...)` returns the restricted distribution that
  `ppl.constraints.tokens` registers here (`set_restricted_next_token`) when it is imported.

`import ppl` imports both modules, so the two are in place before any user code runs.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ppl import next_token as _next_token
from ppl.models import base as _models
from ppl.models.base import Token
from ppl.next_token import Continuation, NextToken

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
    # None, or (for a context a continuation feeds) `next_token._WANTED` until fed, then the
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
_next_token.set_context_type(Context)

#: What `ctx.next_token(constraint, where=...)` returns when either is given: a function
#: `(context, constraint, where) -> NextToken`, registered by `ppl.constraints.tokens` (see the
#: module docstring).
_restricted_next_token: Callable[[Context, Any, Any], NextToken] | None = None


def set_restricted_next_token(factory: Callable[[Context, Any, Any], NextToken]) -> None:
    """Make `factory(context, constraint, where)` what `ctx.next_token(constraint, where=...)`
    returns (`ppl.constraints.tokens` registers its `ConstrainedNextToken`)."""
    global _restricted_next_token
    _restricted_next_token = factory
