"""Fixed-shape decode steps and CUDA graphs (`HFModel.step` "buckets" and "graphs").

A forward pass at its own shape is what suits the CPU, where every padded row or key costs
arithmetic. On a GPU a small model's step is dominated by kernel launches, and every new shape
costs once; a run of SMC meets a new shape at most steps (row counts change as resampling
merges particles, the past grows by one). With `step="buckets"` or `"graphs"` (the default on
CUDA), a decode step of the paged cache (every row one new token, none scored) runs in a fixed
shape instead (`FixedStep`): rows padded to the next of `ROW_BUCKETS` (powers of two), past
positions to `key_bucket(past)` (a power of two from 64, then multiples of 1024). The gather
index lays each row's positions out in order, pointing the positions past its end at the zero
slot; the new token is the last column; a 4D mask keeps each row to its own real positions.
Padding rows read only their own new token and write it to a scratch block that no state
names. Partial-block copies (copy on write) run inside the step too, padded with copies of the
zero slot onto itself. A run therefore meets a handful of shapes. Prompts and multi-token or
scored rows always run at their own shape (`paged`).

With "graphs", each shape is captured once as a CUDA graph (after an eager warm-up run, which
computes that step) and replayed with new inputs copied into its buffer; the capture is checked
by replaying it on the same inputs, and a capture that fails or disagrees turns graphs off for
the model with a warning (steps then run eagerly in the same fixed shapes). Graphs name the
pool's tensors, so a pool that grows (new tensors) drops its graphs; while graphs are on it
grows by at least `GRAPH_MIN_GROWTH` blocks at a time, and by `block_pool.MIN_GROWTH` again
once they are off. Only a step with a graph keeps its input buffer (up to rows x (keys + 1)
int64: 134 MB at 512 rows and 32k positions) between steps; a step run eagerly frees its
buffer once it has run.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch

from ppl.models.hf.block_pool import PagedState
from ppl.models.hf.paged import PagedPlan, paged_cache

if TYPE_CHECKING:
    from ppl.models.hf.model import HFModel

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


class FixedStep:
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
    replay computes for the new inputs what the capture recorded. A step without a graph holds
    no buffer between runs: `load` makes one, `run` lets it go.
    """

    def __init__(self, lm: HFModel, rows: int, keys: int) -> None:
        pool = lm._pool
        assert pool is not None
        self.lm, self.rows, self.keys = lm, rows, keys
        self.device = lm.device
        self.copies = rows * (pool.block - 1)  # a row copies at most a block's other slots
        self.sizes = [rows, rows, rows, rows * (keys + 1), self.copies, self.copies]
        # the inputs, views of `buffer` (None between the runs of a step without a graph)
        self.buffer: torch.Tensor | None = None
        self.ids: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None
        self.plan: PagedPlan | None = None
        self.graph: Any = None
        self.out: torch.Tensor | None = None

    def _bind(self, buffer: torch.Tensor | None) -> None:
        """Read the inputs from `buffer` (None: hold no inputs)."""
        self.buffer = buffer
        if buffer is None:
            self.ids = self.pos = self.plan = None
            return
        pool = self.lm._pool
        assert pool is not None
        ids, pos, write, gather, copy_src, copy_dst = buffer.split(self.sizes)
        self.ids, self.pos = ids.view(self.rows, 1), pos.view(self.rows, 1)
        self.plan = PagedPlan(pool, self.rows, self.keys, 1)
        self.plan.write, self.plan.gather = write, gather
        self.plan.copy_src, self.plan.copy_dst = copy_src, copy_dst

    def load(
        self,
        states: list[PagedState],
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
        if self.graph is None:  # a buffer of the step's own, for this run
            self._bind(flat.to(self.device))
        else:  # the graph reads its inputs from the buffer it was captured with
            assert self.buffer is not None
            self.buffer.copy_(flat)

    def forward(self) -> torch.Tensor:
        """The forward pass on the buffer's inputs: next-token log-probabilities `[rows, vocab]`."""
        lm = self.lm
        assert self.pos is not None and self.plan is not None
        columns = torch.arange(self.keys + 1, device=self.device)
        allowed = (columns < self.pos) | (columns == self.keys)  # [rows, keys + 1]
        mask = allowed[:, None, None, :]
        if lm._mask_kind == "additive":
            dtype = lm.model.dtype
            zero = torch.zeros((), dtype=dtype, device=mask.device)
            mask = torch.where(mask, zero, torch.finfo(dtype).min)
        kwargs: dict[str, Any] = {
            lm._cache_arg: paged_cache(lm._cache_cls, self.plan, lm._num_layers)
        }
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
        try:
            if graphs and self.lm._graphs_off is None and len(self.lm._steps) <= MAX_GRAPHS:
                return self.capture(n)
            return self.forward()[:n]
        finally:
            if self.graph is None:  # no graph reads the inputs again: let their buffer go
                self._bind(None)

    def capture(self, n: int) -> torch.Tensor:
        """Run the step eagerly (the warm-up a capture needs), capture it as a CUDA graph and
        replay it on the same inputs: the graph is kept only if it gives what the eager run
        gave. A capture that fails or disagrees turns graphs off for the model, with a warning.
        Returns the eager run's log-probabilities."""
        lm = self.lm
        device = self.device
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
            lm._turn_graphs_off(f"{type(exc).__name__}: {exc}")
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
