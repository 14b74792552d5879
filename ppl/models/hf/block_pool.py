"""The paged KV cache's memory: a pool of token slots in blocks, and the sequences that use them.

This module is the block manager, apart from the model runner as serving engines keep it: the
bookkeeping is plain Python (lists of counts and block ids) and the only tensors are the pool's
own, so every invariant below is tested without model weights (`tests/models/test_block_pool.py`).

Layout. Keys and values live in a `BlockPool`: per layer, one keys tensor and one values tensor
of token slots, `[capacity * block, kv_heads, head_dim]`, cut into blocks of `block` slots (16
by default). A state (`PagedState`) is a block table and a length: position `p` is slot
`blocks[p // block] * block + p % block`. Block 0 is never handed out: it stays zero, and
padding reads it.

Lifetime. Each block has a reference count (one per state whose table names it); a state gives
its references back when it dies, and a block with none goes to the free list and is reused
before the pool grows. A dying state only appends its block table to a queue (`released`),
which the next forward pass (or `kv_bytes`) applies (`drain`), so a state may die anywhere: in
a garbage collection during a forward pass, after its model is gone, or at interpreter shutdown.

Forks (`BlockPool.extend`, the one place where blocks are handed to states). Extending a parent
for a child shares the parent's blocks: its full blocks always (a reference each), and its last,
partial block copy-on-write. The parent may be extended again (particles drawing different
tokens from one context, MCMC going back to a snapshot), so the slots after its end belong to
whichever child claims them first (`fill` counts the claimed slots of each block): that child
appends in place, and every later child gets its own copy of the parent's part of the block
(one block at most per child, whatever the prefix). Every token is therefore stored once per
distinct prefix, plus at most one partly filled block per sequence tail. New tokens get new
blocks as needed. `extend` returns the slots to copy; the forward pass copies them (`paged`).

Growth. The pool grows (new tensors, the old ones copied in once) only when no block is free,
by half its capacity and at least `min_growth` blocks (`MIN_GROWTH`, raised while CUDA graphs
name the tensors: `fixed_step.GRAPH_MIN_GROWTH`); it does not shrink: its free blocks are kept
for the next contexts.
"""

from __future__ import annotations

import threading
from collections import deque

import torch

#: the fewest blocks a pool grows by, unless CUDA graphs name its tensors
MIN_GROWTH = 16


class BlockPool:
    """Keys and values of every layer in blocks of `block` token slots, shared by reference.

    Per layer, `keys[layer]` and `values[layer]` are `[capacity * block, kv_heads, head_dim]`
    (slot-major: a token's keys for all heads are one contiguous row). Slot `b * block + j` is
    position `j` of block `b`. Block 0 is never handed out: it stays all zeros and its slot 0 is
    what padding positions gather.

    The allocator lives on the Python side: `refs[b]` counts the sequence states whose block
    table names block `b`, `fill[b]` how many of its slots have been claimed (written or about
    to be), `free` lists the blocks with no reference. Block ids are allocated before the
    tensors exist or have grown: `ensure` grows a layer's tensors to the capacity at the first
    write of a forward pass (new tensors, the old ones copied in once). The capacity grows by
    half (at least `min_growth` blocks) when no block is free, so what is reserved stays within
    about 1.5 times the most ever in use, and each slot is copied about three times over a
    pool's life.

    A dying state hands its block table to `released` (a deque: appending is atomic and takes
    no lock, so it is safe from `__del__` at any point, during a forward pass or at interpreter
    shutdown); `drain` applies the releases under `lock` before blocks are counted or handed
    out.
    """

    def __init__(self, block: int) -> None:
        self.block = block
        self.keys: list[torch.Tensor | None] = []
        self.values: list[torch.Tensor | None] = []
        self.capacity = 1  # blocks, block 0 included
        self.refs: list[int] = [1]  # block 0 is held for ever
        self.fill: list[int] = [block]
        self.free: list[int] = []
        self.used = 0  # blocks with a reference, block 0 not counted
        self.slot_bytes = 0  # bytes of one token slot across all layers, keys and values
        self.released: deque[list[int]] = deque()
        self.lock = threading.RLock()
        #: bumped whenever a layer's tensors are replaced (CUDA graphs name their addresses)
        self.generation = 0
        #: the fewest blocks the pool grows by (raised while each growth is costly)
        self.min_growth = MIN_GROWTH
        self._scratch = 0  # a block that padding rows of fixed-shape steps write to (0: none)

    # -- allocation (under `lock`) ----------------------------------------------------------------

    def drain(self) -> None:
        """Drop the references of the states that died since the last call."""
        refs, free, released = self.refs, self.free, self.released
        while released:
            for b in released.popleft():
                r = refs[b] - 1
                if r < 0:
                    raise RuntimeError(f"HFModel KV cache: block {b} released more than held")
                refs[b] = r
                if r == 0:
                    free.append(b)
                    self.used -= 1

    def allocate(self, fill: int) -> int:
        """A block with one reference whose first `fill` slots are claimed."""
        if not self.free:  # grow by half: reserved room stays within 1.5x the peak in use
            grown = max(self.min_growth, self.capacity // 2)
            self.refs.extend([0] * grown)
            self.fill.extend([0] * grown)
            self.free.extend(range(self.capacity + grown - 1, self.capacity - 1, -1))
            self.capacity += grown
        b = self.free.pop()
        self.refs[b] = 1
        self.fill[b] = fill
        self.used += 1
        return b

    def extend(
        self, parents: list[PagedState | None], lens: list[int]
    ) -> tuple[list[PagedState], list[int], list[int]]:
        """The children that extend `parents` (None: the empty sequence) by `lens` tokens each,
        their blocks allocated, and the slots to copy (sources, destinations) before the new
        tokens are written.

        A child shares its parent's blocks. The parent's last block, when partial, is shared
        too if no other child has claimed the slots after the parent's end (the child appends
        in place); otherwise the child gets a copy of it (copy on write).
        """
        size = self.block
        refs, fill = self.refs, self.fill  # lists that `allocate` extends in place
        states: list[PagedState] = []
        copy_src: list[int] = []
        copy_dst: list[int] = []
        for parent, m in zip(parents, lens, strict=True):
            if parent is None:
                table: list[int] = []
                start = 0
            else:
                table = parent.blocks.copy()
                start = parent.length
                for b in table:
                    refs[b] += 1
                k = start % size  # tokens of the parent in its last block, if partial
                if k:
                    last = table[-1]
                    if fill[last] == k:  # the slots after the parent's end are free: append
                        fill[last] = min(size, m + k)
                    else:  # another child claimed them: copy the parent's part of the block
                        refs[last] -= 1  # the parent keeps its own reference
                        table[-1] = self.allocate(min(size, m + k))
                        copy_src.extend(range(last * size, last * size + k))
                        copy_dst.extend(range(table[-1] * size, table[-1] * size + k))
            end = start + m
            while len(table) * size < end:
                table.append(self.allocate(min(size, end - len(table) * size)))
            states.append(PagedState(self, table, end))
        return states, copy_src, copy_dst

    def scratch_slot(self) -> int:
        """A slot that no state reads, for the keys of padding rows to be written to. Its block
        is held for ever and not counted as used."""
        if not self._scratch:
            self._scratch = self.allocate(self.block)
            self.used -= 1
        return self._scratch * self.block

    # -- tensors -----------------------------------------------------------------------------------

    def ensure(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Make `layer`'s tensors hold `capacity` blocks, shaped after the new `keys`/`values`
        (`[rows, kv_heads, width, head_dim]`)."""
        while len(self.keys) <= layer:
            self.keys.append(None)
            self.values.append(None)
        slots = self.capacity * self.block
        old_k, old_v = self.keys[layer], self.values[layer]
        if old_k is not None and old_k.shape[0] >= slots:
            return
        k = keys.new_empty(slots, keys.shape[1], keys.shape[3])
        v = values.new_empty(slots, values.shape[1], values.shape[3])
        if old_k is None or old_v is None:
            k[: self.block].zero_()
            v[: self.block].zero_()
            self.slot_bytes += (k[0].numel() * k.element_size()) + (v[0].numel() * v.element_size())
        else:
            k[: old_k.shape[0]].copy_(old_k)
            v[: old_v.shape[0]].copy_(old_v)
            self.generation += 1
        self.keys[layer], self.values[layer] = k, v

    def ensure_all(self) -> None:
        """Grow every layer's tensors to the capacity (once some forward pass has made them)."""
        for layer, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            assert k is not None and v is not None
            self.ensure(layer, k.unsqueeze(0).transpose(1, 2), v.unsqueeze(0).transpose(1, 2))

    @property
    def used_bytes(self) -> int:
        return self.used * self.block * self.slot_bytes

    @property
    def reserved_bytes(self) -> int:
        return sum(
            t.numel() * t.element_size() for t in (*self.keys, *self.values) if t is not None
        )


class PagedState:
    """One sequence in a `BlockPool`: its block table and its length in tokens.

    Position `p` of the sequence is slot `blocks[p // block] * block + p % block`. The state
    holds one reference on each of its blocks and gives them back when it dies.
    """

    __slots__ = ("pool", "blocks", "length")

    def __init__(self, pool: BlockPool, blocks: list[int], length: int) -> None:
        self.pool = pool
        self.blocks = blocks
        self.length = length

    def __del__(self) -> None:
        try:
            self.pool.released.append(self.blocks)
        except Exception:  # pragma: no cover - a half-built state or interpreter teardown
            pass

    def __repr__(self) -> str:
        return f"<HFModel state: {self.length} tokens>"
