"""Loading a local GGUF file through the weights cache (`ppl.models.weights_cache`).

transformers dequantises a GGUF file on every load, which takes some 20 s for the embedded
model. `load_gguf_cached` converts it once, to safetensors in the dtype asked for, and later
loads read that: the cache keys the entry by the file's content, the dtype and the library
versions, and verifies it before use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ppl.models.hf.compat import dtype_keyword
from ppl.models.weights_cache import cached


def load_gguf_cached(
    gguf: Path, dtype: torch.dtype, cache_root: Path, *, trust_remote_code: Any, **kwargs: Any
) -> tuple[Any, Any]:
    """The tokenizer and model of a local GGUF file, read from the weights cache (converted and
    written there first if they are not). `kwargs` go to the model's `from_pretrained`."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    remote = {} if trust_remote_code is None else {"trust_remote_code": trust_remote_code}

    def read_gguf(**options: Any) -> tuple[Any, Any]:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, **remote)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, **remote, **options, **{dtype_keyword(): dtype}
        )
        return tokenizer, model

    def convert(directory: Path) -> None:
        # the GGUF file dequantised to `dtype`, as an uncached load makes it; tied weights
        # (the embeddings and the output layer) are written once
        tokenizer, model = read_gguf()
        save_model(model, str(directory / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(directory)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(directory)
        tokenizer.save_pretrained(directory)

    directory = cached(gguf, str(dtype).removeprefix("torch."), convert, root=cache_root)
    if directory is None:  # the cache cannot be written: load as if it were off
        return read_gguf(**kwargs)
    tokenizer = AutoTokenizer.from_pretrained(directory, **remote)
    model = AutoModelForCausalLM.from_pretrained(
        directory, **remote, **kwargs, **{dtype_keyword(): dtype}
    )
    return tokenizer, model
