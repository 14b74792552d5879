"""Language models built from a Python function: toy and enumerable models for tests and teaching.

>>> from ppl.models import FunctionLM
>>> lm = FunctionLM(["a", "b", "<eos>"], lambda prefix: [0.5, 0.3, 0.2], eos="<eos>")
>>> ctx = lm.context("ab")
>>> round(ctx.next_token().log_prob(lm.token(0)), 4)
-0.6931
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ppl.models.base import LanguageModel

NextTokenFn = Callable[[tuple[int, ...]], "Sequence[float] | Mapping[str, float] | torch.Tensor"]


class FunctionLM(LanguageModel):
    """A language model whose next-token distribution is `next_token(prefix)`.

    Args:
        vocab: the token strings (or bytes), in id order.
        next_token: called with the tuple of all token ids so far (prompt included); returns the
            next token's probabilities (or unnormalised weights) as a sequence over the
            vocabulary or a mapping from token string to probability (missing tokens: 0).
            With `logits=True` it returns unnormalised log-probabilities instead.
        eos: the EOS token string(s) or id(s).
        bos: a token string or id put before every prompt (optional).
        max_length: a context window in tokens (optional), as `lm.max_length`: a longer
            prompt or context raises `ContextWindowError` before it is fed.

    Prompts are encoded by greedy longest match over the vocabulary.
    """

    def __init__(
        self,
        vocab: Sequence[str | bytes],
        next_token: NextTokenFn,
        *,
        eos: str | int | Sequence[str | int] = (),
        bos: str | int | None = None,
        logits: bool = False,
        max_length: int | None = None,
    ) -> None:
        super().__init__()
        self.max_length = max_length
        self.token_bytes = [v.encode() if isinstance(v, str) else bytes(v) for v in vocab]
        if len(set(self.token_bytes)) != len(self.token_bytes):
            raise ValueError("FunctionLM: the vocabulary has repeated tokens")
        self._ids = {b: i for i, b in enumerate(self.token_bytes)}
        eos_list = [eos] if isinstance(eos, (str, int)) else list(eos)
        self.eos_token_ids = frozenset(self._id_of(e) for e in eos_list)
        self.bos_token_id = None if bos is None else self._id_of(bos)
        self._fn = next_token
        self._logits = logits
        self._longest = max(len(b) for b in self.token_bytes)

    def _id_of(self, tok: str | int) -> int:
        if isinstance(tok, int):
            if not 0 <= tok < len(self.token_bytes):
                raise ValueError(f"FunctionLM: token id {tok} is outside the vocabulary")
            return tok
        try:
            return self._ids[tok.encode()]
        except KeyError:
            raise ValueError(f"FunctionLM: {tok!r} is not in the vocabulary") from None

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        data = text.encode()
        ids = [self.bos_token_id] if add_special_tokens and self.bos_token_id is not None else []
        i = 0
        while i < len(data):
            for j in range(min(len(data), i + self._longest), i, -1):
                tid = self._ids.get(data[i:j])
                if tid is not None and tid not in self.eos_token_ids:
                    ids.append(tid)
                    i = j
                    break
            else:
                raise ValueError(
                    f"FunctionLM: cannot encode {text!r}: no token matches at byte {i}"
                )
        return ids

    def next_token_logprobs(self, prefix: tuple[int, ...]) -> torch.Tensor:
        """Normalised next-token log-probabilities after `prefix` (a tensor over the vocabulary)."""
        out: Any = self._fn(prefix)
        if isinstance(out, Mapping):
            row = [0.0] * self.vocab_size
            for tok, p in out.items():
                row[self._id_of(tok)] = float(p)
            out = row
        row = torch.as_tensor(out, dtype=torch.float64).flatten()
        if row.numel() != self.vocab_size:
            raise ValueError(
                f"FunctionLM: next_token returned {row.numel()} values for a vocabulary of "
                f"{self.vocab_size} after prefix {prefix}"
            )
        if self._logits:
            return torch.log_softmax(row, 0).float()
        if (
            torch.isnan(row).any()
            or (row < 0).any()
            or not math.isfinite(float(row.sum()))
            or row.sum() <= 0
        ):
            raise ValueError(
                f"FunctionLM: next_token must return non-negative weights with a positive finite "
                f"sum, got {row.tolist()} after prefix {prefix}"
            )
        return (row / row.sum()).log().float()

    def _extend(
        self, parents: list[Any], new_tokens: list[list[int]]
    ) -> tuple[list[Any], torch.Tensor]:
        states = [(parent or ()) + tuple(new) for parent, new in zip(parents, new_tokens)]
        return states, torch.stack([self.next_token_logprobs(s) for s in states])

    def _extend_scored(
        self, parents: list[Any], new_tokens: list[list[int]], score: Sequence[bool]
    ) -> tuple[list[Any], torch.Tensor, list[torch.Tensor | None]]:
        states, logprobs = self._extend(parents, new_tokens)
        scores: list[torch.Tensor | None] = []
        for parent, new, wanted in zip(parents, new_tokens, score):
            prefix = parent or ()
            scores.append(
                torch.tensor(
                    [
                        float(self.next_token_logprobs(prefix + tuple(new[:j]))[new[j]])
                        for j in range(1, len(new))
                    ]
                )
                if wanted
                else None
            )
        return states, logprobs, scores
