"""The HuggingFace transformers backend: `HFModel` and the machinery under it.

* `model`: `HFModel`, the model runner (forward passes, the protocol, loading, pickling);
* `block_pool`: the paged KV cache's block manager (blocks, reference counts, copy on write);
* `paged`: the attention plan of a forward pass over the blocks;
* `fixed_step`: fixed-shape decode steps (`row_bucket`, `key_bucket`) and CUDA graphs;
* `batch_cache`: the other KV cache, one tensor per layer per forward pass;
* `compat`: what differs between transformers releases;
* `tokens`: the exact bytes of every token (`token_bytes_of`).

Modules here import one another by their own names, never this package, so that importing
any of them pulls in no cycle.
"""

from ppl.models.hf.fixed_step import GRAPH_MIN_GROWTH, key_bucket, row_bucket
from ppl.models.hf.model import HFModel
from ppl.models.hf.tokens import token_bytes_of

__all__ = ["GRAPH_MIN_GROWTH", "HFModel", "key_bucket", "row_bucket", "token_bytes_of"]
