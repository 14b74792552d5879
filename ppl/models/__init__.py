"""Language models: the `LanguageModel` protocol and its backends.

* `load()`: the embedded default model, SmolLM2-135M-Instruct, on the CPU.
* `HFModel.from_pretrained(...)`: any causal LM that HuggingFace transformers loads.
* `FunctionLM(vocab, next_token)`: a model built from a Python function (toy and test models).
* `spec(kind, ...)` / `ModelSpec`: a picklable description of a model that worker processes
  build once (`spec("hf", "HuggingFaceTB/SmolLM2-360M-Instruct").build()`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ppl.models.base import LanguageModel
from ppl.models.spec import ModelSpec, spec
from ppl.models.toy import FunctionLM

if TYPE_CHECKING:
    from ppl.models.default import load
    from ppl.models.hf import HFModel

__all__ = ["LanguageModel", "FunctionLM", "HFModel", "ModelSpec", "load", "spec"]


def __getattr__(name: str) -> Any:
    # transformers takes seconds to import: only pay for it when a HF model is wanted
    if name == "HFModel":
        from ppl.models.hf import HFModel

        return HFModel
    if name == "load":
        from ppl.models.default import load

        return load
    raise AttributeError(f"module 'ppl.models' has no attribute {name!r}")
