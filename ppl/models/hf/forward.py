"""The forward pass of an `HFModel` over each KV cache, and the model call they share.

Every `HFModel._extend` call is one forward pass over a batch of rows, one row per sequence, fed
only each row's new tokens; the keys and values of what came before come from the cache. Rows of
one batch can have different lengths: each row's past is left-padded to the longest past
(`past`), new tokens are right-padded to the longest row (`width`), the padding is masked out
with the 2D attention mask, and explicit position ids keep every real token at its true
position. When every row has `past` real tokens and `width` new ones, no mask is needed and the
model numbers the positions itself (the common step of a run: one new token per row).

* `forward_paged`: the paged cache (`block_pool` hands out the slots, `paged` plans the reads
  and writes); a decode step goes to `forward_fixed` when the model's `step` is "buckets" or
  "graphs", which runs it in the fixed shape of its bucket (`fixed_step`);
* `forward_batch`: the batch cache (`batch_cache`): the pass's output is a new `KVGroup`;
* `run_model`: the model call itself, asking for the logits of the positions needed only (or of
  every position for a row being scored) and returning log-probabilities in float32 on the CPU.

These are the model's methods kept apart from its construction and bookkeeping: each takes the
`HFModel` and reads its settings and caches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ppl.models.hf.batch_cache import KVGroup, KVState, gather_past, group_rows
from ppl.models.hf.block_pool import PagedState
from ppl.models.hf.compat import cache_from_tensors, output_cache, tensors_from_cache
from ppl.models.hf.fixed_step import FixedStep, key_bucket, row_bucket
from ppl.models.hf.paged import PagedPlan, paged_cache

if TYPE_CHECKING:
    from ppl.models.hf.model import HFModel


def forward_batch(
    lm: HFModel, parents: list[Any], new_tokens: list[list[int]], score: Sequence[bool] | None
) -> tuple[list[Any], torch.Tensor, list[torch.Tensor | None]]:
    """`_forward` with the "batch" cache: the output is a new `KVGroup`."""
    n = len(parents)
    lens = [len(t) for t in new_tokens]
    width = max(lens)
    device = lm.device

    groups, fresh = group_rows(parents)  # fresh: output rows extending the empty sequence
    past = max((g.length for g, _, _ in groups.values()), default=0)
    starts = [0] * n  # position id of each row's first new token
    for g, out_rows, src_rows in groups.values():
        for i, r in zip(out_rows, src_rows, strict=True):
            starts[i] = g.next_pos[r]

    # Without padding (every row's past is `past` real tokens and all rows get `width` new
    # tokens) the model needs no mask and derives the positions itself. This is the common
    # step of a run: rows of one unpadded group, one new token each.
    dense = (
        all(n_ == width for n_ in lens)
        and all(g.mask is None and g.length == past for g, _, _ in groups.values())
        and (past == 0 or not fresh)
    )

    with torch.inference_mode():
        keys, values, past_mask = gather_past(groups, n, past, dense, device)
        cache = cache_from_tensors(lm._cache_cls, keys, values)
        out, logprobs, scores, mask = run_model(
            lm, new_tokens, cache, past_mask, starts, dense, score
        )
        out_cache = output_cache(out)
        keys, values = tensors_from_cache(out_cache)
        del out_cache
    del out, cache

    group = KVGroup(keys, values, mask, [s + n_ for s, n_ in zip(starts, lens, strict=True)])
    lm._groups.add(group)
    lm._note_kv()
    return [KVState(group, i) for i in range(n)], logprobs, scores


def forward_paged(
    lm: HFModel, parents: list[Any], new_tokens: list[list[int]], score: Sequence[bool] | None
) -> tuple[list[Any], torch.Tensor, list[torch.Tensor | None]]:
    """`_forward` with the "paged" cache (called holding the pool's lock)."""
    pool = lm._pool
    assert pool is not None
    lens = [len(t) for t in new_tokens]
    width = max(lens)
    device = lm.device
    pool.drain()  # blocks of states that died are free again before any is handed out
    starts: list[int] = []  # each row's past length: the position id of its first new token
    for parent in parents:
        if parent is None:
            starts.append(0)
        elif type(parent) is PagedState and parent.pool is pool:
            starts.append(parent.length)
        else:
            raise TypeError(f"not a state of this HFModel: {parent!r}")
    past = max(starts)
    if (
        lm._step != "eager"
        and width == 1
        and not (score is not None and any(score))
        and pool.keys
        and row_bucket(len(parents)) is not None
    ):
        return forward_fixed(lm, parents, new_tokens, starts)

    states, copy_src, copy_dst = pool.extend(parents, lens)
    plan = PagedPlan.build(pool, states, starts, (copy_src, copy_dst), width, device)
    with torch.inference_mode():
        cache = paged_cache(lm._cache_cls, plan, lm._num_layers)
        past_mask = None
        if not plan.dense:
            past_mask = torch.arange(past) >= (past - torch.tensor(starts)).unsqueeze(1)
            past_mask = past_mask.to(device)
        out, logprobs, scores, _ = run_model(
            lm, new_tokens, cache, past_mask, starts, plan.dense, score
        )
    del out, cache, plan
    lm._note_kv()
    return states, logprobs, scores


def forward_fixed(
    lm: HFModel, parents: list[Any], new_tokens: list[list[int]], starts: list[int]
) -> tuple[list[Any], torch.Tensor, list[torch.Tensor | None]]:
    """`forward_paged` for a decode step, in the fixed shape of its bucket (`FixedStep`)."""
    pool = lm._pool
    assert pool is not None
    n = len(parents)
    rows, keys = row_bucket(n), key_bucket(max(starts))
    assert rows is not None
    states, copy_src, copy_dst = pool.extend(parents, [1] * n)
    # padding rows' slot, allocated (once) before the tensors are sized for the step
    scratch = pool.scratch_slot() if rows > n else 0
    with torch.inference_mode():
        pool.ensure_all()  # the tensors at the capacity the allocation may have raised
        if lm._steps_generation != pool.generation:  # new tensors: graphs name the old
            lm._steps.clear()
            lm._steps_generation = pool.generation
        step = lm._steps.get((rows, keys))
        if step is None:
            step = lm._steps[rows, keys] = FixedStep(lm, rows, keys)
        step.load(states, starts, [t[0] for t in new_tokens], copy_src + copy_dst, scratch)
        logprobs = step.run(n, lm._step == "graphs").cpu()
    lm._note_kv()
    return states, logprobs, [None] * n


def run_model(
    lm: HFModel,
    new_tokens: list[list[int]],
    cache: Any,
    past_mask: torch.Tensor | None,
    starts: list[int],
    dense: bool,
    score: Sequence[bool] | None,
) -> tuple[Any, torch.Tensor, list[torch.Tensor | None], torch.Tensor | None]:
    """Run the model on the new tokens after `cache` (in inference mode).

    Returns its output, the next-token log-probabilities, the scores of the scored rows
    and the key mask used (None when `dense`).
    """
    n = len(new_tokens)
    lens = [len(t) for t in new_tokens]
    width = max(lens)
    device = lm.device
    ids = torch.tensor(
        [t + [lm._pad_id] * (width - len(t)) for t in new_tokens],
        dtype=torch.long,
        device=device,
    )
    kwargs: dict[str, Any] = {}
    mask = None
    if not dense:
        new_mask = torch.arange(width, device=device) < torch.tensor(lens, device=device).unsqueeze(
            1
        )
        mask = new_mask if past_mask is None else torch.cat([past_mask, new_mask], 1)
        kwargs["attention_mask"] = mask.long()
        start = torch.tensor(starts, device=device).unsqueeze(1)
        kwargs["position_ids"] = start + torch.arange(width, device=device)
    # logits at each row's last real token only
    last = [n_ - 1 for n_ in lens]
    keep = sorted(set(last))  # positions whose logits are kept, in order
    scoring = score is not None and any(score)
    if lm._keep_arg is None or scoring:
        keep = list(range(width))
    elif keep == [width - 1]:
        kwargs[lm._keep_arg] = 1
    elif lm._keep_arg == "logits_to_keep":
        kwargs[lm._keep_arg] = torch.tensor(keep, device=device)
    else:  # `num_logits_to_keep` takes a count of trailing positions only
        keep = list(range(keep[0], width))
        kwargs[lm._keep_arg] = len(keep)
    kwargs[lm._cache_arg] = cache
    out = lm.model(input_ids=ids, use_cache=True, **kwargs)
    logits = out.logits  # [n, len(keep), vocab]
    scores: list[torch.Tensor | None] = [None] * n
    if scoring:  # every position kept: each fed token's log-probability
        assert score is not None
        for i in range(n):
            if score[i] and lens[i] > 1:
                lp = torch.log_softmax(logits[i, : lens[i] - 1].float(), dim=-1)
                nxt = torch.tensor(new_tokens[i][1:], device=device).unsqueeze(1)
                scores[i] = lp.gather(1, nxt)[:, 0].cpu()
    if len(keep) == 1:
        logits = logits[:, 0]
    else:
        column = {p: j for j, p in enumerate(keep)}
        pick = torch.tensor([column[p] for p in last], device=device)
        logits = logits[torch.arange(n, device=device), pick]
    logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
    return out, logprobs, scores, mask
