"""The batch KV cache (`HFModel(kv_cache="batch")`): each forward pass keeps its own tensors.

Each forward pass's output is a `KVGroup`: the per-layer key/value tensors of the whole batch
(`[rows, heads, keys, dim]`), a per-row validity mask over key positions and each row's next
position id. A state is a `KVState(group, row)`. Extending states gathers their rows into the
input cache of the next forward pass (`gather_past`: caches from different groups left-padded
to a common number of keys); the padded slots stay in the new group's tensors (masked) rather
than being compacted away. A group lives exactly as long as some state refers to it: no
registry holds groups, and a group holds no reference to the groups it was built from (its
tensors are fresh copies made by the forward's concatenation of past and new keys). Every row
holds its whole sequence, so memory grows as rows x length even where rows share a prefix (the
paged cache, `block_pool`, stores each token once). It is what runs on transformers releases
without cache layers (before 4.56).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

#: the rows of each parent group: group id -> (group, [output row], [row in group])
Groups = dict[int, tuple["KVGroup", list[int], list[int]]]


class KVGroup:
    """The cache of one batched forward: per-layer keys/values for all its rows."""

    __slots__ = ("keys", "values", "mask", "next_pos", "nbytes", "__weakref__")

    def __init__(
        self,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        mask: torch.Tensor | None,
        next_pos: list[int],
    ) -> None:
        self.keys = keys  # per layer: [rows, kv_heads, length, head_dim]
        self.values = values
        # [rows, length] bool on the model's device, True where a key is a real token;
        # None when every position of every row is real (all rows then have `length` tokens)
        self.mask = mask
        self.next_pos = next_pos  # per row: the number of real tokens, i.e. the next position id
        self.nbytes = sum(t.numel() * t.element_size() for t in (*keys, *values))

    @property
    def length(self) -> int:
        """Number of key positions (real and padding) per row."""
        return self.keys[0].shape[-2]


class KVState:
    """One sequence: row `row` of `group`. Opaque to everything outside this package."""

    __slots__ = ("group", "row")

    def __init__(self, group: KVGroup, row: int) -> None:
        self.group = group
        self.row = row

    def __repr__(self) -> str:
        return f"<HFModel state: {self.group.next_pos[self.row]} tokens>"


def group_rows(parents: list[Any]) -> tuple[Groups, list[int]]:
    """The parents' rows by group, and the output rows that extend the empty sequence."""
    groups: Groups = {}
    fresh: list[int] = []
    for i, parent in enumerate(parents):
        if parent is None:
            fresh.append(i)
            continue
        if not isinstance(parent, KVState):
            raise TypeError(f"not a state of this HFModel: {parent!r}")
        entry = groups.setdefault(id(parent.group), (parent.group, [], []))
        entry[1].append(i)
        entry[2].append(parent.row)
    return groups, fresh


def gather_past(
    groups: Groups, n: int, past: int, dense: bool, device: torch.device
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor | None]:
    """The input cache of a batch: per-layer keys/values `[n, heads, past, dim]` and the mask.

    The mask (`[n, past]` bool, None when `dense`) marks the real key positions.
    """
    if past == 0:
        return [], [], (None if dense else torch.zeros(n, 0, dtype=torch.bool, device=device))

    if len(groups) == 1 and len(next(iter(groups.values()))[1]) == n:
        # all rows come from one group: pick them, without copying when they are a
        # contiguous run of its rows in order (a view), and with one gather otherwise
        g, _, src = next(iter(groups.values()))
        a = src[0]
        select: Callable[[torch.Tensor], torch.Tensor]
        if src == list(range(a, a + n)):
            select = lambda t: t if (a == 0 and n == t.shape[0]) else t.narrow(0, a, n)
        else:
            index = torch.tensor(src, device=device)
            select = lambda t: t.index_select(0, index)
        keys = [select(k) for k in g.keys]
        values = [select(v) for v in g.values]
        if dense:
            return keys, values, None
        if g.mask is not None:
            return keys, values, select(g.mask)
        return keys, values, torch.ones(n, past, dtype=torch.bool, device=device)

    # rows from several groups (or the empty sequence): left-pad every group's keys to
    # `past` positions. Padding must be finite (zeros): a masked key gets zero attention
    # weight, but NaN garbage in its value would still poison the weighted sum.
    template = next(iter(groups.values()))[0]
    keys = [k.new_zeros(n, k.shape[1], past, k.shape[3]) for k in template.keys]
    values = [v.new_zeros(n, v.shape[1], past, v.shape[3]) for v in template.values]
    mask = torch.zeros(n, past, dtype=torch.bool, device=device)
    for g, out_rows, src_rows in groups.values():
        dst = torch.tensor(out_rows, device=device)
        src = torch.tensor(src_rows, device=device)
        off = past - g.length
        for buf, t in zip(keys + values, g.keys + g.values, strict=True):
            buf[:, :, off:].index_copy_(0, dst, t.index_select(0, src))
        if g.mask is None:
            mask[dst, off:] = True
        else:
            mask[:, off:].index_copy_(0, dst, g.mask.index_select(0, src))
    return keys, values, (None if dense else mask)
