"""Tiny random transformers models, built in memory: tests, smoke runs and examples without a
download.

`tiny_tokenizer(corpus)` trains a byte-level BPE tokenizer (GPT-2 style) on a few strings and
adds `<s>` before every text (`</s>` ends one); `tiny_llama(tokenizer, ...)` makes a randomly
initialised Llama over its vocabulary. Both are deterministic (the weights come from
`torch.manual_seed(seed)`), so two processes that build them get the same model. The weights are
random: the text is nonsense, but every code path of `HFModel` runs as with a real model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def tiny_tokenizer(corpus: Sequence[str], vocab_size: int = 320) -> Any:
    """A byte-level BPE tokenizer trained on `corpus`, adding `<s>` before every text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def tiny_llama(
    tokenizer: Any,
    *,
    layers: int = 1,
    hidden: int = 16,
    heads: int = 2,
    kv_heads: int = 1,
    max_positions: int = 512,
    extra_vocab: int = 0,
    seed: int = 0,
    **config: Any,
) -> Any:
    """A random `LlamaForCausalLM` over `tokenizer`'s vocabulary (plus `extra_vocab` unused ids,
    as many real models have), in eval mode; `config`: more `LlamaConfig` fields."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer) + extra_vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        **config,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()
