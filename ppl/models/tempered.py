"""A language model at a temperature: each next-token distribution raised to the power 1/T.

`lm.tempered(T)` is the model whose next token, after any context, has probability

    p_T(x | ctx) = p(x | ctx) ** (1 / T) / sum over y of p(y | ctx) ** (1 / T)

that is the logits divided by T: what `temperature` means to transformers' `generate` and to an
OpenAI-compatible server. T < 1 sharpens the model, T > 1 flattens it, T = 1 is the model itself.

It is a model in its own right, not a sampling trick, so everything ppl does with a model means
the same thing for it: a constraint conditions p_T exactly (the masked draws carry their weights
and `log_evidence` is log p_T(the constraint holds)), `observe` on a continuation scores it under
p_T, and every inference method targets it.

It shares the base model: the weights, the token vocabulary, the KV cache (its contexts hold the
base model's states, so no token is fed twice) and the masks of the constraints. It keeps its own
contexts and counters: a context of a tempered model is not one of its base, and a run on it
counts its own tokens fed and forward calls. Runs at different temperatures make separate forward
passes, since each is a different model; runs at the same temperature share one `Tempered`
(`lm.tempered(T)` gives the same object while one is alive) and so share their passes.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch

from ppl.models.base import LanguageModel, set_tempered_factory


def check_temperature(temperature: Any) -> float:
    """`temperature` as a float, or a `ValueError` that says what a temperature must be."""
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        hint = (
            ": temperature 0 would be greedy decoding, which is not a distribution to sample or "
            "condition; use a small temperature such as 0.1, or a fixed seed for repeatable answers"
            if temperature == 0 and not isinstance(temperature, bool)
            else ""
        )
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}{hint}")
    return float(temperature)


# base model -> {temperature: its Tempered}, each alive while something holds it
_MADE: weakref.WeakKeyDictionary[LanguageModel, weakref.WeakValueDictionary[float, Tempered]] = (
    weakref.WeakKeyDictionary()
)


def tempered(lm: LanguageModel, temperature: Any) -> LanguageModel:
    """`lm` at `temperature` (`lm.tempered(T)`): the same object for the same model and T while
    one is alive, and `lm` itself for T = 1."""
    temperature = check_temperature(temperature)
    if isinstance(lm, Tempered):
        lm, temperature = lm.base, lm.temperature * temperature
    if temperature == 1.0:
        return lm
    made = _MADE.setdefault(lm, weakref.WeakValueDictionary())
    found = made.get(temperature)
    if found is None:
        found = made[temperature] = Tempered(lm, temperature)
    return found


class Tempered(LanguageModel):
    """`base` with its next-token log-probabilities divided by `temperature` and renormalised.

    Made by `lm.tempered(temperature)`; see the module docstring. A tempered tempered model is
    the base at the product of the temperatures.
    """

    def __init__(self, base: LanguageModel, temperature: float) -> None:
        temperature = check_temperature(temperature)
        if isinstance(base, Tempered):
            base, temperature = base.base, base.temperature * temperature
        super().__init__()
        self.base = base
        self.temperature = temperature
        self.token_bytes = base.token_bytes
        self.eos_token_ids = base.eos_token_ids
        self.max_length = base.max_length
        self.max_length_source = base.max_length_source

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return self.base.encode(text, add_special_tokens=add_special_tokens)

    def chat(self, messages: str | list[dict[str, str]], *, system: str | None = None) -> str:
        return self.base.chat(messages, system=system)

    def _extend(
        self, parents: list[Any], new_tokens: list[list[int]]
    ) -> tuple[list[Any], torch.Tensor]:
        states, logprobs = self.base._extend(parents, new_tokens)
        return states, self._temper(logprobs)

    # `_extend_scored` is the base class's: it scores a continuation token by token through
    # `_extend`, so each token is scored under p_T (the base model's own scoring in one pass
    # only knows p at the fed tokens, not the normaliser of p ** (1/T) at each position)

    def _temper(self, logprobs: torch.Tensor) -> torch.Tensor:
        if self.temperature == 1.0:
            return logprobs
        return torch.log_softmax(logprobs.float() / self.temperature, dim=-1)

    @property
    def vocabulary_of(self) -> LanguageModel:
        """The model whose vocabulary this one has (the constraints' masks are built once)."""
        return self.base

    @property
    def tokenizer(self) -> Any:
        """The base model's tokenizer, where it has one (the constraints read its special ids)."""
        return getattr(self.base, "tokenizer", None)

    @property
    def kv_bytes(self) -> int:
        return self.base.kv_bytes

    @property
    def kv_reserved_bytes(self) -> int:
        return self.base.kv_reserved_bytes

    def __repr__(self) -> str:
        return f"{self.base!r}.tempered({self.temperature:g})"


set_tempered_factory(tempered)
