"""Batched token draws: the next-token rows of many contexts as one tensor, one index per row.

The scheduler draws the tokens of every particle at a step together: `stack_rows` puts the
particles' next-token rows side by side (without a copy when they are the rows of one batched
model call), and `draw_rows` draws one index per row in proportion to its weights, with the
rows' totals. `ppl.next_token` (the model's distributions and token proposals) and
`ppl.constraints.tokens` (their constrained kind) both draw with them.

Pure torch: this module imports nothing of ppl.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def stack_rows(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """`torch.stack(rows)` for next-token rows, without the copy where it can be avoided.

    The rows of one batched model call are views of one `[n, V]` tensor. When `rows` are all
    of them, in order, that tensor (or a view of its memory) is the answer as it is; when they
    are some of them (a context repeated, some left out), one `index_select` gathers them.
    Other rows are stacked. Callers must not write into the result.

    Rows are recognised by their memory, not by `Tensor._base`: views of a tensor made in
    inference mode (as models make their outputs) have no `_base`.
    """
    first = rows[0]
    base = first._base
    if (
        base is not None
        and len(rows) == len(base)
        and base.dim() == 2
        and base.shape[1:] == first.shape
    ):
        if all(r._base is base for r in rows) and base.is_contiguous():
            width = base.stride(0)
            if [r.storage_offset() for r in rows] == [
                base.storage_offset() + i * width for i in range(len(base))
            ]:
                return base
    if first.dim() != 1 or first.stride(0) != 1:
        return torch.stack(list(rows))
    size = first.shape[0]
    memory = first.untyped_storage().data_ptr()
    offsets = []
    for r in rows:
        if (
            r.dim() != 1
            or r.shape[0] != size
            or r.stride(0) != 1
            or r.dtype != first.dtype
            or r.untyped_storage().data_ptr() != memory
        ):
            return torch.stack(list(rows))
        offsets.append(r.storage_offset())
    low = min(offsets)
    index = [(o - low) // size for o in offsets]
    if any(o != low + i * size for o, i in zip(offsets, index, strict=True)):
        return torch.stack(list(rows))
    # the rows are those of one [span, size] block of memory, in some order
    span = max(index) + 1
    whole = first.as_strided((span, size), (size, 1), low)
    if index == list(range(span)):
        return whole
    return whole.index_select(0, torch.tensor(index))


#: tokens per block of the two-level draw of `draw_rows`
DRAW_BLOCK = 256


def draw_rows(probs: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One index per row of `probs` (`[n, V]`, non-negative, unnormalised), drawn in proportion
    to the row, and the rows' totals (float64).

    Inverse-CDF sampling in two levels: a block of `DRAW_BLOCK` indices is drawn from the
    blocks' sums, then an index from the float64 running sum within that block. At each level a
    value v = u * total (u uniform on [0, 1), v kept below the total) selects the interval
    [c_{i-1}, c_i) it falls in, of width equal to the weight of block or index i, so neither a
    block nor an index of zero weight is ever drawn, and the chance of index i is its weight
    over the row's total up to the rounding of a block's sum in the rows' dtype (a relative
    error of about 1e-7 in float32, the precision the weights themselves were given in). A
    row that sums to zero gets an arbitrary index; callers check the total.

    A float64 running sum over whole vocabulary-sized rows took 4-25 ms for 64 rows of 49,152
    (much of it making and freeing the float64 temporary); this takes about 1 ms.
    `torch.multinomial` was slower still.
    """
    probs = probs.contiguous()
    n, vocab = probs.shape
    size = DRAW_BLOCK
    full = vocab // size  # whole blocks; the tail, if any, is one more
    # the blocks' sums in the rows' own precision: no vocabulary-sized temporary is made
    sums = probs.as_strided((n, full, size), (vocab, size, 1)).sum(-1)
    if vocab % size:
        sums = torch.cat([sums, probs[:, full * size :].sum(1, keepdim=True)], 1)
    cdf = sums.double().cumsum(1)
    total = cdf[:, -1:]
    u = torch.rand(n, 1, dtype=torch.float64, generator=generator)
    v = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    block = torch.searchsorted(cdf, v, right=True).clamp_(max=cdf.shape[1] - 1)  # [n, 1]
    before = torch.where(block > 0, cdf.gather(1, (block - 1).clamp(min=0)), 0.0)
    ids = block * size + torch.arange(size)  # [n, size]: the block's indices
    inner = torch.where(ids < vocab, probs.gather(1, ids.clamp(max=vocab - 1)), 0.0)
    inner = inner.cumsum(1, dtype=torch.float64)
    last = inner[:, -1:]  # the block's sum again, rounded another way: v stays below it
    rest = torch.minimum(v - before, torch.nextafter(last, torch.zeros_like(last)))
    j = torch.searchsorted(inner, rest, right=True).clamp_(max=size - 1)
    return (block * size + j)[:, 0].clamp_(max=vocab - 1), total[:, 0]
