"""What differs between transformers releases, and between model families' configs.

`HFModel` runs on transformers 4.x and 5.x. Each difference it meets is answered here, once, so
that the rest of the package reads as if there were one release:

* cache objects: since 4.56 a `DynamicCache` holds one layer object per layer (`layers`, which
  the paged cache needs); before, it held the lists `key_cache` and `value_cache`
  (`has_cache_layers`, `cache_from_tensors`, `tensors_from_cache`);
* the keyword arguments of a forward pass (`forward_args`): the logits of the needed positions
  only are asked for with `logits_to_keep` since 4.50 and `num_logits_to_keep` before (some
  models take neither); the cache is passed as `cache` since 5.24 and `past_key_values` before,
  and comes back under the same name (`output_cache`);
* the dtype keyword of `from_pretrained`: `dtype` since 4.56, `torch_dtype` before
  (`dtype_keyword`);
* the context window (`context_window`): `max_position_embeddings` in most configs,
  `n_positions` in GPT-2 style ones, else the tokenizer's `model_max_length` when it knows it.

transformers is imported inside the functions: importing it takes seconds, paid only once a
HuggingFace model is built.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch


def has_cache_layers(cache_cls: type) -> bool:
    """Whether `cache_cls` (a `DynamicCache`) keeps one layer object per layer (4.56 and later)."""
    return hasattr(cache_cls(), "layers")


def forward_args(model: Any) -> tuple[str | None, str]:
    """The names the model's `forward` gives the count or positions of the logits to keep
    (None: it has no such argument) and the cache."""
    params = inspect.signature(model.forward).parameters
    keep = next((a for a in ("logits_to_keep", "num_logits_to_keep") if a in params), None)
    return keep, "cache" if "cache" in params else "past_key_values"


def output_cache(out: Any) -> Any:
    """The cache a forward pass returns."""
    cache = getattr(out, "cache", None)
    return out.past_key_values if cache is None else cache


def dtype_keyword() -> str:
    """The keyword that `from_pretrained` takes the dtype as."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def cache_from_tensors(
    cache_cls: type, keys: list[torch.Tensor], values: list[torch.Tensor]
) -> Any:
    """A cache of `cache_cls` (a `DynamicCache`, or the native model's) holding `keys`/`values`
    as they are (no copy)."""
    cache = cache_cls()
    if hasattr(cache, "layers"):  # transformers >= 4.56: one cache layer object per layer
        layer_cls = cache_layer_class(cache_cls)
        for k, v in zip(keys, values, strict=True):
            layer = layer_cls()
            # what `lazy_initialization` would set (its signature changed across releases)
            layer.dtype, layer.device = k.dtype, k.device
            layer.keys, layer.values = k, v
            layer.is_initialized = True
            cache.layers.append(layer)
    else:  # older releases: updating an empty layer stores the tensors without concatenating
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            cache.update(k, v, i)
    return cache


def cache_layer_class(cache_cls: type) -> type:
    """The layer class of a cache with layers: its own `layer_class` (the native model's
    cache, `ppl.models.hf.native.Cache`), else transformers' `DynamicLayer`."""
    own = getattr(cache_cls, "layer_class", None)
    if isinstance(own, type):
        return own
    from transformers.cache_utils import DynamicLayer

    return DynamicLayer


def tensors_from_cache(cache: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The per-layer keys and values of a `DynamicCache`."""
    if hasattr(cache, "layers"):
        return [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]
    return list(cache.key_cache), list(cache.value_cache)


#: `model_max_length` of a tokenizer that does not know it (transformers' VERY_LARGE_INTEGER)
_UNKNOWN_LENGTH = 10**9


def context_window(config: Any, tokenizer: Any) -> tuple[int | None, str]:
    """The most tokens the model takes in one sequence, and the setting that says so.

    The model's config (`max_position_embeddings`, or `n_positions` in GPT-2 style configs),
    else the tokenizer's `model_max_length` when it holds a real value; None when unknown.
    """
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value, name
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < _UNKNOWN_LENGTH:
        return value, "tokenizer.model_max_length"
    return None, "max_length"
