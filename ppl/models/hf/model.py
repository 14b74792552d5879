"""`HFModel`: a HuggingFace transformers causal LM behind the `LanguageModel` protocol.

>>> lm = HFModel.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP
>>> ctx = lm.context(lm.chat("Name a colour."))  # doctest: +SKIP

This module builds the model and keeps its settings and counts; the rest lives beside it in
`ppl.models.hf`: the forward passes (`forward`), the token bytes (`tokens`), the two KV caches
(the paged one: `block_pool` keeps the blocks and hands them to sequences, `paged` plans each
forward pass's reads and writes; the other: `batch_cache`), the fixed-shape decode steps and
CUDA graphs (`fixed_step`), the differences between transformers releases (`compat`) and the
GGUF weights cache (`gguf`). Each module's docstring states its part of the design.

How it runs
-----------
Every `_extend` call is one forward pass over a batch of rows, one row per sequence, fed only
each row's new tokens (`forward`, which states how rows of different lengths share a pass).
Two caches hold the keys and values of what came before (`HFModel(..., kv_cache=...)`); both
give the same log-probabilities. The paged cache ("paged", the default) stores each token once
per distinct prefix, in blocks shared by reference; a forward pass over it takes the pool's
lock, and `lm.kv_bytes` counts the blocks in use, `lm.kv_reserved_bytes` the pool's capacity.
It needs transformers' cache layers (4.56 and later); with older releases the model uses the
batch cache ("batch"), where every row of a forward pass keeps its whole sequence. With
`step="buckets"` or `"graphs"` (the default on CUDA), the decode steps of the paged cache run
in a handful of fixed shapes, as CUDA graphs with "graphs" (`HFModel.step`). A local GGUF file
is read through the weights cache.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ppl.models.base import LanguageModel
from ppl.models.hf.batch_cache import KVGroup
from ppl.models.hf.block_pool import MIN_GROWTH, BlockPool
from ppl.models.hf.compat import (
    context_window,
    dtype_keyword,
    forward_args,
    has_cache_layers,
)
from ppl.models.hf.fixed_step import GRAPH_MIN_GROWTH, FixedStep
from ppl.models.hf.forward import forward_batch, forward_paged
from ppl.models.hf.gguf import load_gguf_cached, quiet_progress_bars
from ppl.models.hf.native import NativeLlama
from ppl.models.hf.native import supported as native_unsupported
from ppl.models.hf.threads import before_cpu_pass
from ppl.models.hf.tokens import token_bytes_of
from ppl.models.spec import (
    ENGINES,
    KV_BLOCK,
    KV_CACHES,
    STEPS,
    KVOptions,
    ModelSpec,
    _build_spec,
    check_engine,
    is_plain,
    register,
    resolve_device,
    resolve_dtype,
)
from ppl.models.weights_cache import cache_dir as weights_cache_dir

#: keyword arguments of `from_pretrained` that say where on the Hub a model is (the tokenizer
#: takes them too); a model read from the weights cache needs none of them
_HUB_OPTIONS = ("revision", "token", "cache_dir", "local_files_only", "subfolder")


class HFModel(LanguageModel):
    """A HuggingFace transformers causal LM and its tokenizer, behind the `LanguageModel` protocol.

    Use `HFModel.from_pretrained(name_or_path)` or wrap a loaded model: `HFModel(model, tokenizer)`.
    Supported: decoder-only models whose layers all use full attention with a `DynamicCache`
    (Llama, Qwen2, Phi-3, SmolLM, ...). The model is put in eval mode; inputs go to its device.

    A model loaded by `from_pretrained` (with plain keyword values) records how as `spec` and
    pickles as that spec; one wrapped from an in-memory model has `spec = None` and does not
    pickle.

    `max_length` is the context window from the model's config (`max_position_embeddings`),
    else from the tokenizer's `model_max_length`; a longer prompt or context raises
    `ContextWindowError` before its forward pass. Set `lm.max_length` to change it, or to None
    to turn the check off.

    `kv_cache` picks how keys and values are kept: "paged" (the default; `block_pool`,
    `paged`) stores each token once in shared blocks of `kv_block` token slots, so contexts
    that share a prefix share its memory; "batch" (`batch_cache`) keeps the cache of each
    forward pass as one tensor per layer with every row's whole sequence. Both give the same
    log-probabilities.
    """

    #: how to build this model again in another process (`ppl.models.spec`), if known
    spec: ModelSpec | None = None

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        kv_cache: str = KV_CACHES[0],
        kv_block: int = KV_BLOCK,
        step: str = STEPS[0],
    ) -> None:
        super().__init__()
        KVOptions(kv_cache, kv_block, step)  # raises for a bad setting
        self._groups: weakref.WeakSet[KVGroup] = weakref.WeakSet()  # batches still in use
        # the cache of the model's forward passes: the native model's own, else transformers'
        cache_cls = getattr(model, "cache_class", None)
        if cache_cls is None:
            from transformers import DynamicCache as cache_cls

        # the paged cache needs transformers' cache layers (4.56 and later)
        if kv_cache == "paged" and not has_cache_layers(cache_cls):
            kv_cache = "batch"
        #: "paged" or "batch": how this model keeps keys and values
        self.kv_cache = kv_cache
        #: token slots per block of the paged cache
        self.kv_block = kv_block
        self._pool = BlockPool(kv_block) if kv_cache == "paged" else None
        self.model = model.eval()
        self.tokenizer = tokenizer
        self._cache_cls = cache_cls
        config = model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        layer_types = getattr(text_config, "layer_types", None) or []
        if any(t != "full_attention" for t in layer_types):
            raise NotImplementedError(
                "HFModel supports models whose layers all use full attention; this one has "
                f"layer types {sorted(set(layer_types))}"
            )

        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        weight = getattr(head, "weight", None)
        vocab_size = weight.shape[0] if weight is not None else text_config.vocab_size
        self.token_bytes = token_bytes_of(tokenizer, vocab_size)

        eos: set[int] = set()
        for source in (
            tokenizer.eos_token_id,
            getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        ):
            if isinstance(source, int):
                eos.add(source)
            elif source is not None:
                eos.update(int(i) for i in source)
        self.eos_token_ids = frozenset(i for i in eos if 0 <= i < vocab_size)

        # the arguments that ask for the logits of the needed positions only, and take the cache
        self._keep_arg, self._cache_arg = forward_args(model)
        self._pad_id = 0  # fed in the right-padding of shorter rows; masked, so any id will do
        self.max_length, self.max_length_source = context_window(text_config, tokenizer)
        self._num_layers = text_config.num_hidden_layers
        # fixed-shape steps give the attention a 4D mask: a boolean one for SDPA, an additive
        # one for the eager attention; other attentions (flash, flex) take no 4D mask
        attention = getattr(config, "_attn_implementation", None) or "eager"
        self._mask_kind = {"sdpa": "bool", "eager": "additive"}.get(attention)
        self._steps: dict[tuple[int, int], FixedStep] = {}  # (rows, keys) -> its step
        self._steps_generation = -1  # the pool generation that the steps' graphs name
        self._graph_pool: Any = None  # the memory pool that all the model's graphs share
        self._graphs_off: str | None = None  # why CUDA graphs were turned off, if they were
        #: CUDA graphs captured over the model's life
        self.graphs_captured = 0
        self.step = step

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        gguf_file: str | None = None,
        kv_cache: str = KV_CACHES[0],
        kv_block: int = KV_BLOCK,
        step: str = STEPS[0],
        weights_cache: bool = True,
        engine: str = ENGINES[0],
        **kwargs: Any,
    ) -> HFModel:
        """Load a causal LM and its tokenizer with transformers.

        Args:
            name_or_path: a Hub model id or a local directory.
            device: "cpu", "cuda", ... (default: CUDA when available, else the CPU).
            dtype: a torch dtype or its name, or "auto" (the default): bfloat16 on CUDA where
                supported, float32 elsewhere (`ppl.models.spec.auto_dtype` says why).
            gguf_file: a GGUF file in `name_or_path` to load model and tokenizer from.
            kv_cache: how keys and values are kept, "paged" or "batch" (see `HFModel`).
            kv_block: token slots per block of the paged cache.
            step: how decode steps run, "auto", "eager", "buckets" or "graphs" (`HFModel.step`).
            weights_cache: for a local `gguf_file`, keep its converted weights in the weights
                cache (`ppl.models.weights_cache`) and read them from there on later loads;
                False, or the environment variable `PPL_CACHE_DIR=off`, converts every time and
                writes nothing. Either way the model is the same, so the spec does not record it.
            engine: what computes the forward pass. "transformers": the model transformers
                loads. "native": `ppl.models.hf.native.NativeLlama` over the same weights (a
                Llama model only; others raise ValueError): a weights-cache entry is then read
                without importing transformers, in about a second. "auto" (the default):
                "native" for a Llama model read from a GGUF file with no `kwargs` for the
                model, else "transformers". Both compute the same logits (`NativeLlama` is
                tested against transformers); a native model's `generate` is transformers'.
            kwargs: passed to `AutoModelForCausalLM.from_pretrained`; the Hub options among them
                (revision, token, cache_dir, ...) to the tokenizer too.

        When every keyword value is plain (str, number, None, tuple), the model records its
        `spec` with the resolved device and dtype, and pickles as that spec.
        """
        kv = KVOptions(kv_cache, kv_block, step)  # checked before the weights are loaded
        check_engine(engine)
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        options = dict(kwargs)  # before the dtype and gguf_file keys below are added
        if gguf_file is not None:
            options["gguf_file"] = gguf_file
        if engine != ENGINES[0]:
            options["engine"] = engine
        model_kwargs = {k: v for k, v in kwargs.items() if k not in _HUB_OPTIONS}
        # "auto": the native forward pass for a GGUF file loaded with no options for the model
        native = engine == "native" or (
            engine == "auto" and gguf_file is not None and not model_kwargs
        )
        shared = {k: kwargs[k] for k in (*_HUB_OPTIONS, "trust_remote_code") if k in kwargs}
        cache_root = weights_cache_dir() if weights_cache else None
        local_gguf = Path(name_or_path, kwargs.get("subfolder", ""), gguf_file or "")
        if gguf_file is not None and cache_root is not None and local_gguf.is_file():
            rest = {k: v for k, v in kwargs.items() if k not in shared}
            tokenizer, model = load_gguf_cached(
                local_gguf,
                dtype,
                cache_root,
                trust_remote_code=shared.get("trust_remote_code"),
                engine="native" if native else "transformers",
                **rest,
            )
            model.config._name_or_path = name_or_path  # as transformers sets it from the file
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            if gguf_file is not None:
                kwargs["gguf_file"] = shared["gguf_file"] = gguf_file
            kwargs[dtype_keyword()] = dtype
            with quiet_progress_bars() if gguf_file is not None else contextlib.nullcontext():
                tokenizer = AutoTokenizer.from_pretrained(name_or_path, **shared)
                model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
        if native and not isinstance(model, NativeLlama):
            converted = NativeLlama.from_transformers(model)
            if converted is None:
                if engine == "native":
                    raise ValueError(
                        f"engine='native' computes Llama models only; {name_or_path} is not "
                        f"one ({native_unsupported(model.config.to_dict())}): use "
                        "engine='transformers'"
                    )
            else:
                model = converted
        if "device_map" not in kwargs:
            model = model.to(device)
        lm = cls(model, tokenizer, **kv.keywords())
        if all(is_plain(v) for v in options.values()):
            register(lm, ModelSpec("hf", name_or_path, dtype, device, options, **kv.keywords()))
        return lm

    # -- how decode steps run --------------------------------------------------------------------

    @property
    def step(self) -> str:
        """How decode steps run: "eager", "buckets" or "graphs" (what "auto" resolved to).

        * "eager": every forward pass at its own shape (the default on the CPU, where padding
          costs arithmetic and compiling does not pay: see `benchmarks/step_modes.py`);
        * "buckets": a decode step (every row one new token, none scored) is padded to a row
          count of `ROW_BUCKETS` and a past length of `key_bucket`, the padding masked, and run
          eagerly: a run meets a handful of shapes;
        * "graphs": as "buckets", and each shape is captured once as a CUDA graph and replayed
          (the default on CUDA): a step costs its kernels, not their launches.

        Prompts and scored rows always run eagerly at their own shape. All give the same
        log-probabilities, within float rounding. Set it on a model to change it.
        """
        return self._step

    @step.setter
    def step(self, step: str) -> None:
        KVOptions(step=step)  # raises for an unknown step
        cuda = self.device.type == "cuda"
        fixed_ok = self._pool is not None and self._mask_kind is not None
        if step == "auto":
            step = "graphs" if cuda and fixed_ok else "eager"
        elif step != "eager" and not fixed_ok:
            raise ValueError(
                f"step={step!r} needs the paged KV cache and SDPA or eager attention; this "
                f"model has kv_cache={self.kv_cache!r} and attention "
                f"{getattr(self.model.config, '_attn_implementation', None)!r}"
            )
        elif step == "graphs" and not cuda:
            raise ValueError(
                f"step='graphs' needs a CUDA device; this model is on {self.device} "
                "(step='buckets' runs the same fixed shapes eagerly)"
            )
        self._step = step
        self._update_growth()
        self._steps.clear()

    def _turn_graphs_off(self, reason: str) -> None:
        """Capture no more CUDA graphs (`reason`: why): decode steps run eagerly in their fixed
        shapes, and the pool grows by `MIN_GROWTH` blocks at least again."""
        self._graphs_off = reason
        self._update_growth()

    def _update_growth(self) -> None:
        # while CUDA graphs may name the pool's tensors, each growth captures them all again
        if self._pool is not None:
            graphs = self._step == "graphs" and self._graphs_off is None
            self._pool.min_growth = GRAPH_MIN_GROWTH if graphs else MIN_GROWTH

    @property
    def step_shapes(self) -> list[tuple[int, int]]:
        """The (rows, past positions) shapes of the fixed-shape steps met since the pool last
        grew (or the step mode last changed)."""
        return sorted(self._steps)

    # -- the protocol ----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        ids = list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))
        bos_id, bos = self.tokenizer.bos_token_id, self.tokenizer.bos_token
        # a prompt that already spells out the BOS token (chat templates often do) keeps just it
        if (
            add_special_tokens
            and bos_id is not None
            and bos
            and text.startswith(bos)
            and ids[:2] == [bos_id, bos_id]
        ):
            del ids[0]
        return ids

    def chat(self, messages: str | list[dict[str, str]], *, system: str | None = None) -> str:
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(
                f"the tokenizer of {self._name()} has no chat template: build the prompt string "
                "yourself and pass it to lm.context()"
            )
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        else:
            messages = list(messages)
        if system is not None:
            messages = [{"role": "system", "content": system}, *messages]
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )

    def _extend(
        self, parents: list[Any], new_tokens: list[list[int]]
    ) -> tuple[list[Any], torch.Tensor]:
        states, logprobs, _ = self._forward(parents, new_tokens, None)
        return states, logprobs

    def _extend_scored(
        self, parents: list[Any], new_tokens: list[list[int]], score: Sequence[bool]
    ) -> tuple[list[Any], torch.Tensor, list[torch.Tensor | None]]:
        return self._forward(parents, new_tokens, score)

    def _forward(
        self, parents: list[Any], new_tokens: list[list[int]], score: Sequence[bool] | None
    ) -> tuple[list[Any], torch.Tensor, list[torch.Tensor | None]]:
        """One forward pass over the rows; the scored rows keep the logits of every position."""
        lens = [len(t) for t in new_tokens]
        if min(lens) == 0:
            raise ValueError("HFModel._extend: every sequence needs at least one new token")
        # checked here: an id out of range would be a device-side assert on CUDA
        lowest, highest = min(map(min, new_tokens)), max(map(max, new_tokens))
        if lowest < 0 or highest >= self.vocab_size:
            raise ValueError(f"HFModel._extend: a token id is outside 0..{self.vocab_size - 1}")
        if self.device.type == "cpu":
            before_cpu_pass()  # torch's threads: the cores other processes leave free
        if self._pool is None:
            return forward_batch(self, parents, new_tokens, score)
        with self._pool.lock:  # one forward pass at a time writes to the pool
            return forward_paged(self, parents, new_tokens, score)

    @property
    def kv_bytes(self) -> int:
        """Bytes of keys and values that live contexts use.

        "paged": the blocks that some live state refers to (each block counted once, however
        many states share it). "batch": the tensors of every batch that some live context
        still uses (a batch's tensors hold every row's whole sequence, and stay alive as long
        as any one of its rows is used)."""
        pool = self._pool
        if pool is None:
            return sum(g.nbytes for g in list(self._groups))
        with pool.lock:
            pool.drain()
            return pool.used_bytes

    @property
    def kv_reserved_bytes(self) -> int:
        """Bytes of keys and values allocated: the pool's capacity ("paged", which grows by half
        when no block is free and keeps its free blocks for reuse), or `kv_bytes` ("batch")."""
        pool = self._pool
        if pool is None:
            return self.kv_bytes
        return pool.reserved_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of keys and values one token takes, stored once (all layers)."""
        c = self.model.config
        heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        size = torch.empty(0, dtype=self.model.dtype).element_size()
        return 2 * c.num_hidden_layers * heads * dim * size

    # -- helpers ---------------------------------------------------------------------------------

    def _name(self) -> str:
        if self.spec is not None and self.spec.kind == "embedded":
            # not the path of the file it was read from, which says where ppl is installed
            return "embedded SmolLM2-135M-Instruct"
        return str(getattr(self.model.config, "_name_or_path", "") or type(self.model).__name__)

    def __repr__(self) -> str:
        return (
            f"HFModel({self._name()!r}, vocab_size={self.vocab_size}, device={self.device}, "
            f"dtype={str(self.model.dtype).removeprefix('torch.')})"
        )

    # -- pickling and copying --------------------------------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        # a model travels as its spec: the receiving process builds it (once) from the spec
        if self.spec is None:
            raise TypeError(
                f"cannot pickle HFModel({self._name()!r}): it was wrapped from an in-memory "
                "model, so another process could not rebuild it. Make it with "
                'ppl.models.spec("hf", name_or_path, dtype=..., device=..., **options).build() '
                "(or HFModel.from_pretrained with plain keyword values, or ppl.models.load())"
            )
        return (_build_spec, (self.spec,))

    def __copy__(self) -> HFModel:
        return self  # shared like `__deepcopy__`, rather than rebuilt through `__reduce__`
