"""The attention of one forward pass over the block pool: where each key is read and written.

A forward pass of the paged cache hands the model a `DynamicCache` (`paged_cache`) whose
layers (`_PagedLayer`) report `past` cached positions and, in `update`, write each row's real
new keys/values into their slots in place (`index_copy_`), then return the keys/values to
attend to, `[rows, kv_heads, past + width, head_dim]`, gathered from the pool by one
`index_select` per layer with an index built once per forward pass (`PagedPlan`). Padding
positions point at the zero slot, so the layout and the masks are those of a dense left-padded
cache: each row's past is left-padded to the longest past (`past`), its new tokens
right-padded to the longest row (`width`). The gathered tensors are transient: nothing grows by
concatenation, and what a forward pass leaves behind is the new tokens' slots. The
partial-block copies that `BlockPool.extend` asked for are one `index_copy_` per layer for keys
and one for values, made before the new tokens are written.

The plan is plain index arithmetic over block tables: `PagedPlan.build` and `update` need a
pool and tensors, not a model. The fixed-shape steps (`fixed_step`) fill a plan's index tensors
from a buffer of their own instead.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from ppl.models.hf.block_pool import BlockPool, PagedState
from ppl.models.hf.compat import cache_layer_class


class PagedPlan:
    """What one forward pass does with the pool: index tensors built once, on the device.

    * `copy_src` -> `copy_dst`: partial blocks copied for children that cannot append to their
      parent's last block in place (None when there are none),
    * `write`: the slot of every real new token, in the order of `real` (the positions of the
      real tokens in the flattened `[rows * width]` new keys; None when all are real),
    * `gather`: `[rows * (past + width)]` slots, each row's keys left-padded to `past` and its
      new tokens right-padded to `width`, padding pointing at the zero slot;
    * `dense`: no row is padded (every row has `past` tokens and gets `width` new ones), so
      the model needs no mask and numbers the positions itself.
    """

    __slots__ = (
        "pool",
        "rows",
        "past",
        "width",
        "dense",
        "gather",
        "write",
        "real",
        "copy_src",
        "copy_dst",
    )

    def __init__(self, pool: BlockPool, rows: int, past: int, width: int) -> None:
        self.pool = pool
        self.rows, self.past, self.width = rows, past, width
        self.dense = False
        self.gather: torch.Tensor
        self.write: torch.Tensor
        self.real: torch.Tensor | None = None
        self.copy_src: torch.Tensor | None = None
        self.copy_dst: torch.Tensor | None = None

    @classmethod
    def build(
        cls,
        pool: BlockPool,
        states: list[PagedState],
        starts: list[int],
        copies: tuple[list[int], list[int]],
        width: int,
        device: torch.device,
    ) -> PagedPlan:
        """The plan of a forward pass that extends sequences of `starts` tokens to the
        children `states` (from `pool.extend`, with its `copies`: sources, destinations), the
        new tokens right-padded to `width`."""
        size = pool.block
        past = max(starts)
        lens = [s.length - start for s, start in zip(states, starts, strict=True)]
        # no padding: every row has `past` tokens and gets `width` new ones
        dense = all(s == past for s in starts) and all(m == width for m in lens)
        copy_src, copy_dst = copies
        # slot of every key position of the attention input: row i holds `past - starts[i]`
        # left-padding positions, its `starts[i] + lens[i]` tokens, then right-padding
        blocks = max(len(s.blocks) for s in states)
        tables = torch.tensor([s.blocks + [0] * (blocks - len(s.blocks)) for s in states])
        first = torch.tensor([past - s for s in starts]).unsqueeze(1)  # column of position 0
        ends = torch.tensor([s.length for s in states]).unsqueeze(1)
        pos = torch.arange(past + width).unsqueeze(0) - first
        real = (pos >= 0) & (pos < ends)
        pos = pos.clamp(0, blocks * size - 1)
        slots = torch.where(real, tables.gather(1, pos // size) * size + pos % size, 0)
        gather = slots.reshape(-1)
        write = slots[:, past:].reshape(-1)  # the new tokens' slots (padding: 0)
        parts = [gather]
        real_new = None
        if not dense:  # only the real new tokens are written
            real_new = real[:, past:].reshape(-1).nonzero()[:, 0]
            write = write[real_new]
            parts.append(real_new)
        parts.append(write)
        if copy_src:
            parts += [torch.tensor(copy_src), torch.tensor(copy_dst)]
        # one transfer to the device for all index tensors
        pieces = torch.cat(parts).to(device).split([len(t) for t in parts])
        plan = cls(pool, len(states), past, width)
        plan.dense = dense
        plan.gather = pieces[0]
        if real_new is not None:
            plan.real = pieces[1]
        plan.write = pieces[2 if real_new is not None else 1]
        if copy_src:
            plan.copy_src, plan.copy_dst = pieces[-2], pieces[-1]
        return plan

    def update(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new `keys`/`values` (`[rows, kv_heads, width, head_dim]`) of `layer` in
        the pool and return the keys/values to attend to, `[rows, kv_heads, past + width, dim]`."""
        pool = self.pool
        pool.ensure(layer, keys, values)
        out = []
        for new, store in ((keys, pool.keys[layer]), (values, pool.values[layer])):
            assert store is not None
            if self.copy_src is not None:
                store.index_copy_(0, self.copy_dst, store.index_select(0, self.copy_src))
            rows, heads, width, dim = new.shape
            flat = new.transpose(1, 2).reshape(rows * width, heads, dim)
            if self.real is not None:
                flat = flat.index_select(0, self.real)
            store.index_copy_(0, self.write, flat)
            full = store.index_select(0, self.gather).view(rows, self.past + width, heads, dim)
            out.append(full.transpose(1, 2))
        return out[0], out[1]


def paged_cache(cache_cls: type, plan: PagedPlan, num_layers: int) -> Any:
    """A `DynamicCache` (of `cache_cls`) whose layers read and write the pool through `plan`."""
    cache = cache_cls()
    layer_cls = _paged_layer_class(cache_layer_class(cache_cls))
    cache.layers.extend(layer_cls(plan, i) for i in range(num_layers))
    return cache


@functools.cache
def _paged_layer_class(base: type) -> type:
    """A cache layer (subclassing `base`: transformers' `DynamicLayer`, or the native model's
    `Layer`) for a forward pass over the pool. Built on first use: transformers is imported
    lazily, and only its releases with cache layers, >= 4.56, have the class."""

    class _PagedLayer(base):  # type: ignore[misc, valid-type]
        """A cache layer that reads and writes one layer of a `BlockPool` through a plan.

        It reports `past` cached positions (the rows' common, left-padded past), so the model
        numbers positions and sizes masks exactly as for a dense cache of that length.
        """

        def __init__(self, plan: PagedPlan, layer: int) -> None:
            super().__init__()
            self.plan = plan
            self.layer = layer
            self.is_initialized = True  # nothing to set up: the pool holds the tensors

        def lazy_initialization(self, *args: Any, **kwargs: Any) -> None:
            return None

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            return self.plan.update(self.layer, key_states, value_states)

        def get_seq_length(self, *args: Any) -> int:
            return self.plan.past

        def get_mask_sizes(self, query: int | torch.Tensor, *args: Any) -> tuple[int, int]:
            # the query length (releases before 5.x pass the query's cache positions instead)
            length = query if isinstance(query, int) else int(query.shape[0])
            return self.plan.past + length, 0

    return _PagedLayer
