"""Model specs: a small, picklable description of a language model that any process can build.

A worker process (a Ray actor, the `ppl` command line) cannot receive a model's weights with
every task; it receives a `ModelSpec` and builds the model from it once. Three promises:

* A spec is a frozen value: equal specs hash alike, pickle to a few hundred bytes, and
  `str(spec)` is its command-line form (`"embedded"`, `"hf:NAME_OR_PATH"`), read back by
  `ModelSpec.parse`.
* `spec.build()` loads the model once per process: every later `build()` of an equal spec
  returns the same object (memoised in `_built`, below, for the life of the process), and so
  does a spec that only spells out this machine's default device and dtype.
* A model made by `ppl.models.load()`, `HFModel.from_pretrained(...)` or `spec.build()` carries
  the spec it was made from as `lm.spec`, and pickles as that spec: a program that closes over
  `lm` sends the spec, and unpickling calls `spec.build()` in the receiving process. Its device
  and dtype are recorded as they were resolved (e.g. "cpu", "float32"), so the copy is the same
  model, not whatever the receiving machine would pick by default. A model wrapped from an
  in-memory object has no spec and refuses to pickle.

Only plain values (None, bool, int, float, str, tuples of them) may appear in a spec: they are
what makes it hashable and picklable without importing anything heavy. Local paths are taken
as they are: a worker on another machine needs the same path.

The backends (`ppl.models.hf`, `ppl.models.default`) import this module and it imports none of
them: `build()` calls the loader registered for the spec's kind in `LOADERS`, which `ppl.models`
fills in, and the device and dtype defaults (`resolve_device`, `resolve_dtype`) live here.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ppl.models.base import LanguageModel

KINDS = ("embedded", "hf")
#: how an `HFModel` keeps keys and values (`HFModel(..., kv_cache=...)`); the first is the default
KV_CACHES = ("paged", "batch")
#: token slots per block of the paged KV cache, by default
KV_BLOCK = 16
#: how an `HFModel` runs its decode steps (`HFModel(..., step=...)`); the first is the default
STEPS = ("auto", "eager", "buckets", "graphs")
#: what computes a HuggingFace model's forward pass (`HFModel.from_pretrained`'s `engine`)
ENGINES = ("auto", "native", "transformers")
FORMS = '"embedded" or "hf:NAME_OR_PATH" (a HuggingFace model id or a local directory)'
_SECRET_OPTIONS = frozenset({"token", "use_auth_token"})

#: kind -> the function that loads a model of that kind from its spec. `ppl.models` registers
#: them (importing a backend only when a model of its kind is built): the backends import this
#: module, it imports none of them.
LOADERS: dict[str, Callable[[ModelSpec], LanguageModel]] = {}

# spec -> model, held for the life of the process: what makes a worker build its model once
_built: dict[ModelSpec, LanguageModel] = {}
# spec -> model made from it by any route (load, from_pretrained, build), while it is alive:
# unpickling a model in the process that made it gives back that object rather than a copy
_alive: weakref.WeakValueDictionary[ModelSpec, LanguageModel] = weakref.WeakValueDictionary()
# Lock order: _build_lock (held while loading), then the loaders' own locks, then _alive_lock
# (held for one dictionary operation, never while taking another lock), so no two can deadlock.
_build_lock = threading.Lock()
_alive_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class KVOptions:
    """How an `HFModel` keeps keys and values and runs its decode steps: the one home of these
    three settings, their defaults and their checks.

    `ppl.models.load`, `HFModel`, `HFModel.from_pretrained`, `spec` and `ModelSpec` take them as
    the keywords `kv_cache`, `kv_block` and `step`; each builds a `KVOptions` at once (so a bad
    value is refused before any weights load) and passes that on.

    Attributes:
        kv_cache: "paged" (the default) or "batch" (`HFModel`).
        kv_block: token slots per block of the paged cache (default 16).
        step: "auto" (the default), "eager", "buckets" or "graphs" (`HFModel.step`).

    Raises ValueError, naming the setting and what it may be, for a value no model takes.
    """

    kv_cache: str = KV_CACHES[0]
    kv_block: int = KV_BLOCK
    step: str = STEPS[0]

    def __post_init__(self) -> None:
        if self.kv_cache not in KV_CACHES:
            raise ValueError(
                f"unknown kv_cache {self.kv_cache!r}: use one of {', '.join(map(repr, KV_CACHES))}"
            )
        block = self.kv_block
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"kv_block must be a positive number of tokens, got {block!r}")
        if self.step not in STEPS:
            raise ValueError(
                f"unknown step {self.step!r}: use one of {', '.join(map(repr, STEPS))}"
            )

    def keywords(self) -> dict[str, Any]:
        """The settings as the keywords the loaders take: `HFModel(model, tok, **kv.keywords())`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def changed(self) -> list[tuple[str, Any]]:
        """The (name, value) pairs that differ from the defaults, in field order."""
        default = KVOptions()
        return [(k, v) for k, v in self.keywords().items() if v != getattr(default, k)]


@dataclasses.dataclass(frozen=True, repr=False)
class ModelSpec:
    """How to build a language model: frozen, hashable, picklable.

    Attributes:
        kind: "embedded" (`ppl.models.load()`) or "hf" (`HFModel.from_pretrained`).
        name_or_path: the HuggingFace model id or local directory (None for "embedded").
        dtype: a torch dtype name such as "bfloat16" (None: the backend's default).
        device: a torch device such as "cuda:0" (None: CUDA when available, else the CPU).
        options: extra keyword arguments of `from_pretrained` as sorted (key, value) pairs.
        kv_cache: "paged" (the default) or "batch": how the model keeps keys and values.
        kv_block: token slots per block of the paged cache (default 16).
        step: how decode steps run: "auto" (the default), "eager", "buckets" or "graphs".

    Direct construction normalises as `spec(...)` does: torch dtypes and devices become their
    names, `options` may be given as a mapping.
    """

    kind: str
    name_or_path: str | None = None
    dtype: str | None = None
    device: str | None = None
    options: tuple[tuple[str, Any], ...] = ()
    kv_cache: str = KV_CACHES[0]
    kv_block: int = KV_BLOCK
    step: str = STEPS[0]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"unknown model kind {self.kind!r}: use one of {', '.join(map(repr, KINDS))}"
            )
        name = self.name_or_path
        if name is not None and not isinstance(name, str):
            name = os.fspath(name)
        if self.kind == "hf" and not name:
            raise ValueError(
                'a "hf" model spec needs a HuggingFace model id or a local directory: '
                'spec("hf", "HuggingFaceTB/SmolLM2-360M-Instruct")'
            )
        if self.kind == "embedded" and name is not None:
            raise ValueError(
                f'the "embedded" model takes no name (got {name!r}); for another model use '
                f'spec("hf", "{name}")'
            )
        KVOptions(self.kv_cache, self.kv_block, self.step)  # raises for a bad setting
        options = _sorted_options(self.options)
        if self.kind == "embedded" and any(k != "engine" for k, _ in options):
            raise ValueError(
                'the "embedded" model takes only dtype, device and engine, not '
                f"{', '.join(k for k, _ in options if k != 'engine')}"
            )
        for key, value in options:
            if key == "engine":
                check_engine(value)
        # frozen: normalised values are stored the way dataclasses' own __init__ stores them
        object.__setattr__(self, "name_or_path", name)
        object.__setattr__(self, "dtype", _dtype_name(self.dtype))
        object.__setattr__(self, "device", _device_name(self.device))
        object.__setattr__(self, "options", options)

    @classmethod
    def parse(
        cls,
        text: str,
        *,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> ModelSpec:
        """The spec a command line names: "embedded" or "hf:NAME_OR_PATH".

        `dtype` and `device` (separate command-line options) are added to it. Anything else
        raises a ValueError listing the accepted forms.
        """
        text = text.strip()
        if text == "embedded":
            return cls("embedded", dtype=dtype, device=device)
        kind, colon, name = text.partition(":")
        if kind.strip() == "hf" and colon and name.strip():
            return cls("hf", name.strip(), dtype=dtype, device=device)
        raise ValueError(f"cannot read the model {text!r}: write {FORMS}")

    def build(self) -> LanguageModel:
        """The model this spec describes, loaded on the first call in this process.

        Later calls with an equal spec return the same object. Loading holds a process-wide
        lock, so threads that ask at once load the model once.
        """
        with _build_lock:
            lm = _built.get(self)
            if lm is None:
                # specs that differ only in spelling out this machine's defaults share a model
                resolved = self.resolved()
                lm = _built.get(resolved)
                if lm is None:
                    with _alive_lock:
                        lm = _alive.get(resolved)
                if lm is None:
                    lm = resolved._load()
                _built[resolved] = lm
            _built[self] = lm
        return lm

    def resolved(self) -> ModelSpec:
        """This spec with the device and dtype that building it here would use filled in.

        The defaults: CUDA when available, else the CPU; the dtype `auto_dtype` picks there.
        A model records its resolved spec, so a copy of it is the same model.
        """
        device = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype, device)
        return dataclasses.replace(self, dtype=dtype, device=device)

    def _load(self) -> LanguageModel:
        loader = LOADERS.get(self.kind)
        if loader is None:
            raise RuntimeError(
                f"no loader is registered for {self.kind!r} models: import ppl.models"
            )
        try:
            return loader(self)
        except Exception as e:  # the error says why; the note, which model (with its options)
            e.add_note(f"while loading the model {self!r}")
            raise

    def __str__(self) -> str:
        text = "embedded" if self.kind == "embedded" else f"hf:{self.name_or_path}"
        extras = [f"{k}={v}" for k, v in (("dtype", self.dtype), ("device", self.device)) if v]
        extras += [f"{k}={v}" for k, v in self.kv.changed()]
        return f"{text} ({', '.join(extras)})" if extras else text

    def __repr__(self) -> str:
        # hub tokens must not reach logs and tracebacks, which print reprs
        options = tuple((k, "***" if k in _SECRET_OPTIONS else v) for k, v in self.options)
        fields = [f"{self.kind!r}"]
        if self.name_or_path is not None:
            fields.append(repr(self.name_or_path))
        for key, value in (("dtype", self.dtype), ("device", self.device), ("options", options)):
            if value:
                fields.append(f"{key}={value!r}")
        fields += [f"{k}={v!r}" for k, v in self.kv.changed()]
        return f"ModelSpec({', '.join(fields)})"

    @property
    def kv(self) -> KVOptions:
        """The model's KV cache and step settings as one value."""
        return KVOptions(self.kv_cache, self.kv_block, self.step)


def spec(
    kind: str,
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    kv_cache: str = KV_CACHES[0],
    kv_block: int = KV_BLOCK,
    step: str = STEPS[0],
    **options: Any,
) -> ModelSpec:
    """A `ModelSpec`: `spec("embedded")` or `spec("hf", name_or_path, **from_pretrained_kwargs)`.

    `kv_cache` and `kv_block` choose the model's KV cache and `step` how its decode steps run
    (`HFModel`); the other keywords are options of `from_pretrained`.

    >>> s = spec("hf", "HuggingFaceTB/SmolLM2-360M-Instruct", dtype="bfloat16", revision="main")
    >>> str(s), s.options
    ('hf:HuggingFaceTB/SmolLM2-360M-Instruct (dtype=bfloat16)', (('revision', 'main'),))

    Raises ValueError for an unknown kind, a "hf" spec without a name, or an "embedded" spec
    with one, and TypeError for an option value that is not plain (see the module docstring).
    """
    return ModelSpec(
        kind,
        name_or_path,
        dtype,
        device,
        tuple(options.items()),
        **KVOptions(kv_cache, kv_block, step).keywords(),
    )


def register(model: LanguageModel, model_spec: ModelSpec) -> None:
    """Record that `model` is what `model_spec` builds: set `model.spec` and, while `model` is
    alive, let `model_spec.build()` in this process return it instead of loading a copy.

    Called by the loaders (`load`, `HFModel.from_pretrained`) on every model they make.
    """
    model.spec = model_spec  # type: ignore[attr-defined]
    with _alive_lock:
        _alive[model_spec] = model


def _build_spec(model_spec: ModelSpec) -> LanguageModel:
    """Unpickle a model: build it from its spec (once per process)."""
    return model_spec.build()


# -- devices and dtypes --------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device`, or CUDA when available and the CPU otherwise."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def auto_dtype(device: torch.device) -> torch.dtype:
    """What `dtype="auto"` (or None) is on `device`: bfloat16 on CUDA where supported, float32
    elsewhere, the CPU included.

    Not bfloat16 on a CPU, even one that multiplies it natively (where it ran SMC and `generate`
    1.5x faster): there a row's bfloat16 log-probabilities depend on the other rows of its
    forward pass (the embedded model's differed by up to 0.6 between a row run alone and in a
    batch), so the same text would score differently as the particles around it change, and
    ppl's checks that a text scores the same whichever way it is fed fail. Without the
    instructions it is also slower (docs/models.md, "Precision"). `dtype="bfloat16"` asks for it.
    """
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def check_engine(engine: Any) -> None:
    """Raise a ValueError unless `engine` is one of `ENGINES`."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: use one of {', '.join(map(repr, ENGINES))}")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`dtype` (a torch dtype or its name), or `auto_dtype(device)` for None or "auto"."""
    if dtype is None or dtype == "auto":
        return auto_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(
            f"unknown dtype {dtype!r}: use e.g. 'auto', 'float32', 'bfloat16' or 'float16'"
        )
    return resolved


# -- normalisation -------------------------------------------------------------------------------


def is_plain(value: Any) -> bool:
    """Whether `value` may appear in a spec: None, bool, int, float, str or a tuple of them."""
    if isinstance(value, tuple):
        return all(is_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _sorted_options(
    options: Mapping[str, Any] | Iterable[tuple[str, Any]],
) -> tuple[tuple[str, Any], ...]:
    pairs = list(options.items() if isinstance(options, Mapping) else options)
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"model spec options name a key twice: {sorted(keys)}")
    for key, value in pairs:
        if not isinstance(key, str):
            raise TypeError(f"model spec option names must be str, got {key!r}")
        if not is_plain(value):
            raise TypeError(
                f"model spec option {key}={value!r} is not a plain value (None, bool, int, "
                "float, str or a tuple of them), so the spec could not be hashed and pickled"
            )
    return tuple(sorted(pairs, key=lambda kv: kv[0]))


def _dtype_name(dtype: str | torch.dtype | None) -> str | None:
    """The torch name of a dtype ("bfloat16"), checked; None and "auto" are None."""
    if dtype is None or dtype == "auto":
        return None
    name = str(dtype).removeprefix("torch.")
    if not isinstance(getattr(torch, name, None), torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}: use e.g. 'float32', 'bfloat16' or 'float16'")
    return name


def _device_name(device: str | torch.device | None) -> str | None:
    """The torch name of a device ("cpu", "cuda:1"), checked; None stays None."""
    if device is None:
        return None
    try:
        return str(torch.device(device))
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}: use e.g. 'cpu', 'cuda' or 'cuda:1'") from err
