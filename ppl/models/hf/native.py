"""A Llama forward pass in plain torch, for loading a converted model in a second.

Importing transformers' model code takes some 4-5 s in every process (it pulls in
`torch.distributed.tensor`, `torch._dynamo`, sympy and scipy), and its tokenizer code another
two: far more than reading the embedded model's weights (0.1 s). `NativeLlama` is the Llama
architecture (SmolLM, Llama 2 and 3 without RoPE scaling, ...) as some 200 lines of torch that
read a transformers checkpoint directory (`config.json`, `model.safetensors`) without importing
transformers. It takes the arguments `HFModel` gives a transformers model and computes what
`LlamaForCausalLM` computes with SDPA attention, operation for operation:

* `input_ids` `[rows, width]`; `attention_mask`: 2D (1 = a real key, over the cached past and
  the new tokens) or 4D (boolean or additive, as the fixed-shape steps give it); with neither,
  the new tokens attend causally to the whole past; `position_ids` (default: after the past);
* `past_key_values`: a cache with `update(keys, values, layer)` returning the keys and values
  to attend to, and `get_seq_length()`: transformers' `DynamicCache`, the paged cache's layers,
  or `Cache` here (`cache_class`), which `HFModel` uses with this model so that transformers is
  never imported;
* `logits_to_keep`: 0 (every position), a count of trailing positions, or their indices.

It returns an object with `logits` and `past_key_values`. `supported(config)` says which
configs it computes exactly; `NativeLlama.from_directory` returns None for any other, and the
loader uses transformers. `generate` (and `to_transformers()`) build transformers'
`LlamaForCausalLM` over the same weight tensors on first use, for code that wants transformers'
own API; the weights are not copied.

`tests/models/test_native.py` compares its logits with transformers' on random and real
models, with and without padding, cache and masks.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

#: config keys whose presence with a value other than these changes the computation
_NEUTRAL = {
    "attention_bias": (False, None),
    "mlp_bias": (False, None),
    "attention_dropout": (0.0, 0, None),
    "pretraining_tp": (1, None),
    "hidden_act": ("silu",),
    "rope_scaling": (None,),
    "sliding_window": (None,),
    "use_sliding_window": (False, None),
    "layer_types": (None,),
}


def _rope_theta(config: dict[str, Any]) -> float | None:
    """The RoPE base of a config with the default RoPE (None: another kind, or unknown)."""
    params = config.get("rope_parameters")
    if params is None:  # transformers 4.x configs
        return float(config.get("rope_theta", 10000.0))
    if not isinstance(params, dict) or params.get("rope_type", "default") != "default":
        return None
    if set(params) - {"rope_type", "rope_theta"}:
        return None
    return float(params.get("rope_theta", 10000.0))


def _rope_frequencies(config: NativeConfig) -> torch.Tensor:
    """RoPE's inverse frequencies, on the CPU (also under a meta device context)."""
    theta = _rope_theta(config.to_dict())
    assert theta is not None
    dim = config.head_dim
    steps = torch.arange(0, dim, 2, dtype=torch.float, device="cpu")
    return 1.0 / (theta ** (steps / dim))


def supported(config: dict[str, Any]) -> str | None:
    """Why `NativeLlama` cannot compute the model of `config` (a `config.json` dict), or None
    when it can, exactly as transformers' `LlamaForCausalLM` does."""
    if config.get("model_type") != "llama":
        return f"model_type {config.get('model_type')!r} is not 'llama'"
    architectures = config.get("architectures") or ["LlamaForCausalLM"]
    if architectures != ["LlamaForCausalLM"]:
        return f"architectures {architectures} are not ['LlamaForCausalLM']"
    for key, neutral in _NEUTRAL.items():
        if key in config and config[key] not in neutral:
            return f"{key}={config[key]!r}"
    types = config.get("layer_types")
    if types is not None and any(t != "full_attention" for t in types):
        return f"layer_types {sorted(set(types))}"
    if _rope_theta(config) is None:
        return f"RoPE {config.get('rope_parameters')!r} is not the default kind"
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if not isinstance(config.get(key), int):
            return f"{key} is missing"
    return None


class NativeConfig(SimpleNamespace):
    """A model config read from `config.json`: its keys as attributes (`to_dict()` gives them
    back), with what transformers' `LlamaConfig` would default."""

    def __init__(self, values: dict[str, Any]) -> None:
        values = dict(values)
        values.setdefault("num_key_value_heads", values["num_attention_heads"])
        values.setdefault("head_dim", values["hidden_size"] // values["num_attention_heads"])
        values.setdefault("rms_norm_eps", 1e-6)
        values.setdefault("tie_word_embeddings", False)
        values.setdefault("max_position_embeddings", 2048)
        values.setdefault("_name_or_path", "")
        super().__init__(**values)
        self._attn_implementation = "sdpa"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "_attn_implementation"}


class Layer:
    """One layer's keys and values `[rows, kv_heads, positions, head_dim]`, grown by `update`."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.is_initialized = False
        self.dtype: torch.dtype | None = None
        self.device: torch.device | None = None

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is None or self.values is None:
            self.keys, self.values = keys, values
        else:
            self.keys = torch.cat([self.keys, keys], dim=-2)
            self.values = torch.cat([self.values, values], dim=-2)
        self.is_initialized = True
        return self.keys, self.values

    def get_seq_length(self, *args: Any) -> int:
        return 0 if self.keys is None else int(self.keys.shape[-2])


class Cache:
    """The keys and values of a forward pass's rows, one `Layer` per layer (transformers'
    `DynamicCache` protocol, as much of it as `NativeLlama` and `HFModel` use)."""

    layer_class = Layer

    def __init__(self) -> None:
        self.layers: list[Any] = []

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, layer: int, *args: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        while len(self.layers) <= layer:
            self.layers.append(self.layer_class())
        return self.layers[layer].update(keys, values)

    def get_seq_length(self, layer: int = 0) -> int:
        return self.layers[layer].get_seq_length() if len(self.layers) > layer else 0


#: a CPU forward pass with 2 to this many rows multiplies as `weight @ x.T` (`Linear`)
SMALL_ROWS = 64
#: the row count oneDNN's packed weights are laid out for (`NativeLlama.pack`)
PACK_ROWS = 8


class Linear(nn.Linear):
    """`nn.Linear` without a random initialisation (the weights always come from a checkpoint;
    drawing them on the meta device would import torch's compiler, a second per load), and
    with the product of a few rows on the CPU taken as `(weight @ x.T).T`.

    A decode step multiplies a few rows by every weight matrix, and on the CPU its cost is
    reading the weights. For 2 to 64 rows, torch's CPU `linear` (`x @ weight.T`) took up to
    3.5x as long as `weight @ x.T` on the embedded model's matrices (a 2-core AVX2 machine; the
    output layer, 49152 x 576, at 4 rows: 17.7 ms against 5.0 ms), and a decode step of the
    embedded model at 4, 8 and 16 rows 1.75, 1.18 and 1.22 times as long. The two sum in
    another order, so they differ in the last bits, as any two batch sizes already do. One
    row, more than 64, and other devices use `linear`.
    """

    def reset_parameters(self) -> None:
        return None

    #: the weight in oneDNN's packed layout (`NativeLlama.pack`), or None
    packed: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _product(x, self.weight, self.packed)


def _pack(weight: torch.Tensor) -> torch.Tensor | None:
    """`weight` in oneDNN's packed layout for products of a few rows, or None where that is
    not available (not a float32 CPU tensor, a torch without oneDNN)."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        return None
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS)
    except (AttributeError, RuntimeError, NotImplementedError):
        return None


def _product(
    x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor | None = None
) -> torch.Tensor:
    """`x @ weight.T` (`F.linear` without a bias): with the packed weight for float32 on the
    CPU (`NativeLlama.pack`), else as `(weight @ x.T).T` for 2 to `SMALL_ROWS` rows on the CPU
    (`Linear`), else `F.linear`."""
    size = weight.shape[1]
    rows = x.numel() // size
    if packed is not None and x.device.type == "cpu" and x.dtype == torch.float32:
        flat = x.reshape(rows, size).contiguous()
        out = torch.ops.mkldnn._linear_pointwise(flat, packed, None, "none", [], "")
        return out.view(*x.shape[:-1], weight.shape[0])
    if not 1 < rows <= SMALL_ROWS or x.device.type != "cpu":
        return F.linear(x, weight)
    out = (weight @ x.reshape(rows, size).t()).t().contiguous()
    return out.view(*x.shape[:-1], weight.shape[0])


def _fuse(linears: list[nn.Linear]) -> torch.Tensor:
    """One weight matrix holding `linears`' weights one above the other; each linear's weight
    becomes a view of its rows (no copy stays behind), so one product computes all of them."""
    fused = torch.cat([lin.weight.detach() for lin in linears])
    start = 0
    for lin in linears:
        end = start + lin.out_features
        lin.weight = nn.Parameter(fused[start:end], requires_grad=False)
        start = end
    return fused


class Embedding(nn.Embedding):
    """`nn.Embedding` without a random initialisation (see `Linear`)."""

    def reset_parameters(self) -> None:
        return None


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    turned = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + turned * sin


class Attention(nn.Module):
    def __init__(self, c: NativeConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.dim = (
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
        )
        self.q_proj = Linear(c.hidden_size, self.heads * self.dim, bias=False)
        self.k_proj = Linear(c.hidden_size, self.kv_heads * self.dim, bias=False)
        self.v_proj = Linear(c.hidden_size, self.kv_heads * self.dim, bias=False)
        self.o_proj = Linear(self.heads * self.dim, c.hidden_size, bias=False)
        #: q, k and v's weights in one matrix (`NativeLlama.fuse`), or None; packed, or None
        self.qkv: torch.Tensor | None = None
        self.qkv_packed: torch.Tensor | None = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: Any,
        layer: int,
    ) -> torch.Tensor:
        rows, width, _ = x.shape
        if self.qkv is not None and self.qkv.device == x.device:
            kv = self.kv_heads * self.dim
            qkv = _product(x, self.qkv, self.qkv_packed)
            q, k, v = qkv.split([self.heads * self.dim, kv, kv], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.reshape(rows, width, self.heads, self.dim).transpose(1, 2)
        k = k.reshape(rows, width, self.kv_heads, self.dim).transpose(1, 2)
        v = v.reshape(rows, width, self.kv_heads, self.dim).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        k, v = cache.update(k, v, layer)
        rep = self.heads // self.kv_heads
        if width == 1 and rep > 1:
            # one query per row: its heads sharing a key head become that head's queries
            q = q.reshape(rows, self.kv_heads, rep, self.dim)
        elif rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        # without a mask, new tokens with no past attend causally (`NativeLlama._mask`)
        causal = mask is None and width > 1
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        out = out.reshape(rows, self.heads, width, self.dim).transpose(1, 2)
        return self.o_proj(out.reshape(rows, width, self.heads * self.dim))


class MLP(nn.Module):
    def __init__(self, c: NativeConfig) -> None:
        super().__init__()
        self.gate_proj = Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = Linear(c.intermediate_size, c.hidden_size, bias=False)
        #: gate and up's weights in one matrix (`NativeLlama.fuse`), or None; packed, or None
        self.gate_up: torch.Tensor | None = None
        self.gate_up_packed: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None and self.gate_up.device == x.device:
            gate, up = _product(x, self.gate_up, self.gate_up_packed).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, c: NativeConfig) -> None:
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: Any,
        layer: int,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    """The transformer under the output layer (transformers' `LlamaModel`: `model.*` keys)."""

    def __init__(self, c: NativeConfig) -> None:
        super().__init__()
        self.embed_tokens = Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class NativeLlama(nn.Module):
    """transformers' `LlamaForCausalLM` with SDPA attention, computed without transformers."""

    #: the cache `HFModel` builds for this model's forward passes
    cache_class = Cache

    def __init__(self, config: NativeConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Body(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", _rope_frequencies(config), persistent=False)
        self.generation_config = SimpleNamespace(eos_token_id=config.eos_token_id)

    # -- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_directory(
        cls, directory: Path, dtype: torch.dtype, device: torch.device | str = "cpu"
    ) -> NativeLlama | None:
        """The model saved in `directory` (`config.json`, `model.safetensors`), or None when
        its config is not one this class computes exactly (`supported`)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        weights = directory / "model.safetensors"
        if not weights.is_file():
            return None
        config = json.loads((directory / "config.json").read_text())
        if supported(config) is not None:
            return None
        model = cls._empty(NativeConfig(config))
        generation = directory / "generation_config.json"
        if generation.is_file():
            eos = json.loads(generation.read_text()).get("eos_token_id")
            if eos is not None:
                model.generation_config.eos_token_id = eos
        state = load_file(str(weights), device=str(device))
        model._assign(state, dtype)
        del state
        return model.to(device).fuse().pack().eval()

    @classmethod
    def from_transformers(cls, hf_model: Any) -> NativeLlama | None:
        """The same model over the weight tensors of transformers' `LlamaForCausalLM`
        `hf_model` (shared, not copied), or None when its config is not supported."""
        config = hf_model.config.to_dict()
        if type(hf_model).__name__ != "LlamaForCausalLM" or supported(config) is not None:
            return None
        model = cls._empty(NativeConfig(config))
        generation = getattr(hf_model, "generation_config", None)
        model.generation_config.eos_token_id = getattr(generation, "eos_token_id", None)
        model._assign(dict(hf_model.state_dict()), None)
        model = model.to(next(hf_model.parameters()).device).fuse().pack().eval()
        # transformers' model reads the fused weights' views too: one copy of the weights
        hf_model.load_state_dict(model.state_dict(), strict=False, assign=True)
        model.__dict__["_transformers"] = hf_model
        return model

    @classmethod
    def _empty(cls, config: NativeConfig) -> NativeLlama:
        with torch.device("meta"):  # no memory for the weights: the checkpoint's are assigned
            return cls(config)

    def _assign(self, state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> None:
        tied = self.config.tie_word_embeddings
        if tied:  # one tensor, saved under either name
            weight = state.get("model.embed_tokens.weight", state.get("lm_head.weight"))
            if weight is None:
                raise ValueError("the checkpoint has neither embeddings nor an output layer")
            state["model.embed_tokens.weight"] = state["lm_head.weight"] = weight
        if dtype is not None:
            state = {k: v.to(dtype) for k, v in state.items()}
        missing, unexpected = self.load_state_dict(state, strict=False, assign=True)
        unexpected = [k for k in unexpected if not k.endswith("rotary_emb.inv_freq")]
        if missing or unexpected:
            raise ValueError(
                f"the checkpoint does not match the config: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        if tied:
            self.lm_head.weight = self.model.embed_tokens.weight

    def fuse(self) -> NativeLlama:
        """Put each layer's q, k and v weights in one matrix, and its gate and up weights in
        another (the parameters become views of them: no memory is added), so that each takes
        one product per forward pass. A model moved to another device after this runs unfused.
        """
        for layer in self.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            attn.qkv = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
            mlp.gate_up = _fuse([mlp.gate_proj, mlp.up_proj])
        return self

    def pack(self) -> NativeLlama:
        """On the CPU in float32, also keep every product's weights in oneDNN's packed layout,
        which multiplies a few rows faster than torch's `linear` or `Linear`'s `weight @ x.T`:
        a decode step of the embedded model at 8 and 16 rows took 0.72x and 0.83x the time of
        `weight @ x.T` (a 2-core AVX2 machine), and one row 0.65x of `linear`. The packed
        copies take as much memory again as the weights they pack (540 MB for the embedded
        model). Elsewhere, or where torch lacks oneDNN, it does nothing. The packed copies are
        made once: a model whose weights change afterwards must be packed again, and one moved
        to another device or dtype runs on its plain weights.
        """
        head = _pack(self.lm_head.weight)
        if head is None:
            return self
        self.lm_head.packed = head
        for layer in self.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            attn.o_proj.packed = _pack(attn.o_proj.weight)
            mlp.down_proj.packed = _pack(mlp.down_proj.weight)
            if attn.qkv is not None:
                attn.qkv_packed = _pack(attn.qkv)
            if mlp.gate_up is not None:
                mlp.gate_up_packed = _pack(mlp.gate_up)
            for lin in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
                fused = attn.qkv if lin in (attn.q_proj, attn.k_proj, attn.v_proj) else mlp.gate_up
                lin.packed = None if fused is not None else _pack(lin.weight)
        return self

    # -- what `HFModel` and other code read ------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def to_transformers(self) -> Any:
        """transformers' `LlamaForCausalLM` over this model's weight tensors (built once,
        importing transformers; the weights are shared, not copied)."""
        twin = self.__dict__.get("_transformers")
        if twin is None:
            from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

            config = LlamaConfig(**self.config.to_dict())
            config._attn_implementation = "sdpa"
            with torch.device("meta"):
                twin = LlamaForCausalLM(config)
            state = dict(self.state_dict())
            twin.load_state_dict(state, strict=False, assign=True)
            if config.tie_word_embeddings:
                twin.tie_weights()
            # its RoPE buffers are computed, not loaded: build them off the meta device
            twin.model.rotary_emb = type(twin.model.rotary_emb)(config=config).to(self.device)
            eos = self.generation_config.eos_token_id
            twin.generation_config = GenerationConfig.from_model_config(config)
            if eos is not None:
                twin.generation_config.eos_token_id = eos
            twin.eval()
            self.__dict__["_transformers"] = twin
        return twin

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """transformers' `generate` (`to_transformers().generate`)."""
        return self.to_transformers().generate(*args, **kwargs)

    # -- the forward pass ------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = True,
        logits_to_keep: int | torch.Tensor = 0,
    ) -> SimpleNamespace:
        cache = past_key_values if past_key_values is not None else Cache()
        rows, width = input_ids.shape
        past = cache.get_seq_length()
        device = input_ids.device
        if position_ids is None:
            position_ids = torch.arange(past, past + width, device=device).unsqueeze(0)
        mask = self._mask(attention_mask, rows, width, past, device)
        x = self.model.embed_tokens(input_ids)
        freqs = position_ids[..., None].float() * self.inv_freq.to(device)
        angles = torch.cat((freqs, freqs), dim=-1)
        cos = angles.cos().to(x.dtype).unsqueeze(1)
        sin = angles.sin().to(x.dtype).unsqueeze(1)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, mask, cache, i)
        if isinstance(logits_to_keep, int):
            if logits_to_keep:
                x = x[:, -logits_to_keep:]
        else:
            x = x[:, logits_to_keep]
        logits = self.lm_head(self.model.norm(x))
        return SimpleNamespace(logits=logits, past_key_values=cache)

    @staticmethod
    def _mask(
        attention_mask: torch.Tensor | None, rows: int, width: int, past: int, device: torch.device
    ) -> torch.Tensor | None:
        """The 4D attention mask of a pass (None: every row attends to all its keys, causally
        among its new tokens)."""
        if attention_mask is not None and attention_mask.dim() == 4:
            return attention_mask  # the caller's own, as transformers takes it
        keys = past + width
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # no padding: as transformers does, drop it
        if attention_mask is None and (width == 1 or past == 0):
            return None  # a single query sees every key; without a past, SDPA's causal flag
        causal = (
            torch.arange(keys, device=device) <= past + torch.arange(width, device=device)[:, None]
        )
        mask = causal[None, None]  # [1, 1, width, keys]
        if attention_mask is not None:
            mask = mask & attention_mask.bool()[:, None, None, :]
        return mask.expand(rows, 1, width, keys)
