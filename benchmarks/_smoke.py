"""What the benchmarks' `--smoke` runs share: the flag, and tiny models that load at once.

Every script in this folder takes `--smoke`: tiny sizes on a tiny model, a few seconds, so that
`tests/test_benchmarks.py` runs each one in the default test suite and no benchmark rots. A
smoke run's figures mean nothing; it checks that the script runs and prints its table. Sizes
given on the command line beside `--smoke` still win.

* `toy_lm()`: a character-level `FunctionLM` (printable ASCII, newline and EOS) with a chat
  format, for the scripts that measure ppl itself on whatever model they are given;
* `tiny_hf_lm()`: a randomly initialised one-layer Llama behind `HFModel`, with a byte-level
  tokenizer and a chat template, for the scripts about transformers models (their KV caches,
  decode steps, `generate`); `save_tiny_hf(folder)` writes it where `from_pretrained` reads it.

A module of helpers, not a benchmark: its name starts with an underscore.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from ppl.models import FunctionLM

SMOKE_HELP = "a few seconds at tiny sizes on a tiny model, as the test suite runs it"


def parse_args(parser: argparse.ArgumentParser, **tiny: Any) -> argparse.Namespace:
    """`parser.parse_args()` with a `--smoke` flag that makes `tiny` the defaults."""
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    if "--smoke" in sys.argv[1:]:
        parser.set_defaults(**tiny)
    return parser.parse_args()


# -- a character-level toy model ------------------------------------------------------------------

CHARS = [chr(c) for c in range(0x20, 0x7F)] + ["\n"]
_WEIGHT = {" ": 8.0, '"': 3.0, "{": 1.5, "}": 1.5, "[": 1.5, "]": 1.5, ",": 1.5, ":": 1.5}
_WEIGHT.update({c: 3.0 for c in "abcdefghijklmnopqrstuvwxyz"})
_WEIGHT.update({c: 1.5 for c in "0123456789"})
_PROBS = torch.tensor([_WEIGHT.get(c, 0.5) for c in CHARS] + [2.0], dtype=torch.float64)
_PROBS /= _PROBS.sum()


def _next_token(prefix: tuple[int, ...]) -> torch.Tensor:
    return _PROBS  # the same after every prefix: letters and spaces, some JSON, now and then EOS


class ToyChatLM(FunctionLM):
    """A character-level `FunctionLM` with a plain chat format ("user: ...", "assistant: ")."""

    def chat(self, messages: str | list[dict[str, str]], *, system: str | None = None) -> str:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if system is not None:
            messages = [{"role": "system", "content": system}, *messages]
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def toy_lm() -> ToyChatLM:
    return ToyChatLM([*CHARS, "<eos>"], _next_token, eos="<eos>")


# -- a tiny transformers model ------------------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = [
    "Tell me a story about a cat. Once upon a time the cat sat on the mat.",
    'Invent a person. Answer in JSON. {"name": "Ann", "age": 42}',
]


def _tiny_parts() -> tuple[Any, Any]:
    from ppl.models.hf.tiny import tiny_llama, tiny_tokenizer

    tokenizer = tiny_tokenizer(CORPUS, vocab_size=300)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tiny_llama(tokenizer), tokenizer


def tiny_hf_lm(device: str | None = None, dtype: str | None = None, **options: Any) -> Any:
    """A tiny random Llama as an `HFModel` (`options`: its kv_cache, kv_block, step); float32
    unless `dtype` names another ("auto" and None: float32)."""
    from ppl.models import HFModel

    model, tokenizer = _tiny_parts()
    if device is not None:
        model = model.to(device)
    if dtype not in (None, "auto"):
        model = model.to(getattr(torch, dtype))
    return HFModel(model, tokenizer, **options)


def save_tiny_hf(folder: str | Path) -> str:
    """Write the tiny Llama and its tokenizer to `folder`; returns it, for `hf:FOLDER`."""
    from transformers.utils import logging

    model, tokenizer = _tiny_parts()
    logging.disable_progress_bar()  # "Writing model shards" for one tiny shard
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
