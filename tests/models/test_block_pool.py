"""The paged KV cache's block manager, without model weights.

A `BlockPool` of small tensors (2 layers, 2 heads, head dim 4, blocks of 4 slots, on the CPU)
goes through random trees of forks, deaths and copies on write. Each token's keys are written
through a `PagedPlan` as a vector that names the token and the layer, so every live sequence
can be read back slot by slot: a child that wrote over a slot its parent or a sibling still
reads shows up as a wrong token. Beside the contents, the bookkeeping is checked after every
step: reference counts equal the live block tables, free blocks are those with none, claimed
slots (`fill`) cover every live sequence, freed blocks are reused before the pool grows, and
once every state has died every block is free again.
"""

from __future__ import annotations

import random

import pytest
import torch

from ppl.models.hf.block_pool import MIN_GROWTH, BlockPool, PagedState
from ppl.models.hf.paged import PagedPlan

LAYERS, HEADS, DIM, BLOCK = 2, 2, 4, 4
CPU = torch.device("cpu")

#: a live sequence: its state and the token ids it holds
Node = tuple[PagedState, list[int]]


def code(tokens: list[int], layer: int) -> torch.Tensor:
    """The keys written for `tokens` at `layer`: `[len(tokens), HEADS, DIM]`, never zero."""
    ids = torch.tensor(tokens, dtype=torch.float32) + 1000 * layer
    return ids[:, None, None].expand(len(tokens), HEADS, DIM)


def slots(state: PagedState) -> list[int]:
    size = state.pool.block
    return [state.blocks[p // size] * size + p % size for p in range(state.length)]


def extend(pool: BlockPool, items: list[tuple[Node | None, list[int]]]) -> list[Node]:
    """One forward pass's worth of children: allocate them, then write their new tokens through
    a plan (the copies on write first), checking what the plan gathers for attention."""
    pool.drain()
    parents = [None if node is None else node[0] for node, _ in items]
    news = [new for _, new in items]
    lens = [len(new) for new in news]
    starts = [0 if p is None else p.length for p in parents]
    free_before, capacity_before = set(pool.free), pool.capacity

    states, copy_src, copy_dst = pool.extend(parents, lens)

    # freed blocks are handed out again before the pool grows
    assert set(pool.free) <= free_before | set(range(capacity_before, pool.capacity))
    if pool.capacity > capacity_before:
        assert not free_before & set(pool.free)
    # a child copies at most its parent's part of one block, into its own block
    assert len(copy_src) == len(copy_dst) <= len(items) * (BLOCK - 1)
    for state, start, m in zip(states, starts, lens, strict=True):
        assert state.length == start + m

    width, past = max(lens), max(starts)
    plan = PagedPlan.build(pool, states, starts, (copy_src, copy_dst), width, CPU)
    seqs = [(node[1] if node is not None else []) + new for node, new in items]
    for layer in range(LAYERS):
        new_keys = torch.zeros(len(items), HEADS, width, DIM)
        for i, new in enumerate(news):
            new_keys[i, :, : len(new)] = code(new, layer).transpose(0, 1)
        keys, values = plan.update(layer, new_keys, -new_keys)
        assert keys.shape == (len(items), HEADS, past + width, DIM)
        for i, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
            # left padding, the sequence, right padding: padding reads the zero slot
            expected = torch.zeros(past + width, HEADS, DIM)
            expected[past - start : past - start + len(seq)] = code(seq, layer)
            assert torch.equal(keys[i].transpose(0, 1), expected)
            assert torch.equal(values[i], -keys[i])
    return list(zip(states, seqs, strict=True))


def check(pool: BlockPool, live: list[Node]) -> None:
    """The pool's bookkeeping and contents agree with the live sequences."""
    pool.drain()
    states = list({id(state): state for state, _ in live}.values())
    counts = [0] * pool.capacity
    for state in states:
        assert len(set(state.blocks)) == len(state.blocks)
        for b in state.blocks:
            counts[b] += 1
    counts[0] = 1  # the zero block is held for ever
    if pool._scratch:
        counts[pool._scratch] = 1
    assert pool.refs == counts
    assert len(pool.refs) == len(pool.fill) == pool.capacity
    assert sorted(pool.free) == [b for b in range(1, pool.capacity) if counts[b] == 0]
    assert pool.used == pool.capacity - 1 - bool(pool._scratch) - len(pool.free)
    for state in states:  # a table covers the state's tokens, no more; its slots are claimed
        assert len(state.blocks) == -(-state.length // BLOCK)
        for j, b in enumerate(state.blocks):
            assert min(BLOCK, state.length - j * BLOCK) <= pool.fill[b] <= BLOCK
    for layer in range(LAYERS):
        keys, values = pool.keys[layer], pool.values[layer]
        assert keys is not None and values is not None
        assert keys.shape[0] >= pool.capacity * BLOCK
        assert not keys[:BLOCK].any() and not values[:BLOCK].any()  # the zero block
        for state, seq in live:
            index = torch.tensor(slots(state), dtype=torch.long)
            assert torch.equal(keys[index], code(seq, layer))
            assert torch.equal(values[index], -code(seq, layer))


def shared_last_blocks(items: list, children: list[Node]) -> tuple[int, int]:
    """How many children of a parent with a partial last block appended to it in place (the
    first to claim the slots after the parent's end), and how many got their own copy."""
    appended = copies = 0
    for (node, _), (child, _) in zip(items, children, strict=True):
        if node is not None and node[0].length % BLOCK:
            last = node[0].length // BLOCK
            if child.blocks[last] == node[0].blocks[last]:
                appended += 1
            else:
                copies += 1
    return appended, copies


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_tree_of_forks_deaths_and_copies(seed):
    rng = random.Random(seed)
    pool = BlockPool(BLOCK)
    tokens = lambda k: [rng.randrange(1, 1000) for _ in range(k)]
    nodes = extend(pool, [(None, tokens(rng.randrange(1, 12))) for _ in range(3)])
    check(pool, nodes)
    copied = in_place = 0
    for _ in range(40):
        items: list[tuple[Node | None, list[int]]] = []
        pick: Node | None = None
        for _ in range(rng.randrange(1, 6)):
            if pick is None or rng.random() < 0.6:  # else: one more child of the same parent
                pick = None if rng.random() < 0.15 else rng.choice(nodes)
            items.append((pick, tokens(rng.choice([1, 1, 1, 2, 3, 5]))))
        children = extend(pool, items)
        appended, copies = shared_last_blocks(items, children)
        in_place, copied = in_place + appended, copied + copies
        nodes += children
        del items, pick, children
        keep = [rng.random() < 0.7 for _ in nodes]
        nodes = [node for node, alive in zip(nodes, keep, strict=True) if alive] or nodes[-1:]
        check(pool, nodes)
    assert copied and in_place  # both sides of copy on write were taken
    assert pool.generation >= 1  # the tensors grew (copied into new ones) on the way
    del nodes
    check(pool, [])
    assert pool.used == 0 and sorted(pool.free) == list(range(1, pool.capacity))
    assert pool.refs == [1] + [0] * (pool.capacity - 1)


def test_children_of_one_parent_share_its_blocks():
    """Children share their parent's full blocks; the first to extend a partial last block
    appends in place, every later one copies the parent's part of it (and only that)."""
    pool = BlockPool(BLOCK)
    [root] = extend(pool, [(None, [1, 2, 3, 4, 5, 6])])  # a full block and half of one
    full, partial = root[0].blocks
    kids = extend(pool, [(root, [7]), (root, [8, 9, 10]), (root, [11])])
    tables = [state.blocks for state, _ in kids]
    assert tables[0] == [full, partial] and pool.fill[partial] == 3  # appended in place
    assert all(t[0] == full for t in tables) and pool.refs[full] == 4
    assert len({t[1] for t in tables}) == 3  # the others: one block of their own each
    assert [len(t) for t in tables] == [2, 3, 2]  # 9 tokens need a third block
    (again,) = extend(pool, [(root, [12])])  # the root extended again, later: a copy too
    assert again[0].blocks[1] not in (partial, *(t[1] for t in tables))
    assert pool.refs[partial] == 2  # the root and its first child
    check(pool, [root, *kids, again])
    del kids, again
    check(pool, [root])
    assert pool.used == 2 and pool.fill[partial] == 3  # claimed slots stay claimed


def test_deaths_apply_when_drained_and_blocks_are_reused():
    """A dying state only queues its block table (safe anywhere, even mid forward pass); the
    next `drain` frees the blocks, and the next allocation takes them before the pool grows."""
    pool = BlockPool(BLOCK)
    nodes = extend(pool, [(None, [1, 2, 3, 4, 5]), (None, [6, 7])])
    freed = set(nodes[0][0].blocks)
    refs = list(pool.refs)
    del nodes[0]
    assert pool.refs == refs and len(pool.released) == 1  # not yet applied
    pool.drain()
    assert freed <= set(pool.free) and not pool.released
    capacity = pool.capacity
    nodes += extend(pool, [(None, [8] * (BLOCK * len(pool.free)))])  # every free block
    assert pool.capacity == capacity and freed <= set(nodes[-1][0].blocks)
    check(pool, nodes)


def test_growth_by_half():
    """With no block free the pool grows by half its capacity, at least `min_growth` blocks:
    what it reserves stays within 1.5 times the most blocks in use (past the minimum)."""
    pool = BlockPool(BLOCK)
    assert pool.min_growth == MIN_GROWTH
    held = []
    for _ in range(2000):
        capacity = pool.capacity
        held.append(pool.allocate(1))
        if pool.capacity != capacity:
            assert pool.capacity - capacity == max(MIN_GROWTH, capacity // 2)
        assert pool.capacity - 1 <= max(pool.used + MIN_GROWTH - 1, 1.5 * pool.used)
    assert len(set(held)) == len(held) == pool.used and 0 not in held
    pool.min_growth = 256
    capacity = pool.capacity
    held += [pool.allocate(1) for _ in range(len(pool.free) + 1)]
    assert pool.capacity == capacity + max(256, capacity // 2)


def test_a_block_released_twice_is_an_error():
    pool = BlockPool(BLOCK)
    [(state, _)] = extend(pool, [(None, [5, 6])])
    pool.released.append(list(state.blocks))
    del state
    with pytest.raises(RuntimeError, match="released more than held"):
        pool.drain()


def test_the_scratch_block_is_held_and_not_counted():
    pool = BlockPool(BLOCK)
    nodes = extend(pool, [(None, [1, 2, 3])])
    used = pool.used
    slot = pool.scratch_slot()
    assert slot == pool._scratch * BLOCK and pool.scratch_slot() == slot
    assert pool.used == used and pool._scratch not in pool.free
    check(pool, nodes)
    del nodes
    check(pool, [])
    assert pool.used == 0 and pool.refs[pool._scratch] == 1
