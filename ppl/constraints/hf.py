"""A transformers `LogitsProcessor` from a constraint: plain masked decoding with `generate`.

This is mask-and-renormalise decoding: every sampled sequence is in the language, but sequences
are not drawn from the model's conditional distribution p(text | text in L) (each token is
renormalised locally). Use ppl's inference for exact sampling; use this for speed and interop.
"""

from __future__ import annotations

from typing import Any

import torch

from ppl.constraints.grammar import Constraint


class ConstraintLogitsProcessor:
    """Sets the logits of tokens `constraint` forbids to -inf, row by row of a batch.

    >>> proc = ConstraintLogitsProcessor(ppl.Regex("[0-9]+"), lm)  # doctest: +SKIP
    >>> lm.model.generate(ids, logits_processor=[proc], max_new_tokens=8)  # doctest: +SKIP

    `lm` is the ppl model whose vocabulary the logits use (an `HFModel`, or any ppl model with
    the same vocabulary). The first call fixes each row's prompt length; later calls consume the
    tokens added since. A row whose text can no longer continue gets only EOS. Make a new
    processor for each `generate` call.
    """

    def __init__(self, constraint: Constraint, lm: Any) -> None:
        if not isinstance(constraint, Constraint):
            raise TypeError(f"expected a ppl constraint, got {type(constraint).__name__}")
        self.constraint = constraint
        self.lm = lm
        self._states = constraint.states(lm)
        self._prompt_len: int | None = None
        self._matchers: list[Any] = []
        self._done: list[bool] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = input_ids.shape[0]
        if self._prompt_len is None:
            self._prompt_len = input_ids.shape[1]
            self._matchers = [self._states.root.deep_copy() for _ in range(rows)]
            self._done = [False] * rows
        else:
            eos = set(self.lm.eos_token_ids)
            for i in range(rows):
                if self._done[i]:
                    continue
                last = int(input_ids[i, -1])
                if last in eos:
                    self._done[i] = True
                else:
                    self._matchers[i].consume_token(last)
        live = [i for i in range(rows) if not self._done[i]]
        if not live:
            return scores
        masks = self._states.model.masks([self._matchers[i] for i in live])
        eos_ids = self._states.model.eos_ids
        for k, i in enumerate(live):
            allowed = masks[k]
            if len(eos_ids) and bool(allowed[eos_ids[0]]):
                # the text may end here by the mask: the reference check must agree
                ids = input_ids[i, self._prompt_len :].tolist()
                text = b"".join(self.lm.token(t).bytes for t in ids).decode("utf-8", "replace")
                if not self.constraint.accepts_end(text):
                    allowed[eos_ids] = False
            if not bool(allowed.any()) and len(eos_ids):  # a dead end: end the row
                allowed = torch.zeros_like(allowed)
                allowed[eos_ids] = True
            width = min(scores.shape[1], allowed.shape[0])
            row = scores[i]
            row[:width] = row[:width].masked_fill(~allowed[:width].to(row.device), -float("inf"))
            row[width:] = -float("inf")
        return scores


def logits_processor(constraint: Constraint, lm: Any) -> Any:
    """A `transformers.LogitsProcessor` restricting decoding to `constraint` (see the module)."""
    from transformers import LogitsProcessor

    class _Processor(ConstraintLogitsProcessor, LogitsProcessor):
        pass

    return _Processor(constraint, lm)
