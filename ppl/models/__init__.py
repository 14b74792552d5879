"""Language models: the `LanguageModel` protocol and its backends.

* `load()`: the embedded default model, SmolLM2-135M-Instruct, on the CPU.
* `HFModel.from_pretrained(...)`: any causal LM that HuggingFace transformers loads.
* `FunctionLM(vocab, next_token)`: a model built from a Python function (toy and test models).
* `lm.tempered(T)` / `Tempered`: a model at a temperature (its logits divided by T).
* `spec(kind, ...)` / `ModelSpec`: a picklable description of a model that worker processes
  build once (`spec("hf", "HuggingFaceTB/SmolLM2-360M-Instruct").build()`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ppl.models import spec as _spec
from ppl.models.base import ContextWindowError, LanguageModel
from ppl.models.spec import KVOptions, ModelSpec, spec
from ppl.models.tempered import Tempered  # registers `lm.tempered(T)`
from ppl.models.toy import FunctionLM

if TYPE_CHECKING:
    from ppl.models.default import load
    from ppl.models.hf.model import HFModel

__all__ = [
    "LanguageModel",
    "ContextWindowError",
    "FunctionLM",
    "HFModel",
    "KVOptions",
    "ModelSpec",
    "Tempered",
    "load",
    "spec",
]


def __getattr__(name: str) -> Any:
    # transformers takes seconds to import: only pay for it when a HF model is wanted
    if name == "HFModel":
        from ppl.models.hf.model import HFModel

        return HFModel
    if name == "load":
        from ppl.models.default import load

        return load
    raise AttributeError(f"module 'ppl.models' has no attribute {name!r}")


# -- what `ModelSpec.build()` calls for each kind ------------------------------------------------
# Registered here rather than in the backends so that `spec` imports no backend (the backends
# import `spec`), and so that a backend is imported only when a model of its kind is built.


def _load_embedded(model_spec: ModelSpec) -> LanguageModel:
    from ppl.models.default import load

    return load(
        device=model_spec.device,
        dtype=model_spec.dtype,
        **model_spec.kv.keywords(),
        **dict(model_spec.options),
    )


def _load_hf(model_spec: ModelSpec) -> LanguageModel:
    from ppl.models.hf.model import HFModel

    assert model_spec.name_or_path is not None  # ModelSpec.__post_init__ holds it
    return HFModel.from_pretrained(
        model_spec.name_or_path,
        device=model_spec.device,
        dtype=model_spec.dtype,
        **model_spec.kv.keywords(),
        **dict(model_spec.options),
    )


_spec.LOADERS.update(embedded=_load_embedded, hf=_load_hf)
