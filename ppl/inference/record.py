"""The per-step record of a particle run, kept for its HTML view (`ppl.inference.html`).

`Recorder` keeps a light snapshot of the particles at every step of an `smc`, `importance` or
`smc_steer` run: their texts, weights, states, ancestry and the prompts met. When a run records
(`record=` of the three methods):

* `record=True` always, `record=False` never;
* `record=None` (the default) records runs of at most `AUTO_PARTICLES` particles, and drops the
  record if it grows past `AUTO_BYTES` (the reason is then in `diagnostics["record"]`).

A record costs about `BYTES_PER_PARTICLE_STEP` bytes per particle per step plus the particle's
text so far (texts are kept whole at every step, so a run of N particles making T tokens of c
characters holds about N T (120 + c T / 2) bytes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ppl.context import Context
from ppl.inference.texts import token_text
from ppl.inference.weights import normalise

if TYPE_CHECKING:
    from ppl.inference.engine import Particle
    from ppl.inference.posterior import Posterior

AUTO_PARTICLES = 256
"""`record=None` records runs of at most this many particles."""
AUTO_BYTES = 32 * 2**20
"""`record=None` drops a record that grows past this many bytes (estimated)."""
BYTES_PER_PARTICLE_STEP = 120
"""Measured size of one particle's snapshot at one step, its text aside: the weights (two
floats), its state, its parent and the list slots holding them."""
MAX_PROMPTS = 8
"""At most this many distinct prompts are kept."""


def recorder_for(record: bool | None, particles: int) -> Recorder | None:
    """The recorder of a run of `particles` particles under `record=` (None: automatic)."""
    if record is None:
        return Recorder(limit=AUTO_BYTES) if particles <= AUTO_PARTICLES else None
    if not isinstance(record, (bool, np.bool_)):
        raise TypeError(
            f"record must be True, False or None (automatic), got {type(record).__name__}"
        )
    return Recorder() if record else None


class Recorder:
    """Per-step records: `{"step", "texts", "log_weights", "weights", "states", "parents",
    "prompts"}`.

    `parents[i]` (set when the particles were resampled after that step) is the index, in that
    step, of the parent of particle i of the next step; None means no resampling (i -> i).
    `prompts` lists the prompts of the language-model contexts first met at that step (those
    of the contexts the particles wait on; at most `MAX_PROMPTS` over the run).

    With a `limit` (bytes, estimated), a record that grows past it is dropped: `finish` then
    leaves `history` None and says why in `diagnostics["record"]`.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.steps: list[dict[str, Any]] = []
        self.limit = limit
        self.size = 0
        self.dropped_at: int | None = None
        self._text_cache: dict[int, Any] = {}
        self._prompts: dict[str, None] = {}

    def step(self, particles: Sequence[Particle], log_weights: np.ndarray) -> None:
        if self.dropped_at is not None:
            return
        texts = [token_text(p.trace, self._text_cache) for p in particles]
        prompts = self._new_prompts(particles)
        self.size += BYTES_PER_PARTICLE_STEP * len(texts) + sum(map(len, texts))
        self.size += sum(map(len, prompts))
        if self.limit is not None and self.size > self.limit:
            self.dropped_at = len(self.steps)
            self.steps = []
            self._text_cache = {}
            return
        lw = np.asarray(log_weights, dtype=float)
        self.steps.append(
            {
                "step": len(self.steps),
                "texts": texts,
                "log_weights": [float(x) if math.isfinite(x) else None for x in lw],
                "weights": normalise(lw).tolist(),
                "states": [
                    "dead" if p.log_weight == -math.inf else "done" if p.done else "running"
                    for p in particles
                ],
                "parents": None,
                "prompts": prompts,
            }
        )

    def resampled(self, parents: np.ndarray) -> None:
        if self.dropped_at is None:
            self.steps[-1]["parents"] = [int(i) for i in parents]

    def finish(self, post: Posterior) -> None:
        """Hand the record to the run's posterior (or say why there is none)."""
        if self.dropped_at is None:
            post.history = self.steps
            return
        post.diagnostics["record"] = (
            f"the per-step record was dropped at step {self.dropped_at}: it passed "
            f"{(self.limit or 0) / 2**20:.0f} MiB, the limit of record=None"
        )

    def _new_prompts(self, particles: Sequence[Particle]) -> list[str]:
        new: list[str] = []
        if len(self._prompts) >= MAX_PROMPTS:
            return new
        for p in particles:
            pending = p.pending
            ctx = getattr(pending[1], "context", None) if pending else None
            if isinstance(ctx, Context) and ctx.prompt not in self._prompts:
                self._prompts[ctx.prompt] = None
                new.append(ctx.prompt)
                if len(self._prompts) >= MAX_PROMPTS:
                    break
        return new
