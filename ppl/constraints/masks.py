"""Token masks from llguidance, and the grammar state of every context.

A constraint's state after a context is a function of the context's value: the matcher that has
consumed the tokens added after the prompt. States are therefore never copied into particles.
They live in a cache keyed by the context's token chain (the persistent list of its tokens, which
every context built from it by `ctx + token` extends), so a state is found in O(1) at each step
and advanced lazily: the state of `ctx + token` is a copy of the state of `ctx` that has consumed
`token`, made the first time it is needed. Particles that fork share contexts and hence states;
a sibling that draws another token copies the parent's matcher (copy on branch). Rolling back, as
MCMC does when it regenerates from an earlier point, needs nothing: the earlier context still has
its own state (recomputed from its nearest cached ancestor if it was evicted).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import llguidance
import numpy as np
import torch

if TYPE_CHECKING:
    from ppl.context import Context
    from ppl.models.base import LanguageModel

# llguidance marks a token as special (never matched by grammar text) through this id list
_SENTINEL_EOS = b"\xff[eos]"


class _Vocabulary:
    """A model's vocabulary in the form llguidance reads: token bytes, EOS and special ids.

    Built from `token_bytes` and `eos_token_ids`, so it serves every backend. A model without an
    EOS id gets a sentinel EOS after its last token (llguidance needs one); it is never sampled.
    """

    def __init__(self, lm: LanguageModel) -> None:
        tokens = [bytes(b) for b in lm.token_bytes]
        eos = sorted(lm.eos_token_ids)
        if not eos:
            eos = [len(tokens)]
            tokens.append(_SENTINEL_EOS)
        special = set(eos) | {i for i, b in enumerate(tokens) if not b}
        hf_tokenizer = getattr(lm, "tokenizer", None)
        for i in getattr(hf_tokenizer, "all_special_ids", None) or ():
            if 0 <= int(i) < len(tokens):
                special.add(int(i))
        self.tokens = tokens
        self.eos_token_id = eos[0]
        self.bos_token_id = None
        self.special_token_ids = sorted(special)
        self._lm = lm
        self._longest = max(len(b) for b in tokens)
        self._ids = {}
        for i, b in enumerate(tokens):
            if b and i not in special:
                self._ids.setdefault(b, i)

    def __call__(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError("encodes str")  # llguidance then passes text, not bytes
        try:
            return list(self._lm.encode(text, add_special_tokens=False))
        except ValueError:  # a toy vocabulary that cannot spell the text: longest match
            data, out, i = text.encode(), [], 0
            while i < len(data):
                for j in range(min(len(data), i + self._longest), i, -1):
                    tid = self._ids.get(data[i:j])
                    if tid is not None:
                        out.append(tid)
                        i = j
                        break
                else:
                    i += 1
            return out


class ModelMasks:
    """llguidance's view of one language model: its tokenizer and a batched mask routine."""

    def __init__(self, lm: LanguageModel) -> None:
        vocab = _Vocabulary(lm)
        self.vocab_size = lm.vocab_size
        self.tokenizer = llguidance.LLTokenizer(llguidance.TokenizerWrapper(vocab))
        self.words = (len(vocab.tokens) + 31) // 32
        self.eos_ids = torch.tensor(sorted(lm.eos_token_ids), dtype=torch.long)

    def masks(self, matchers: list[llguidance.LLMatcher]) -> torch.Tensor:
        """Allowed next tokens after each matcher, `[len(matchers), vocab_size]` bool.

        The masks are computed one after the other in this thread, straight into one packed
        buffer. (llguidance's thread pool was slower for a step's masks even on 16 cores: 7-9 ms
        against 2-3 ms for 16 JSON-grammar masks, next to a GPU forward pass.) EOS is allowed
        exactly when the matcher accepts; a matcher in an error state allows nothing.
        """
        n = len(matchers)
        packed = torch.zeros((n, self.words), dtype=torch.int32)
        base, size = packed.data_ptr(), self.words * 4
        for i, m in enumerate(matchers):
            m.unsafe_compute_mask_ptr(base + i * size, size)
        # bit j of word w is token 32 w + j: little-endian words, bits unpacked low first
        words = packed.numpy().view(np.uint32).astype("<u4", copy=False)
        unpacked = np.unpackbits(words.view(np.uint8), axis=1, bitorder="little")
        bits = torch.from_numpy(unpacked[:, : self.vocab_size]).view(torch.bool)
        if len(self.eos_ids):
            accepting = torch.tensor([m.is_accepting() and not m.is_error() for m in matchers])
            bits[:, self.eos_ids] = accepting.unsqueeze(1)
        for i, m in enumerate(matchers):
            if m.is_error():
                bits[i] = False
        return bits


_MODELS: weakref.WeakKeyDictionary[Any, ModelMasks] = weakref.WeakKeyDictionary()


def model_masks(lm: LanguageModel) -> ModelMasks:
    """The llguidance tokenizer of `lm`, built once per model (about a second for 50k tokens);
    a tempered model shares its base model's (the vocabulary is the same)."""
    lm = getattr(lm, "vocabulary_of", lm)
    found = _MODELS.get(lm)
    if found is None:
        found = _MODELS[lm] = ModelMasks(lm)
    return found


class _Entry:
    __slots__ = ("chain", "matcher", "ends")

    def __init__(self, chain: Any, matcher: llguidance.LLMatcher) -> None:
        self.chain = chain  # held so that its id is not reused while the entry lives
        self.matcher = matcher
        self.ends: bool | None = None  # may the text end here? (asked once, when accepting)


class GrammarStates:
    """The matchers of one grammar on one model, one per context met, in a bounded cache.

    `capacity` bounds memory: an evicted state is recomputed, when needed again, from the nearest
    cached ancestor (or the start), so eviction costs time and never changes a result.
    """

    def __init__(
        self,
        model: ModelMasks,
        grammar: str,
        ends: Callable[[str], bool] | None = None,
        capacity: int = 4096,
    ) -> None:
        self.model = model
        self.root = llguidance.LLMatcher(model.tokenizer, grammar, log_level=0)
        if self.root.is_error():
            raise ValueError(self.root.get_error())
        self.ends = ends
        self.capacity = capacity
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._root = _Entry(None, self.root)
        self._eos = set(model.eos_ids.tolist())

    def matcher(self, ctx: Context) -> llguidance.LLMatcher:
        """The matcher after the tokens `ctx` added to its prompt. Callers must not change it."""
        return self.entry(ctx).matcher

    def masks(self, contexts: list[Context]) -> torch.Tensor:
        """The allowed next tokens after each context, `[len(contexts), vocab_size]` bool.

        EOS is allowed where the matcher accepts and the reference check (`ends`) accepts the
        text: it is asked once per context, and only where the mask would allow EOS.
        """
        entries = [self.entry(ctx) for ctx in contexts]
        bits = self.model.masks([e.matcher for e in entries])
        eos = self.model.eos_ids
        if self.ends is not None and len(eos):
            for i, (ctx, entry) in enumerate(zip(contexts, entries)):
                if bits[i, eos[0]] and not self._ends(ctx, entry):
                    bits[i, eos] = False
        return bits

    def _ends(self, ctx: Context, entry: _Entry) -> bool:
        if entry.ends is None:
            assert self.ends is not None
            entry.ends = bool(self.ends(ctx.text))
        return entry.ends

    def entry(self, ctx: Context) -> _Entry:
        chain = ctx._chain
        if chain is None:
            return self._root
        entries = self._entries
        entry = entries.get(id(chain))
        if entry is not None and entry.chain is chain:
            entries.move_to_end(id(chain))
            return entry
        path = []
        node = chain
        base = self.root
        while node is not None:
            entry = entries.get(id(node))
            if entry is not None and entry.chain is node:
                base = entry.matcher
                break
            path.append(node)
            node = node.prev
        matcher = base.deep_copy()
        for node in reversed(path):
            if not matcher.is_error():
                matcher.consume_tokens(list(node.ids))
        entry = entries[id(chain)] = _Entry(chain, matcher)
        if len(entries) > self.capacity:
            entries.popitem(last=False)
        return entry

    def allows(self, ctx: Context, token_id: int) -> bool:
        """Can `token_id` follow `ctx` in the grammar? (EOS: exactly when the grammar accepts
        and the reference check accepts the text.)"""
        entry = self.entry(ctx)
        m = entry.matcher
        if m.is_error():
            return False
        if token_id in self._eos:
            return m.is_accepting() and (self.ends is None or self._ends(ctx, entry))
        return m.validate_tokens([token_id]) == 1
