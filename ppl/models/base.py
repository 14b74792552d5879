"""The `LanguageModel` protocol every backend implements.

A backend is small on purpose. It knows

* its vocabulary as one byte string per token id (`token_bytes`) and its EOS ids,
* how to turn text into token ids (`encode`),
* one batched call, `_extend(parents, new_tokens)`: for each sequence, feed `new_tokens[i]`
  after the processed sequence `parents[i]` (an opaque state the backend returned earlier, or
  `None` for the empty sequence) and return the new states with the log-probabilities of the
  next token, one row per sequence.

Everything else (contexts, deduplication, counting, sampling) is shared and lives here and in
`ppl.context`. States form a tree: a state is extended by several children when particles fork,
so a backend that keeps a KV cache per state feeds every token exactly once. A vLLM or remote
backend maps states to sequence ids with prefix caching; nothing else changes.

Contexts are built on models, so the models sit below `ppl.context` and never import it.
`lm.context(prompt)` makes a prompt's root context with the factory that `ppl.context` registers
here when it is imported (`set_context_factory`); `import ppl` imports it, so the factory is in
place before any user code runs. Everything else the model does with contexts (feeding them,
reading their pending tokens) it does on the objects it is given. `Token`, a vocabulary entry,
lives here and `ppl.context` re-exports it.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

if TYPE_CHECKING:
    from ppl.context import Context


class Token:
    """One token: its `id`, its `bytes`, its `text` and whether it ends the sequence."""

    __slots__ = ("id", "bytes", "is_eos")

    def __init__(self, id: int, bytes: bytes, is_eos: bool) -> None:
        self.id = id
        self.bytes = bytes
        self.is_eos = is_eos

    @property
    def text(self) -> str:
        """The token's text; a token holding part of a multi-byte character shows U+FFFD."""
        return self.bytes.decode("utf-8", errors="replace")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Token):
            return self.id == other.id
        if isinstance(other, (int, np.integer)) and not isinstance(other, bool):
            return self.id == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __int__(self) -> int:
        return self.id

    __index__ = __int__

    def __repr__(self) -> str:
        return f"Token({self.id}, {self.text!r}{', eos' if self.is_eos else ''})"

    def __deepcopy__(self, memo: dict) -> Token:
        return self


class Fed(NamedTuple):
    """What feeding some contexts cost: batched model calls made and tokens given to the model."""

    calls: int
    tokens: int


def describe(value: Any) -> str:
    """What a backend returned, for an error message: its type, with the shape of a tensor and
    the length and items of a tuple or list (cheap: no look at a tensor's elements)."""
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    if isinstance(value, (tuple, list)):
        items = ", ".join(_describe_item(v) for v in value[:3])
        more = ", ..." if len(value) > 3 else ""
        return f"a {type(value).__name__} of {len(value)} ({items}{more})"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiouAEIOU' else 'a'} {name}"


def _describe_item(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return describe(value)


def check_fed(lm: LanguageModel, fed: Any) -> Fed:
    """`fed`, what `lm.compute_logprobs` returned, if it is a `Fed`; else a `TypeError` that
    names the protocol and what came back (a subclass that overrides `compute_logprobs` and
    returns nothing would otherwise fail inside the engine)."""
    if isinstance(fed, Fed):
        return fed
    raise TypeError(
        f"{type(lm).__name__}.compute_logprobs broke the LanguageModel protocol: it must feed "
        "the contexts and return what that cost, a ppl.models.base.Fed(calls, tokens); it "
        f"returned {describe(fed)}"
    )


#: Where `compute_logprobs` sends its contexts instead of the model, when set: a function
#: `(lm, contexts) -> Fed`. `ppl.map` sets it in each input's own execution context, so the
#: model calls of many runs in flight are answered by one batched call (`ppl.workloads.batch`).
SHARED_CALLS: ContextVar[Callable[[LanguageModel, Sequence[Context]], Fed] | None] = ContextVar(
    "ppl_shared_calls", default=None
)


#: How `LanguageModel.context` makes the root context of a prompt: `(lm, prompt, ids) -> Context`,
#: registered by `ppl.context` (see the module docstring).
_context_factory: Callable[[LanguageModel, str, tuple[int, ...]], Context] | None = None


def set_context_factory(factory: Callable[[LanguageModel, str, tuple[int, ...]], Context]) -> None:
    """Make `factory(lm, prompt, ids)` what `lm.context(prompt)` calls to make a root context.

    `ppl.context` calls it with `Context`'s own constructor when it is imported.
    """
    global _context_factory
    _context_factory = factory


#: What `lm.tempered(T)` calls: `(lm, T) -> LanguageModel`, registered by `ppl.models.tempered`
#: (which imports this module) when `ppl.models` imports it.
_tempered_factory: Callable[[LanguageModel, float], LanguageModel] | None = None


def set_tempered_factory(factory: Callable[[LanguageModel, float], LanguageModel]) -> None:
    """Make `factory(lm, temperature)` what `lm.tempered(temperature)` calls."""
    global _tempered_factory
    _tempered_factory = factory


class ContextWindowError(ValueError):
    """A prompt, or a context extended from it, is longer than the model's context window.

    Raised before the forward pass that would exceed `lm.max_length`: a model run past its
    window gives no error of its own, only wrong probabilities.
    """


class LanguageModel(ABC):
    """A causal language model that ppl programs can condition on and sample from.

    Counters (reset with `reset_counters`):

    * `tokens_fed`: tokens given to the model. A run that never re-encodes feeds each distinct
      prompt once plus each generated token once.
    * `forward_calls`: batched calls made.
    * `kv_peak_bytes`: the most bytes of keys and values held at once (after a forward pass)
      since the last reset; `kv_bytes` is what is held now (both 0 for models without a
      cache). `kv_reserved_bytes` and `kv_reserved_peak_bytes`: the same for the memory
      allocated to hold them (a cache may keep free room for reuse).
    """

    #: byte string of every token id; `len(token_bytes)` is the vocabulary size
    token_bytes: Sequence[bytes]
    #: ids that end a sequence
    eos_token_ids: frozenset[int]
    #: the context window: the most tokens (prompt and added ones together) one sequence may
    #: hold, or None when unknown. A longer prompt or context raises `ContextWindowError`;
    #: set it to None to turn the check off.
    max_length: int | None = None
    #: where `max_length` comes from, named in its errors
    max_length_source: str = "max_length"

    def __init__(self) -> None:
        self.tokens_fed = 0
        self.forward_calls = 0
        # prompt -> root context, alive while some particle holds it
        self._roots: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._token_cache: dict[int, Token] = {}

    # -- what a backend provides ---------------------------------------------------------------

    @abstractmethod
    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; with `add_special_tokens`, the BOS token the model expects."""

    @abstractmethod
    def _extend(
        self, parents: list[Any], new_tokens: list[list[int]]
    ) -> tuple[list[Any], torch.Tensor]:
        """Feed `new_tokens[i]` after state `parents[i]` (None: the empty sequence).

        Returns the new states and a float tensor of shape `[len(parents), vocab_size]` holding
        normalised next-token log-probabilities (on the CPU). Each call's answer is checked
        (its types, lengths and shape): a wrong one raises a `TypeError` naming this method.
        """

    def _extend_scored(
        self, parents: list[Any], new_tokens: list[list[int]], score: Sequence[bool]
    ) -> tuple[list[Any], torch.Tensor, list[torch.Tensor | None]]:
        """`_extend`, and for each row i with `score[i]`, the log-probability of each of
        `new_tokens[i][1:]` given the tokens before it (a float tensor of `len - 1` entries).

        Backends that see every position in their forward pass override this to score in the
        same call. This fallback feeds the scored rows again, one token at a time.
        """
        states, logprobs = self._extend_checked(parents, new_tokens)
        scores: list[torch.Tensor | None] = []
        for parent, tokens, wanted in zip(parents, new_tokens, score):
            if not wanted:
                scores.append(None)
                continue
            row = []
            (state,), lp = self._extend_checked([parent], [tokens[:1]])
            for k, tok in enumerate(tokens[1:], 2):
                row.append(float(lp[0, tok]))
                if k < len(tokens):
                    (state,), lp = self._extend_checked([state], [[tok]])
            scores.append(torch.tensor(row))
        return states, logprobs, scores

    # -- shared machinery ----------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)

    def token(self, token_id: int) -> Token:
        """The `Token` value for an id (one shared object per id)."""
        tok = self._token_cache.get(token_id)
        if tok is None:
            token_id = int(token_id)
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(
                    f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})"
                )
            tok = Token(token_id, self.token_bytes[token_id], token_id in self.eos_token_ids)
            self._token_cache[token_id] = tok
        return tok

    def context(self, prompt: str = "", *, add_special_tokens: bool = True) -> Context:
        """An immutable context holding `prompt`.

        Every call with the same prompt returns the same object, so particles that each build
        the context share one prompt encoding: the prompt is fed to the model once per run.
        """
        if not isinstance(prompt, str):
            raise TypeError(f"lm.context() takes the prompt as a str, got {type(prompt).__name__}")
        key = (prompt, add_special_tokens)
        root = self._roots.get(key)
        if root is None:
            ids = tuple(self.encode(prompt, add_special_tokens=add_special_tokens))
            self.check_length(len(ids), 0)
            if _context_factory is None:
                raise RuntimeError(
                    "no context factory is registered: import ppl (ppl.context registers it)"
                )
            root = _context_factory(self, prompt, ids)
            self._roots[key] = root
        return root

    def check_length(self, prompt: int, added: int, *, planned: int = 0) -> None:
        """Raise `ContextWindowError` if `prompt` tokens followed by `added` tokens (and
        `planned` more, up to a `max_tokens`) do not fit in the context window."""
        limit = self.max_length
        total = prompt + added + planned
        if limit is None or total <= limit:
            return
        window = f"the model's context window of {limit} tokens ({self.max_length_source})"
        if planned:
            raise ContextWindowError(
                f"a context of {prompt + added} tokens plus max_tokens={planned} is {total} "
                f"tokens, longer than {window}: pass max_tokens={max(limit - prompt - added, 0)} "
                "or fewer, or max_tokens=None to generate until EOS or the window is full"
            )
        if not added:
            raise ContextWindowError(
                f"prompt of {prompt} tokens is longer than {window}: shorten the prompt"
            )
        raise ContextWindowError(
            f"context of {total} tokens ({prompt} of prompt, {added} added after it) is longer "
            f"than {window}: stop generating earlier (fewer tokens, e.g. a smaller max_tokens) "
            "or shorten the prompt"
        )

    def tempered(self, temperature: float) -> LanguageModel:
        """This model at `temperature`: each next-token distribution raised to the power
        1/temperature and renormalised (the logits divided by it), as a model of its own.

        Sample and condition it like any model: `lm.tempered(0.7).context(prompt)`. It shares
        this model's weights and KV cache; see `ppl.models.tempered`. T = 1 gives this model.
        """
        if _tempered_factory is None:
            raise RuntimeError("no tempered models: import ppl.models (it registers them)")
        return _tempered_factory(self, temperature)

    def chat(self, messages: str | list[dict[str, str]], *, system: str | None = None) -> str:
        """A prompt string in the model's chat format, ending where the assistant's reply starts.

        `messages` is a user message or a list of `{"role": ..., "content": ...}` dicts.
        """
        raise NotImplementedError(f"{type(self).__name__} has no chat template")

    def extend(
        self, parents: list[Any], new_tokens: list[list[int]]
    ) -> tuple[list[Any], torch.Tensor]:
        """`_extend` with the counters kept."""
        if not parents:
            return [], torch.empty(0, self.vocab_size)
        self.forward_calls += 1
        self.tokens_fed += sum(len(t) for t in new_tokens)
        return self._extend_checked(parents, new_tokens)

    def extend_scored(
        self, parents: list[Any], new_tokens: list[list[int]], score: Sequence[bool]
    ) -> tuple[list[Any], torch.Tensor, list[torch.Tensor | None]]:
        """`_extend_scored` with the counters kept: one call, however many rows it scores."""
        self.forward_calls += 1
        self.tokens_fed += sum(len(t) for t in new_tokens)
        out = self._extend_scored(parents, new_tokens, score)
        self._check_extended("_extend_scored", out, len(parents), scored=True)
        return out

    def _extend_checked(
        self, parents: list[Any], new_tokens: list[list[int]]
    ) -> tuple[list[Any], torch.Tensor]:
        """`_extend`, with what it returned checked against the protocol."""
        out = self._extend(parents, new_tokens)
        self._check_extended("_extend", out, len(parents))
        return out

    def _check_extended(self, method: str, out: Any, rows: int, *, scored: bool = False) -> None:
        """Raise a `TypeError` naming the protocol if `out`, what `method` returned for `rows`
        rows, is not (states, log-probabilities[, scores]) of the right lengths and shape.

        It runs on every forward pass, so it looks at types, lengths and shapes only."""
        parts = 3 if scored else 2
        if isinstance(out, (tuple, list)) and len(out) == parts:
            states, logprobs = out[0], out[1]
            if (
                isinstance(logprobs, torch.Tensor)
                and logprobs.shape == (rows, self.vocab_size)
                and logprobs.is_floating_point()
                and hasattr(states, "__len__")
                and len(states) == rows
                and (not scored or (hasattr(out[2], "__len__") and len(out[2]) == rows))
            ):
                return
        must = "states, log-probabilities tensor of shape [rows, vocab_size]"
        here = f"a list of {rows} states and a float tensor of shape [{rows}, {self.vocab_size}]"
        if scored:
            must += ", scores"
            here = here.replace(" and ", ", ") + f" and a list of {rows} scores (tensor or None)"
        raise TypeError(
            f"{type(self).__name__}.{method} broke the LanguageModel protocol: it must return "
            f"({must}), here {here}; it returned {describe(out)}"
        )

    def compute_logprobs(self, contexts: Sequence[Context], *, max_rows: int | None = None) -> Fed:
        """Make sure every context knows its next-token log-probabilities: one batched call.

        Contexts already fed cost nothing. Contexts that hold the same tokens after the same
        fed state (the same object, or particles that drew the same token) are fed once. With
        `max_rows`, the rows are fed in calls of at most that many. Under `ppl.map` the call is
        shared with the other inputs in flight (`SHARED_CALLS`). Returns what it cost.
        """
        shared = SHARED_CALLS.get()
        if shared is not None:
            return shared(self, contexts)
        groups = list(self.unfed(contexts).values())
        calls = tokens = 0
        step = max_rows or len(groups) or 1
        for start in range(0, len(groups), step):
            tokens += self.feed(groups[start : start + step])
            calls += 1
        return Fed(calls, tokens)

    def unfed(
        self, contexts: Sequence[Context]
    ) -> dict[tuple[int, tuple[int, ...]], list[Context]]:
        """The contexts that need a model call, grouped by the row that feeds them.

        Keyed by (the fed state they extend, the tokens they add), in order of first appearance.
        """
        todo: dict[tuple[int, tuple[int, ...]], list[Context]] = {}
        for ctx in contexts:
            if ctx._logprobs is None:
                if ctx._lm is not self:
                    raise ValueError("a context of another language model was passed to this one")
                if not ctx._pending and ctx._base is None:
                    raise ValueError(
                        "cannot compute next-token probabilities of an empty context: "
                        "give lm.context() a prompt, or a model that adds a BOS token"
                    )
                todo.setdefault((id(ctx._base), ctx._pending), []).append(ctx)
        return todo

    def feed(self, groups: Sequence[list[Context]]) -> int:
        """One batched call, a row per group of `unfed`; returns the tokens fed."""
        if not groups:
            return 0
        if self.max_length is not None:  # before the forward pass: none is run past the window
            for g in groups:
                self.check_length(len(g[0]._prompt_ids), len(g[0]))
        new_tokens = [list(g[0]._pending) for g in groups]
        parents = [g[0]._base for g in groups]
        # rows whose contexts want each fed token scored (`Context._scores`, continuations)
        score = [
            len(t) > 1 and any(c._scores is not None for c in g) for g, t in zip(groups, new_tokens)
        ]
        if any(score):
            states, logprobs, scores = self.extend_scored(parents, new_tokens, score)
        else:
            states, logprobs = self.extend(parents, new_tokens)
            scores = [None] * len(groups)
        for group, state, row, scored in zip(groups, states, logprobs, scores):
            for ctx in group:
                if ctx._logprobs is None:  # the same object may appear more than once
                    ctx._set_fed(state, row, scored)
        return sum(len(t) for t in new_tokens)

    def reset_counters(self) -> None:
        self.tokens_fed = 0
        self.forward_calls = 0
        self._kv_peak = self.kv_bytes
        self._kv_reserved_peak = self.kv_reserved_bytes

    @property
    def kv_bytes(self) -> int:
        """Bytes of keys and values that live contexts hold now (0 for a model without a
        cache). Each stored tensor counts once, however many contexts share it."""
        return 0

    @property
    def kv_peak_bytes(self) -> int:
        """The most `kv_bytes` seen after a forward pass since the last `reset_counters()`."""
        return max(getattr(self, "_kv_peak", 0), self.kv_bytes)

    @property
    def kv_reserved_bytes(self) -> int:
        """Bytes allocated for keys and values, in use or kept free for reuse (by default
        `kv_bytes`: a cache that allocates exactly what it holds)."""
        return self.kv_bytes

    @property
    def kv_reserved_peak_bytes(self) -> int:
        """The most `kv_reserved_bytes` seen after a forward pass since the last reset."""
        return max(getattr(self, "_kv_reserved_peak", 0), self.kv_reserved_bytes)

    def _note_kv(self) -> None:
        """Backends with a cache call this after each forward pass to keep `kv_peak_bytes` and
        `kv_reserved_peak_bytes`."""
        self._kv_peak = max(getattr(self, "_kv_peak", 0), self.kv_bytes)
        self._kv_reserved_peak = max(getattr(self, "_kv_reserved_peak", 0), self.kv_reserved_bytes)

    def __deepcopy__(self, memo: dict) -> LanguageModel:
        return self  # models are shared, never copied, when a particle forks

    def __getstate__(self) -> dict[str, Any]:
        # pickled (to another process) without the contexts alive in this one
        state = self.__dict__.copy()
        state["_roots"] = None
        state["_token_cache"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._roots = weakref.WeakValueDictionary()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"
