"""A `LanguageModel` backed by a HuggingFace transformers causal LM, with a KV cache per state.

>>> lm = HFModel.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP
>>> ctx = lm.context(lm.chat("Name a colour."))  # doctest: +SKIP

Forward passes
--------------
Every `_extend` call is one forward pass over a batch of rows, one row per sequence, fed only
each row's new tokens; the keys and values of what came before come from the cache. Rows of one
batch can have different lengths: each row's past is left-padded to the longest past (`past`),
new tokens are right-padded to the longest row (`width`), the padding is masked out with the 2D
attention mask, and explicit position ids keep every real token at its true position. When
every row has `past` real tokens and `width` new ones, no mask is needed and the model numbers
the positions itself (the common step of a run: one new token per row).

Two caches do this (`HFModel(..., kv_cache=...)`); both give the same log-probabilities.

The paged cache ("paged", the default)
--------------------------------------
Keys and values live in a `_BlockPool`: per layer, one keys tensor and one values tensor of
token slots, `[capacity, kv_heads, head_dim]`, cut into blocks of `kv_block` slots (16 by
default). A state (`_PagedState`) is a block table and a length: position `p` is slot
`blocks[p // block] * block + p % block`. Each block has a reference count (one per state whose
table names it); a state gives its references back when it dies, and a block with none goes to
the free list and is reused. Block 0 is never handed out: it stays zero, and padding reads it.

Extending a parent for a child shares the parent's blocks: its full blocks always (a reference
each), and its last, partial block copy-on-write. The parent may be extended again (particles
drawing different tokens from one context, MCMC going back to a snapshot), so the slots after
its end belong to whichever child claims them first: that child appends in place, and every
later child gets its own copy of the parent's part of the block (one block at most per child,
whatever the prefix). Every token is therefore stored once per distinct prefix, plus at most one
partly filled block per sequence tail. New tokens get new blocks as needed.

A forward pass hands the model a `DynamicCache` whose layers (`_PagedLayer`) report `past`
cached positions and, in `update`, write each row's real new keys/values into their slots in
place (`index_copy_`), then return the keys/values to attend to, `[rows, kv_heads, past +
width, head_dim]`, gathered from the pool by one `index_select` per layer with an index built
once per forward pass (`_PagedPlan`); padding positions point at the zero slot, so the layout
and the masks are those of a dense left-padded cache. The gathered tensors are transient:
nothing grows by concatenation, and what a forward pass leaves behind is the new tokens' slots.
The partial-block copies of a forward pass are one `index_copy_` per layer for keys and one for
values.

The pool grows (new tensors, the old ones copied in once) only when no block is free; it does
not shrink: its free blocks are kept for the next contexts. `lm.kv_bytes` counts the blocks in
use, `lm.kv_reserved_bytes` the pool's capacity. Forward passes over one pool take its lock;
dying states only append their block tables to a queue, which the next forward pass (or
`kv_bytes`) applies, so a state may die anywhere: in a garbage collection during a forward
pass, after its model is gone, or at interpreter shutdown. The paged cache needs transformers'
cache layers (4.56 and later); with older releases the model uses the batch cache.

Fixed-shape decode steps and CUDA graphs (`HFModel.step`)
---------------------------------------------------------
A forward pass at its own shape is what suits the CPU, where every padded row or key costs
arithmetic. On a GPU a small model's step is dominated by kernel launches, and every new shape
costs once; a run of SMC meets a new shape at most steps (row counts change as resampling
merges particles, the past grows by one). With `step="buckets"` or `"graphs"` (the default on
CUDA), a decode step of the paged cache (every row one new token, none scored) runs in a fixed
shape instead (`_FixedStep`): rows padded to the next of `ROW_BUCKETS` (powers of two), past
positions to `key_bucket(past)` (a power of two from 64, then multiples of 1024). The gather
index lays each row's positions out in order, pointing the positions past its end at the zero
slot; the new token is the last column; a 4D mask keeps each row to its own real positions.
Padding rows read only their own new token and write it to a scratch block that no state
names. Partial-block copies (copy on write) run inside the step too, padded with copies of the
zero slot onto itself. A run therefore meets a handful of shapes. With "graphs", each shape is
captured once as a CUDA graph (after an eager warm-up run, which computes that step) and
replayed with new inputs copied into its buffer; the capture is checked by replaying it on the
same inputs, and a capture that fails or disagrees turns graphs off for the model with a
warning (steps then run eagerly in the same fixed shapes). Graphs name the pool's tensors, so a
pool that grows (new tensors) drops its graphs; with graphs on it grows by at least
`GRAPH_MIN_GROWTH` blocks at a time. Prompts and multi-token or scored rows always run at their
own shape.

The batch cache ("batch")
-------------------------
Each forward pass's output is a `_KVGroup`: the per-layer key/value tensors of the whole batch
(`[rows, heads, keys, dim]`), a per-row validity mask over key positions and each row's next
position id. A state is a `_KVState(group, row)`. Extending states gathers their rows into the
input cache of the next forward pass (caches from different groups left-padded to a common
number of keys); the padded slots stay in the new group's tensors (masked) rather than being
compacted away. A group lives exactly as long as some state refers to it: no registry holds
groups, and a group holds no reference to the groups it was built from (its tensors are fresh
copies made by the forward's concatenation of past and new keys). Every row holds its whole
sequence, so memory grows as rows x length even where rows share a prefix.
"""

from __future__ import annotations

import functools
import inspect
import json
import threading
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ppl.models.base import LanguageModel
from ppl.models.spec import (
    KV_BLOCK,
    KV_CACHES,
    STEPS,
    ModelSpec,
    _build_spec,
    check_cache_options,
    is_plain,
    register,
)
from ppl.models.spec import resolve_device as resolve_device  # its old home
from ppl.models.spec import resolve_dtype as resolve_dtype

# -- token bytes ---------------------------------------------------------------------------------


def _byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2 style) as character -> byte.

    Byte-level vocabularies spell every byte as one printable character: the printable,
    non-space Latin-1 bytes stand for themselves and the remaining 68 bytes are given the code
    points 256, 257, ... in byte order.
    """
    printable = set(range(ord("!"), ord("~") + 1))
    printable |= set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    table: dict[str, int] = {}
    shifted = 256
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(shifted)] = b
            shifted += 1
    return table


def _component_types(node: Any) -> Iterator[str]:
    """Every `"type"` named in a serialised tokenizers component (nested sequences included)."""
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            yield node["type"]
        for value in node.values():
            yield from _component_types(value)
    elif isinstance(node, list):
        for value in node:
            yield from _component_types(value)


def _vocab_style(tokenizer: Any) -> str:
    """How the tokenizer spells bytes in its token strings: "byte_level" or "sentencepiece"."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        # the decoder says how token strings become text; the pre-tokenizer how text was split
        types = set(_component_types(spec.get("decoder"))) | set(
            _component_types(spec.get("pre_tokenizer"))
        )
        return "byte_level" if "ByteLevel" in types else "sentencepiece"
    if hasattr(tokenizer, "byte_decoder") or hasattr(tokenizer, "byte_encoder"):
        return "byte_level"  # slow GPT-2 style tokenizers
    return "sentencepiece"


def _sentencepiece_piece_bytes(piece: str) -> bytes:
    """Bytes of a SentencePiece-style token: "▁" is a space, "<0xE2>" a byte-fallback byte."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            pass
    return piece.replace("\u2581", " ").encode()


def token_bytes_of(tokenizer: Any, vocab_size: int) -> list[bytes]:
    """The exact bytes of every token id below `vocab_size` (ids the tokenizer lacks: b"").

    Added tokens (special ones such as `<|im_end|>` included) are their text's UTF-8 bytes.
    """
    style = _vocab_style(tokenizer)
    alphabet = _byte_level_alphabet() if style == "byte_level" else {}
    added = {
        int(i): str(getattr(tok, "content", tok))
        for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items()
    }
    n = min(vocab_size, len(tokenizer))
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    out: list[bytes] = [b""] * vocab_size
    for i, piece in enumerate(pieces):
        if i in added:
            out[i] = added[i].encode()
        elif piece is None:
            continue
        elif style == "byte_level":
            try:
                out[i] = bytes(alphabet[ch] for ch in piece)
            except KeyError:  # not a byte-level spelling (should not happen): take the text
                out[i] = piece.encode()
        else:
            out[i] = _sentencepiece_piece_bytes(piece)
    return out


# -- KV cache states -----------------------------------------------------------------------------


class _KVGroup:
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


class _KVState:
    """One sequence: row `row` of `group`. Opaque to everything outside this module."""

    __slots__ = ("group", "row")

    def __init__(self, group: _KVGroup, row: int) -> None:
        self.group = group
        self.row = row

    def __repr__(self) -> str:
        return f"<HFModel state: {self.group.next_pos[self.row]} tokens>"


# -- the paged cache: shared blocks of token slots -----------------------------------------------


class _BlockPool:
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
    half (at least 16 blocks) when no block is free, so what is reserved stays within about 1.5
    times the most ever in use, and each slot is copied about three times over a pool's life.

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
        #: the fewest blocks the pool grows by (raised where each growth is costly)
        self.min_growth = 16
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


class _PagedState:
    """One sequence in a `_BlockPool`: its block table and its length in tokens.

    Position `p` of the sequence is slot `blocks[p // block] * block + p % block`. The state
    holds one reference on each of its blocks and gives them back when it dies.
    """

    __slots__ = ("pool", "blocks", "length")

    def __init__(self, pool: _BlockPool, blocks: list[int], length: int) -> None:
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


class _PagedPlan:
    """What one forward pass does with the pool: index tensors built once, on the device.

    * `copy_src` -> `copy_dst`: partial blocks copied for children that cannot append to their
      parent's last block in place (None when there are none),
    * `write`: the slot of every real new token, in the order of `real` (the positions of the
      real tokens in the flattened `[rows * width]` new keys; None when all are real),
    * `gather`: `[rows * (past + width)]` slots, each row's keys left-padded to `past` and its
      new tokens right-padded to `width`, padding pointing at the zero slot.
    """

    __slots__ = ("pool", "rows", "past", "width", "gather", "write", "real", "copy_src", "copy_dst")

    def __init__(self, pool: _BlockPool, rows: int, past: int, width: int) -> None:
        self.pool = pool
        self.rows, self.past, self.width = rows, past, width
        self.gather: torch.Tensor
        self.write: torch.Tensor
        self.real: torch.Tensor | None = None
        self.copy_src: torch.Tensor | None = None
        self.copy_dst: torch.Tensor | None = None

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


@functools.cache
def _paged_layer_class() -> type:
    """`DynamicLayer` for a forward pass over the pool (built on first use: transformers is
    imported lazily, and only releases with cache layers, >= 4.56, have the class)."""
    from transformers.cache_utils import DynamicLayer

    class _PagedLayer(DynamicLayer):
        """A cache layer that reads and writes one layer of a `_BlockPool` through a plan.

        It reports `past` cached positions (the rows' common, left-padded past), so the model
        numbers positions and sizes masks exactly as for a dense cache of that length.
        """

        def __init__(self, plan: _PagedPlan, layer: int) -> None:
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


# -- fixed-shape decode steps: buckets and CUDA graphs -------------------------------------------

#: row counts that fixed-shape steps are padded to; a step with more rows runs at its own shape
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: the most CUDA graphs a model keeps (beyond them, new shapes run eagerly)
MAX_GRAPHS = 64
#: the fewest blocks a pool grows by while CUDA graphs name its tensors: each growth replaces
#: the tensors, and every graph is captured again
GRAPH_MIN_GROWTH = 256


def row_bucket(rows: int) -> int | None:
    """The row count a fixed-shape step of `rows` rows is padded to (None: too many rows)."""
    return next((b for b in ROW_BUCKETS if b >= rows), None)


def key_bucket(past: int) -> int:
    """The number of past positions a fixed-shape step attends to when the longest row has
    `past` tokens: a power of two from 64 up to 1024, then a multiple of 1024."""
    if past <= 1024:
        return max(64, 1 << max(0, past - 1).bit_length())
    return -(-past // 1024) * 1024


class _FixedStep:
    """A decode step of fixed shape: `rows` rows of one new token each, attending to `keys`
    past positions and the new token.

    Its inputs live in one device buffer of int64 (`load` fills it), viewed as the token ids,
    the position ids (= each row's past length), the new tokens' slots, the gather index
    (`[rows * (keys + 1)]`: column `j < keys` is the slot of position `j` of the row, or the
    zero slot past the row's end; column `keys` is the new token's slot) and the partial-block
    copies, padded with copies of the zero slot onto itself. Rows past the real ones are
    padding: they read only their own new token and write it to the pool's scratch slot.

    `run` does the forward pass eagerly, or replays it as a CUDA graph once `capture` made one:
    every input is read from the buffer and every write goes to the pool's tensors, so the
    replay computes for the new inputs what the capture recorded.
    """

    def __init__(self, lm: HFModel, rows: int, keys: int) -> None:
        pool = lm._pool
        assert pool is not None
        self.lm, self.rows, self.keys = lm, rows, keys
        self.copies = rows * (pool.block - 1)  # a row copies at most a block's other slots
        sizes = [rows, rows, rows, rows * (keys + 1), self.copies, self.copies]
        self.buffer = torch.zeros(sum(sizes), dtype=torch.long, device=lm.device)
        ids, pos, write, gather, copy_src, copy_dst = self.buffer.split(sizes)
        self.ids, self.pos = ids.view(rows, 1), pos.view(rows, 1)
        self.plan = _PagedPlan(pool, rows, keys, 1)
        self.plan.write, self.plan.gather = write, gather
        self.plan.copy_src, self.plan.copy_dst = copy_src, copy_dst
        self.graph: Any = None
        self.out: torch.Tensor | None = None

    def load(
        self,
        states: list[_PagedState],
        starts: list[int],
        tokens: list[int],
        copies: list[int],
        scratch: int,
    ) -> None:
        """Put one step's inputs in the buffer (one transfer): the children's `states`, the
        rows' past lengths and new tokens, the slots to copy (sources, then destinations) and
        the slot that padding rows write to."""
        pool = self.lm._pool
        assert pool is not None
        size, pad = pool.block, self.rows - len(states)
        blocks = max(len(st.blocks) for st in states)
        tables = torch.tensor([st.blocks + [0] * (blocks - len(st.blocks)) for st in states])
        start = torch.tensor(starts).unsqueeze(1)
        pos = torch.arange(self.keys).unsqueeze(0)
        block_of = tables.gather(1, (pos // size).clamp(max=blocks - 1).expand(len(states), -1))
        past = torch.where(pos < start, block_of * size + pos % size, 0)  # [real rows, keys]
        write = tables.gather(1, start // size)[:, 0] * size + start[:, 0] % size
        write = torch.cat([write, torch.full((pad,), scratch)])
        past = torch.cat([past, torch.zeros(pad, self.keys, dtype=torch.long)])
        gather = torch.cat([past, write.unsqueeze(1)], 1)
        half = len(copies) // 2
        fill = torch.zeros(self.copies - half, dtype=torch.long)
        flat = torch.cat(
            [
                torch.tensor(tokens + [0] * pad),
                torch.tensor(starts + [0] * pad),
                write,
                gather.reshape(-1),
                torch.tensor(copies[:half], dtype=torch.long),
                fill,
                torch.tensor(copies[half:], dtype=torch.long),
                fill,
            ]
        )
        self.buffer.copy_(flat)

    def forward(self) -> torch.Tensor:
        """The forward pass on the buffer's inputs: next-token log-probabilities `[rows, vocab]`."""
        lm = self.lm
        columns = torch.arange(self.keys + 1, device=self.buffer.device)
        allowed = (columns < self.pos) | (columns == self.keys)  # [rows, keys + 1]
        mask = allowed[:, None, None, :]
        if lm._mask_kind == "additive":
            dtype = lm.model.dtype
            zero = torch.zeros((), dtype=dtype, device=mask.device)
            mask = torch.where(mask, zero, torch.finfo(dtype).min)
        cache = lm._cache_cls()
        layer_cls = _paged_layer_class()
        cache.layers.extend(layer_cls(self.plan, i) for i in range(lm._num_layers))
        kwargs: dict[str, Any] = {lm._cache_arg: cache}
        if lm._keep_arg is not None:
            kwargs[lm._keep_arg] = 1
        out = lm.model(
            input_ids=self.ids, position_ids=self.pos, attention_mask=mask, use_cache=True, **kwargs
        )
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1)

    def run(self, n: int, graphs: bool) -> torch.Tensor:
        """The log-probabilities of the first `n` rows for the loaded inputs (on the device)."""
        if self.graph is not None:
            self.graph.replay()
            assert self.out is not None
            return self.out[:n]
        if graphs and self.lm._graphs_off is None and len(self.lm._steps) <= MAX_GRAPHS:
            return self.capture(n)
        return self.forward()[:n]

    def capture(self, n: int) -> torch.Tensor:
        """Run the step eagerly (the warm-up a capture needs), capture it as a CUDA graph and
        replay it on the same inputs: the graph is kept only if it gives what the eager run
        gave. A capture that fails or disagrees turns graphs off for the model, with a warning.
        Returns the eager run's log-probabilities."""
        lm = self.lm
        device = self.buffer.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            eager = self.forward()
        torch.cuda.current_stream(device).wait_stream(side)
        if lm._graph_pool is None:
            lm._graph_pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=lm._graph_pool, capture_error_mode="thread_local"):
                out = self.forward()
            graph.replay()  # recomputes this step: the same writes, the same values
            # Compared as distributions (the largest total variation distance of a row). In
            # bfloat16 other kernels round differently: a capture's replay of the embedded
            # model differed by 0.53 at an unlikely token's log-probability on an H200, and
            # eager and padded steps by up to 0.8 on the CPU, but by under 0.05 in total
            # variation; a graph that misreads its inputs gives distances near 1.
            tol = 1e-3 if lm.model.dtype == torch.float32 else 0.1
            error = float(0.5 * (out[:n].exp() - eager[:n].exp()).abs().sum(-1).max())
            if not error <= tol:
                raise RuntimeError(
                    f"its replay's next-token distributions differ from the eager step's "
                    f"(total variation {error:.3g})"
                )
        except Exception as exc:  # the model does something a graph cannot hold
            lm._graphs_off = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"CUDA graphs are off for {lm._name()}, which now runs eagerly in fixed "
                f"shapes: capturing a decode step of {self.rows} rows failed ({lm._graphs_off})",
                RuntimeWarning,
                stacklevel=2,
            )
            torch.cuda.synchronize(device)
            return eager[:n]
        self.graph, self.out = graph, out
        lm.graphs_captured += 1
        return eager[:n]


# -- transformers cache objects ------------------------------------------------------------------


def _cache_from_tensors(
    cache_cls: type, keys: list[torch.Tensor], values: list[torch.Tensor]
) -> Any:
    """A `DynamicCache` holding `keys`/`values` as they are (no copy)."""
    cache = cache_cls()
    if hasattr(cache, "layers"):  # transformers >= 4.56: one cache layer object per layer
        from transformers.cache_utils import DynamicLayer

        for k, v in zip(keys, values, strict=True):
            layer = DynamicLayer()
            # what `lazy_initialization` would set (its signature changed across releases)
            layer.dtype, layer.device = k.dtype, k.device
            layer.keys, layer.values = k, v
            layer.is_initialized = True
            cache.layers.append(layer)
    else:  # older releases: updating an empty layer stores the tensors without concatenating
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            cache.update(k, v, i)
    return cache


def _tensors_from_cache(cache: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    if hasattr(cache, "layers"):
        return [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]
    return list(cache.key_cache), list(cache.value_cache)


# -- the context window --------------------------------------------------------------------------

#: `model_max_length` of a tokenizer that does not know it (transformers' VERY_LARGE_INTEGER)
_UNKNOWN_LENGTH = 10**9


def _context_window(config: Any, tokenizer: Any) -> tuple[int | None, str]:
    """The most tokens the model takes in one sequence, and the setting that says so.

    The model's config (`max_position_embeddings`, or `n_positions` in GPT-2 style configs),
    else the tokenizer's `model_max_length` when it holds a real value; None when unknown.
    """
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value, name
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < _UNKNOWN_LENGTH:
        return value, "tokenizer.model_max_length"
    return None, "max_length"


# -- the model -----------------------------------------------------------------------------------


class HFModel(LanguageModel):
    """A HuggingFace transformers causal LM and its tokenizer, behind the `LanguageModel` protocol.

    Use `HFModel.from_pretrained(name_or_path)` or wrap a loaded model: `HFModel(model, tokenizer)`.
    Supported: decoder-only models whose layers all use full attention with a `DynamicCache`
    (Llama, Qwen2, Phi-3, SmolLM, ...). The model is put in eval mode; inputs go to its device.

    A model loaded by `from_pretrained` (with plain keyword values) records how as `spec` and
    pickles as that spec; one wrapped from an in-memory model has `spec = None` and does not
    pickle.

    `max_length` is the context window from the model's config (`max_position_embeddings`),
    else from the tokenizer's `model_max_length`; a longer prompt or context raises
    `ContextWindowError` before its forward pass. Set `lm.max_length` to change it, or to None
    to turn the check off.

    `kv_cache` picks how keys and values are kept (see the module docstring): "paged" (the
    default) stores each token once in shared blocks of `kv_block` token slots, so contexts
    that share a prefix share its memory; "batch" keeps the cache of each forward pass as one
    tensor per layer with every row's whole sequence. Both give the same log-probabilities.
    """

    #: how to build this model again in another process (`ppl.models.spec`), if known
    spec: ModelSpec | None = None

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        kv_cache: str = KV_CACHES[0],
        kv_block: int = KV_BLOCK,
        step: str = "auto",
    ) -> None:
        super().__init__()
        check_cache_options(kv_cache, kv_block, step)
        self._groups: weakref.WeakSet[_KVGroup] = weakref.WeakSet()  # batches still in use
        from transformers import DynamicCache

        # the paged cache needs transformers' cache layers (4.56 and later)
        if kv_cache == "paged" and not hasattr(DynamicCache(), "layers"):
            kv_cache = "batch"
        #: "paged" or "batch": how this model keeps keys and values
        self.kv_cache = kv_cache
        #: token slots per block of the paged cache
        self.kv_block = kv_block
        self._pool = _BlockPool(kv_block) if kv_cache == "paged" else None
        self.model = model.eval()
        self.tokenizer = tokenizer
        self._cache_cls = DynamicCache
        config = model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        layer_types = getattr(text_config, "layer_types", None) or []
        if any(t != "full_attention" for t in layer_types):
            raise NotImplementedError(
                "HFModel supports models whose layers all use full attention; this one has "
                f"layer types {sorted(set(layer_types))}"
            )

        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        weight = getattr(head, "weight", None)
        vocab_size = weight.shape[0] if weight is not None else text_config.vocab_size
        self.token_bytes = token_bytes_of(tokenizer, vocab_size)

        eos: set[int] = set()
        for source in (
            tokenizer.eos_token_id,
            getattr(getattr(model, "generation_config", None), "eos_token_id", None),
        ):
            if isinstance(source, int):
                eos.add(source)
            elif source is not None:
                eos.update(int(i) for i in source)
        self.eos_token_ids = frozenset(i for i in eos if 0 <= i < vocab_size)

        # ask the model for the logits of the needed positions only (named `logits_to_keep`
        # since transformers 4.50, `num_logits_to_keep` before)
        params = inspect.signature(model.forward).parameters
        self._keep_arg = next(
            (a for a in ("logits_to_keep", "num_logits_to_keep") if a in params), None
        )
        # the cache argument is `cache` since transformers 5.24, `past_key_values` before
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._pad_id = 0  # fed in the right-padding of shorter rows; masked, so any id will do
        self.max_length, self.max_length_source = _context_window(text_config, tokenizer)
        self._num_layers = text_config.num_hidden_layers
        # fixed-shape steps give the attention a 4D mask: a boolean one for SDPA, an additive
        # one for the eager attention; other attentions (flash, flex) take no 4D mask
        attention = getattr(config, "_attn_implementation", None) or "eager"
        self._mask_kind = {"sdpa": "bool", "eager": "additive"}.get(attention)
        self._steps: dict[tuple[int, int], _FixedStep] = {}  # (rows, keys) -> its step
        self._steps_generation = -1  # the pool generation that the steps' graphs name
        self._graph_pool: Any = None  # the memory pool that all the model's graphs share
        self._graphs_off: str | None = None  # why CUDA graphs were turned off, if they were
        #: CUDA graphs captured over the model's life
        self.graphs_captured = 0
        self.step = step

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        gguf_file: str | None = None,
        kv_cache: str = KV_CACHES[0],
        kv_block: int = KV_BLOCK,
        step: str = STEPS[0],
        **kwargs: Any,
    ) -> HFModel:
        """Load a causal LM and its tokenizer with transformers.

        Args:
            name_or_path: a Hub model id or a local directory.
            device: "cpu", "cuda", ... (default: CUDA when available, else the CPU).
            dtype: a torch dtype or its name (default: float32 on the CPU, bfloat16 on CUDA where
                supported).
            gguf_file: a GGUF file in `name_or_path` to load model and tokenizer from.
            kv_cache: how keys and values are kept, "paged" or "batch" (see `HFModel`).
            kv_block: token slots per block of the paged cache.
            step: how decode steps run, "auto", "eager", "buckets" or "graphs" (`HFModel.step`).
            kwargs: passed to `AutoModelForCausalLM.from_pretrained`; the Hub options among them
                (revision, token, cache_dir, ...) to the tokenizer too.

        When every keyword value is plain (str, number, None, tuple), the model records its
        `spec` with the resolved device and dtype, and pickles as that spec.
        """
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        check_cache_options(kv_cache, kv_block, step)  # before the weights are loaded
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        options = dict(kwargs)  # before the dtype and gguf_file keys below are added
        if gguf_file is not None:
            options["gguf_file"] = gguf_file
        shared = {
            k: kwargs[k]
            for k in (
                "revision",
                "token",
                "cache_dir",
                "local_files_only",
                "trust_remote_code",
                "subfolder",
            )
            if k in kwargs
        }
        if gguf_file is not None:
            kwargs["gguf_file"] = shared["gguf_file"] = gguf_file
        major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
        kwargs["dtype" if (major, minor) >= (4, 56) else "torch_dtype"] = dtype
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **shared)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
        if "device_map" not in kwargs:
            model = model.to(device)
        lm = cls(model, tokenizer, kv_cache=kv_cache, kv_block=kv_block, step=step)
        if all(is_plain(v) for v in options.values()):
            register(
                lm,
                ModelSpec(
                    "hf",
                    name_or_path,
                    dtype,
                    device,
                    options,
                    kv_cache=kv_cache,
                    kv_block=kv_block,
                    step=step,
                ),
            )
        return lm

    # -- how decode steps run --------------------------------------------------------------------

    @property
    def step(self) -> str:
        """How decode steps run: "eager", "buckets" or "graphs" (what "auto" resolved to).

        * "eager": every forward pass at its own shape (the default on the CPU, where padding
          costs arithmetic and compiling does not pay: see `benchmarks/step_modes.py`);
        * "buckets": a decode step (every row one new token, none scored) is padded to a row
          count of `ROW_BUCKETS` and a past length of `key_bucket`, the padding masked, and run
          eagerly: a run meets a handful of shapes;
        * "graphs": as "buckets", and each shape is captured once as a CUDA graph and replayed
          (the default on CUDA): a step costs its kernels, not their launches.

        Prompts and scored rows always run eagerly at their own shape. All give the same
        log-probabilities, within float rounding. Set it on a model to change it.
        """
        return self._step

    @step.setter
    def step(self, step: str) -> None:
        if step not in STEPS:
            raise ValueError(f"unknown step {step!r}: use one of {', '.join(map(repr, STEPS))}")
        cuda = self.device.type == "cuda"
        fixed_ok = self._pool is not None and self._mask_kind is not None
        if step == "auto":
            step = "graphs" if cuda and fixed_ok else "eager"
        elif step != "eager" and not fixed_ok:
            raise ValueError(
                f"step={step!r} needs the paged KV cache and SDPA or eager attention; this "
                f"model has kv_cache={self.kv_cache!r} and attention "
                f"{getattr(self.model.config, '_attn_implementation', None)!r}"
            )
        elif step == "graphs" and not cuda:
            raise ValueError(
                f"step='graphs' needs a CUDA device; this model is on {self.device} "
                "(step='buckets' runs the same fixed shapes eagerly)"
            )
        self._step = step
        if self._pool is not None and step == "graphs":
            self._pool.min_growth = GRAPH_MIN_GROWTH
        self._steps.clear()

    @property
    def step_shapes(self) -> list[tuple[int, int]]:
        """The (rows, past positions) shapes of the fixed-shape steps met since the pool last
        grew (or the step mode last changed)."""
        return sorted(self._steps)

    # -- the protocol ----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        ids = list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))
        bos_id, bos = self.tokenizer.bos_token_id, self.tokenizer.bos_token
        # a prompt that already spells out the BOS token (chat templates often do) keeps just it
        if (
            add_special_tokens
            and bos_id is not None
            and bos
            and text.startswith(bos)
            and ids[:2] == [bos_id, bos_id]
        ):
            del ids[0]
        return ids

    def chat(self, messages: str | list[dict[str, str]], *, system: str | None = None) -> str:
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(
                f"the tokenizer of {self._name()} has no chat template: build the prompt string "
                "yourself and pass it to lm.context()"
            )
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        else:
            messages = list(messages)
        if system is not None:
            messages = [{"role": "system", "content": system}, *messages]
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )

    def _extend(
        self, parents: list[Any], new_tokens: list[list[int]]
    ) -> tuple[list[Any], torch.Tensor]:
        states, logprobs, _ = self._forward(parents, new_tokens, None)
        return states, logprobs

    def _extend_scored(
        self, parents: list[Any], new_tokens: list[list[int]], score: Sequence[bool]
    ) -> tuple[list[Any], torch.Tensor, list[torch.Tensor | None]]:
        return self._forward(parents, new_tokens, score)

    def _forward(
        self, parents: list[Any], new_tokens: list[list[int]], score: Sequence[bool] | None
    ) -> tuple[list[Any], torch.Tensor, list[torch.Tensor | None]]:
        """One forward pass over the rows; the scored rows keep the logits of every position."""
        lens = [len(t) for t in new_tokens]
        if min(lens) == 0:
            raise ValueError("HFModel._extend: every sequence needs at least one new token")
        # checked here: an id out of range would be a device-side assert on CUDA
        lowest, highest = min(map(min, new_tokens)), max(map(max, new_tokens))
        if lowest < 0 or highest >= self.vocab_size:
            raise ValueError(f"HFModel._extend: a token id is outside 0..{self.vocab_size - 1}")
        if self._pool is None:
            return self._forward_batch(parents, new_tokens, score)
        with self._pool.lock:  # one forward pass at a time writes to the pool
            return self._forward_paged(parents, new_tokens, score)

    def _forward_batch(
        self, parents: list[Any], new_tokens: list[list[int]], score: Sequence[bool] | None
    ) -> tuple[list[Any], torch.Tensor, list[torch.Tensor | None]]:
        """`_forward` with the "batch" cache: the output is a new `_KVGroup`."""
        n = len(parents)
        lens = [len(t) for t in new_tokens]
        width = max(lens)
        device = self.device

        # rows of each parent group: group id -> (group, [output row], [row in group])
        groups: dict[int, tuple[_KVGroup, list[int], list[int]]] = {}
        fresh: list[int] = []  # output rows extending the empty sequence
        for i, parent in enumerate(parents):
            if parent is None:
                fresh.append(i)
                continue
            if not isinstance(parent, _KVState):
                raise TypeError(f"not a state of this HFModel: {parent!r}")
            entry = groups.setdefault(id(parent.group), (parent.group, [], []))
            entry[1].append(i)
            entry[2].append(parent.row)
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
            keys, values, past_mask = self._gather(groups, n, past, dense, device)
            cache = _cache_from_tensors(self._cache_cls, keys, values)
            out, logprobs, scores, mask = self._run(
                new_tokens, cache, past_mask, starts, dense, score
            )
            out_cache = getattr(out, "cache", None)
            if out_cache is None:
                out_cache = out.past_key_values
            keys, values = _tensors_from_cache(out_cache)
            del out_cache
        del out, cache

        group = _KVGroup(keys, values, mask, [s + n_ for s, n_ in zip(starts, lens, strict=True)])
        self._groups.add(group)
        self._note_kv()
        return [_KVState(group, i) for i in range(n)], logprobs, scores

    def _forward_paged(
        self, parents: list[Any], new_tokens: list[list[int]], score: Sequence[bool] | None
    ) -> tuple[list[Any], torch.Tensor, list[torch.Tensor | None]]:
        """`_forward` with the "paged" cache (called holding the pool's lock)."""
        pool = self._pool
        assert pool is not None
        lens = [len(t) for t in new_tokens]
        width = max(lens)
        device = self.device
        pool.drain()  # blocks of states that died are free again before any is handed out
        starts: list[int] = []  # each row's past length: the position id of its first new token
        for parent in parents:
            if parent is None:
                starts.append(0)
            elif type(parent) is _PagedState and parent.pool is pool:
                starts.append(parent.length)
            else:
                raise TypeError(f"not a state of this HFModel: {parent!r}")
        past = max(starts)
        if (
            self._step != "eager"
            and width == 1
            and not (score is not None and any(score))
            and pool.keys
            and row_bucket(len(parents)) is not None
        ):
            return self._forward_fixed(parents, new_tokens, starts)
        # no padding: every row has `past` tokens and gets `width` new ones
        dense = all(s == past for s in starts) and all(m == width for m in lens)

        states, plan = self._plan(parents, starts, lens, past, width, dense, device)
        with torch.inference_mode():
            cache = self._cache_cls()
            layer_cls = _paged_layer_class()
            cache.layers.extend(layer_cls(plan, i) for i in range(self._num_layers))
            past_mask = None
            if not dense:
                past_mask = torch.arange(past) >= (past - torch.tensor(starts)).unsqueeze(1)
                past_mask = past_mask.to(device)
            out, logprobs, scores, _ = self._run(new_tokens, cache, past_mask, starts, dense, score)
        del out, cache, plan
        self._note_kv()
        return states, logprobs, scores

    def _allocate(
        self, parents: list[Any], starts: list[int], lens: list[int]
    ) -> tuple[list[_PagedState], list[int], list[int]]:
        """The children's states, their blocks allocated, and the slots to copy (source and
        destination) before the new tokens are written.

        A child shares its parent's blocks. The parent's last block, when partial, is shared
        too if no other child has claimed the slots after the parent's end (the child appends
        in place); otherwise the child gets a copy of it (copy on write).
        """
        pool = self._pool
        assert pool is not None
        size = pool.block
        refs, fill = pool.refs, pool.fill  # lists that the allocator extends in place
        states: list[_PagedState] = []
        copy_src: list[int] = []
        copy_dst: list[int] = []
        for parent, start, m in zip(parents, starts, lens, strict=True):
            end = start + m
            if parent is None:
                table: list[int] = []
            else:
                table = parent.blocks.copy()
                for b in table:
                    refs[b] += 1
                k = start % size  # tokens of the parent in its last block, if partial
                if k:
                    last = table[-1]
                    if fill[last] == k:  # the slots after the parent's end are free: append
                        fill[last] = min(size, end - start + k)
                    else:  # another child claimed them: copy the parent's part of the block
                        refs[last] -= 1  # the parent keeps its own reference
                        table[-1] = pool.allocate(min(size, end - start + k))
                        copy_src.extend(range(last * size, last * size + k))
                        copy_dst.extend(range(table[-1] * size, table[-1] * size + k))
            while len(table) * size < end:
                table.append(pool.allocate(min(size, end - len(table) * size)))
            states.append(_PagedState(pool, table, end))
        return states, copy_src, copy_dst

    def _forward_fixed(
        self, parents: list[Any], new_tokens: list[list[int]], starts: list[int]
    ) -> tuple[list[Any], torch.Tensor, list[torch.Tensor | None]]:
        """`_forward_paged` for a decode step, in the fixed shape of its bucket (`_FixedStep`)."""
        pool = self._pool
        assert pool is not None
        n = len(parents)
        rows, keys = row_bucket(n), key_bucket(max(starts))
        assert rows is not None
        states, copy_src, copy_dst = self._allocate(parents, starts, [1] * n)
        # padding rows' slot, allocated (once) before the tensors are sized for the step
        scratch = pool.scratch_slot() if rows > n else 0
        with torch.inference_mode():
            pool.ensure_all()  # the tensors at the capacity the allocation may have raised
            if self._steps_generation != pool.generation:  # new tensors: graphs name the old
                self._steps.clear()
                self._steps_generation = pool.generation
            step = self._steps.get((rows, keys))
            if step is None:
                step = self._steps[rows, keys] = _FixedStep(self, rows, keys)
            step.load(states, starts, [t[0] for t in new_tokens], copy_src + copy_dst, scratch)
            logprobs = step.run(n, self._step == "graphs").cpu()
        self._note_kv()
        return states, logprobs, [None] * n

    def _plan(
        self,
        parents: list[Any],
        starts: list[int],
        lens: list[int],
        past: int,
        width: int,
        dense: bool,
        device: torch.device,
    ) -> tuple[list[_PagedState], _PagedPlan]:
        """The children's states (their blocks allocated) and the plan of the forward pass."""
        pool = self._pool
        assert pool is not None
        size = pool.block
        states, copy_src, copy_dst = self._allocate(parents, starts, lens)
        # slot of every key position of the attention input: row i holds `past - starts[i]`
        # left-padding positions, its `starts[i] + lens[i]` tokens, then right-padding
        blocks = max(len(s.blocks) for s in states)
        tables = torch.tensor([s.blocks + [0] * (blocks - len(s.blocks)) for s in states])
        first = torch.tensor([past - s for s in starts]).unsqueeze(1)  # column of position 0
        ends = torch.tensor([s + m for s, m in zip(starts, lens, strict=True)]).unsqueeze(1)
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
        plan = _PagedPlan(pool, len(states), past, width)
        plan.gather = pieces[0]
        if real_new is not None:
            plan.real = pieces[1]
        plan.write = pieces[2 if real_new is not None else 1]
        if copy_src:
            plan.copy_src, plan.copy_dst = pieces[-2], pieces[-1]
        return states, plan

    def _run(
        self,
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
        device = self.device
        ids = torch.tensor(
            [t + [self._pad_id] * (width - len(t)) for t in new_tokens],
            dtype=torch.long,
            device=device,
        )
        kwargs: dict[str, Any] = {}
        mask = None
        if not dense:
            new_mask = torch.arange(width, device=device) < torch.tensor(
                lens, device=device
            ).unsqueeze(1)
            mask = new_mask if past_mask is None else torch.cat([past_mask, new_mask], 1)
            kwargs["attention_mask"] = mask.long()
            start = torch.tensor(starts, device=device).unsqueeze(1)
            kwargs["position_ids"] = start + torch.arange(width, device=device)
        # logits at each row's last real token only
        last = [n_ - 1 for n_ in lens]
        keep = sorted(set(last))  # positions whose logits are kept, in order
        scoring = score is not None and any(score)
        if self._keep_arg is None or scoring:
            keep = list(range(width))
        elif keep == [width - 1]:
            kwargs[self._keep_arg] = 1
        elif self._keep_arg == "logits_to_keep":
            kwargs[self._keep_arg] = torch.tensor(keep, device=device)
        else:  # `num_logits_to_keep` takes a count of trailing positions only
            keep = list(range(keep[0], width))
            kwargs[self._keep_arg] = len(keep)
        kwargs[self._cache_arg] = cache
        out = self.model(input_ids=ids, use_cache=True, **kwargs)
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

    @property
    def kv_bytes(self) -> int:
        """Bytes of keys and values that live contexts use.

        "paged": the blocks that some live state refers to (each block counted once, however
        many states share it). "batch": the tensors of every batch that some live context
        still uses (a batch's tensors hold every row's whole sequence, and stay alive as long
        as any one of its rows is used)."""
        pool = self._pool
        if pool is None:
            return sum(g.nbytes for g in list(self._groups))
        with pool.lock:
            pool.drain()
            return pool.used_bytes

    @property
    def kv_reserved_bytes(self) -> int:
        """Bytes of keys and values allocated: the pool's capacity ("paged", which grows by
        doubling and keeps its free blocks for reuse), or `kv_bytes` ("batch")."""
        pool = self._pool
        if pool is None:
            return self.kv_bytes
        return pool.reserved_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of keys and values one token takes, stored once (all layers)."""
        c = self.model.config
        heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        size = torch.empty(0, dtype=self.model.dtype).element_size()
        return 2 * c.num_hidden_layers * heads * dim * size

    def _gather(
        self,
        groups: dict[int, tuple[_KVGroup, list[int], list[int]]],
        n: int,
        past: int,
        dense: bool,
        device: torch.device,
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

    # -- helpers ---------------------------------------------------------------------------------

    def _name(self) -> str:
        if self.spec is not None and self.spec.kind == "embedded":
            # not the path of the file it was read from, which says where ppl is installed
            return "embedded SmolLM2-135M-Instruct"
        return str(getattr(self.model.config, "_name_or_path", "") or type(self.model).__name__)

    def __repr__(self) -> str:
        return f"HFModel({self._name()!r}, vocab_size={self.vocab_size}, device={self.device})"

    # -- pickling and copying --------------------------------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        # a model travels as its spec: the receiving process builds it (once) from the spec
        if self.spec is None:
            raise TypeError(
                f"cannot pickle HFModel({self._name()!r}): it was wrapped from an in-memory "
                "model, so another process could not rebuild it. Make it with "
                'ppl.models.spec("hf", name_or_path, dtype=..., device=..., **options).build() '
                "(or HFModel.from_pretrained with plain keyword values, or ppl.models.load())"
            )
        return (_build_spec, (self.spec,))

    def __copy__(self) -> HFModel:
        return self  # shared like `__deepcopy__`, rather than rebuilt through `__reduce__`
