"""Loading a local GGUF file through the weights cache (`ppl.models.weights_cache`).

transformers dequantises a GGUF file on every load, which takes some 20 s for the embedded
model. `load_gguf_cached` converts it once, to safetensors in the dtype asked for, and later
loads read that: the cache keys the entry by the file's content, the dtype and the library
versions, and verifies it before use.

A cached entry of a Llama model is read without importing transformers (engine "auto" or
"native"): the weights by `NativeLlama` (`native`), the tokenizer by `FileTokenizer`
(`file_tokenizer`), in about a second where transformers' import alone takes 4-6 s. Other
models, other engines and loads with model options go through transformers.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ppl.models.hf.compat import dtype_keyword
from ppl.models.hf.native import NativeLlama
from ppl.models.weights_cache import cached


def load_gguf_cached(
    gguf: Path,
    dtype: torch.dtype,
    cache_root: Path,
    *,
    trust_remote_code: Any,
    engine: str = "auto",
    **kwargs: Any,
) -> tuple[Any, Any]:
    """The tokenizer and model of a local GGUF file, read from the weights cache (converted and
    written there first if they are not). `kwargs` go to the model's `from_pretrained`.

    With `engine` "auto" or "native", no `kwargs` and a Llama model, the model is a
    `NativeLlama` and the tokenizer a `FileTokenizer` where the directory allows it (else
    transformers' own), and transformers is not imported.
    """
    from safetensors.torch import save_model

    remote = {} if trust_remote_code is None else {"trust_remote_code": trust_remote_code}

    def read_gguf(**options: Any) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with quiet_progress_bars():
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
    if engine != "transformers" and not kwargs and not remote:
        model = NativeLlama.from_directory(directory, dtype)
        if model is not None:
            return read_tokenizer(directory), model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_progress_bars():
        tokenizer = AutoTokenizer.from_pretrained(directory, **remote)
        model = AutoModelForCausalLM.from_pretrained(
            directory, **remote, **kwargs, **{dtype_keyword(): dtype}
        )
    return tokenizer, model


def read_tokenizer(directory: Path) -> Any:
    """The tokenizer saved in `directory`: a `FileTokenizer` where it reads every setting
    there, else transformers' `AutoTokenizer`."""
    from ppl.models.hf.file_tokenizer import load_file_tokenizer

    tokenizer = load_file_tokenizer(directory)
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory)
    return tokenizer


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' loading progress bars when stderr is not a terminal (logs, CI).

    transformers' own bars follow its global switch, which is restored afterwards. The GGUF
    reader calls tqdm directly, so its module's `tqdm` is swapped for a disabled one meanwhile.
    Imports transformers: use it on paths that load through it.
    """
    isatty = getattr(sys.stderr, "isatty", None)
    if isatty is not None and isatty():
        yield
        return
    from transformers.utils import logging as hf_logging

    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - layout of other transformers releases
        gguf_utils = None
    original_tqdm = getattr(gguf_utils, "tqdm", None)
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    if original_tqdm is not None:
        gguf_utils.tqdm = functools.partial(original_tqdm, disable=True)
    try:
        yield
    finally:
        if original_tqdm is not None:
            gguf_utils.tqdm = original_tqdm
        if bars_were_on:
            hf_logging.enable_progress_bar()
