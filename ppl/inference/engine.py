"""Particles and the step-synchronous scheduler that every inference algorithm drives.

A `Particle` is a suspended execution of a compiled program: a stack of frames `(code, pc,
locals)`, a log weight and a trace of choices. `Engine.advance` runs every live particle to
its next language-model choice (or to its end), interpreting the primitives it meets on the
way; `Engine.resolve` then makes one batched model call per language model for all those
choices and resumes the particles with their tokens. Resampling sits between the two, in the
algorithm that drives the engine (`ppl.inference.smc`).

Weights: `observe(d, v)` adds log d(v), `factor(w)` adds w, `condition(ok)` adds 0 or -inf.
`sample` adds nothing: choices are drawn from their own distributions (the prior is the
proposal). A particle whose weight reaches -inf stops at once and records the statement that
killed it.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ppl.compiler import Code, Program, Site
from ppl.context import NextToken
from ppl.primitives import _IN_COMPILED, PRIMITIVES, as_log_weight, check_distribution, parse_args


class Frame:
    """One activation of a program: code, program counter, locals, and where its value goes."""

    __slots__ = ("code", "pc", "L", "target")

    def __init__(self, code: Code, pc: int, L: dict, target: str | None) -> None:
        self.code = code
        self.pc = pc
        self.L = L
        self.target = target


@dataclass(frozen=True)
class Choice:
    """A random choice made by a particle."""

    site: Site
    name: str | None
    value: Any
    log_prob: float


class _Trace:
    """A persistent (shared-tail) list of choices: forking a particle copies one pointer."""

    __slots__ = ("prev", "choice")

    def __init__(self, prev: _Trace | None, choice: Choice) -> None:
        self.prev = prev
        self.choice = choice

    def to_list(self) -> list[Choice]:
        out = []
        node: _Trace | None = self
        while node is not None:
            out.append(node.choice)
            node = node.prev
        return out[::-1]


class Particle:
    __slots__ = ("frames", "log_weight", "trace", "value", "done", "pending", "killed_by", "error")

    def __init__(self, frames: list[Frame]) -> None:
        self.frames = frames
        self.log_weight = 0.0
        self.trace: _Trace | None = None
        self.value: Any = None
        self.done = False
        self.pending: tuple | None = None  # (kind, dist, target, site, name, value) awaiting the LM
        self.killed_by: Site | None = None
        self.error: BaseException | None = None

    @property
    def alive(self) -> bool:
        return not self.done and self.log_weight > -math.inf

    def fork(self) -> Particle:
        """An independent copy: frames copied by value, contexts and trace shared."""
        memo: dict[int, Any] = {}
        frames = [Frame(f.code, f.pc, copy.deepcopy(f.L, memo), f.target) for f in self.frames]
        other = Particle(frames)
        other.log_weight = self.log_weight
        other.trace = self.trace
        other.value = copy.deepcopy(self.value, memo)
        other.done = self.done
        other.pending = self.pending
        other.killed_by = self.killed_by
        other.error = self.error
        return other


class ProgramError(Exception):
    """A particle's program raised; the original exception is the cause."""


class Engine:
    """Runs particles of one program step by step; see the module docstring."""

    def __init__(
        self, program: Program, args: tuple, kwargs: dict, seed: int | None, errors: str = "raise"
    ) -> None:
        if not isinstance(program, Program):
            raise TypeError(
                f"inference needs a @ppl.program, got {type(program).__name__}; "
                "decorate the function with @ppl.program"
            )
        if errors not in ("raise", "drop"):
            raise ValueError(f"errors must be 'raise' or 'drop', got {errors!r}")
        self.program = program
        self.code = program.code
        self.args = args
        self.kwargs = kwargs
        self.errors = errors
        seq = np.random.SeedSequence(seed)
        self.seed = seq.entropy
        np_seq, torch_seq = seq.spawn(2)
        self.rng = np.random.default_rng(np_seq)
        self.torch_gen = torch.Generator().manual_seed(
            int(torch_seq.generate_state(1, np.uint64)[0] >> np.uint64(1))
        )
        self.lms: list[Any] = []  # language models met, for their counters
        self._counters_at_start: dict[int, tuple[int, int]] = {}
        self.steps = 0
        self.rejections: list[Site] = []  # the statement that killed each rejected particle
        self.errors_seen: Counter[str] = Counter()  # errors of dropped particles (errors="drop")

    def new_particles(self, n: int) -> list[Particle]:
        return [
            Particle([Frame(self.code, 0, self.code.bind(self.args, self.kwargs), None)])
            for _ in range(n)
        ]

    # -- running particles to their next language-model choice ---------------------------------

    def advance(self, particles: Sequence[Particle]) -> None:
        """Run each live particle without a pending choice until it makes one or finishes."""
        _IN_COMPILED[0] = True
        try:
            for p in particles:
                if p.alive and p.pending is None:
                    self._advance(p)
        finally:
            _IN_COMPILED[0] = False

    def _advance(self, p: Particle) -> None:
        try:
            self._run(p)
        except Exception as e:  # a failure inside the user's program
            if self.errors == "raise":
                raise
            p.error = e
            self.errors_seen[f"{type(e).__name__}: {e}"] += 1
            p.log_weight = -math.inf
            p.pending = None

    def _run(self, p: Particle) -> None:
        frames = p.frames
        frame = frames[-1]
        while True:
            r = frame.code.run(frame.L, frame.pc)
            if r[0] == -1:  # the program returned
                frames.pop()
                if not frames:
                    p.done = True
                    p.value = r[1]
                    return
                target = frame.target
                frame = frames[-1]
                if target is not None:
                    frame.L[target] = r[1]
                continue
            resume, target, site_id, callee, args, kwargs = r
            frame.pc = resume
            site = frame.code.sites[site_id]
            kind = _primitive_kind(callee)
            if kind is None:
                if isinstance(callee, Program):
                    frame = Frame(callee.code, 0, callee.code.bind(args, kwargs), target)
                    frames.append(frame)
                else:  # a local holding a plain callable
                    frame.L[target] = callee(*args, **kwargs)
                continue
            name, obj, value = parse_args(kind, args, kwargs)
            if kind == "sample":
                check_distribution("sample", obj)
                if isinstance(obj, NextToken):
                    p.pending = ("sample", obj, target, site, name, None)
                    return
                value = obj.sample(self.rng)
                p.trace = _Trace(p.trace, Choice(site, name, value, float(obj.log_prob(value))))
                frame.L[target] = value
                continue
            if kind == "observe":
                check_distribution("observe", obj)
                if isinstance(obj, NextToken):
                    p.pending = ("observe", obj, target, site, name, value)
                    return
                log_w = as_log_weight(obj.log_prob(value), f"observe() at {site}")
                frame.L[target] = value
            elif kind == "factor":
                log_w = as_log_weight(obj, f"factor() at {site}")
                frame.L[target] = None
            else:  # condition
                log_w = 0.0 if obj else -math.inf
                frame.L[target] = None
            if self._reweight(p, log_w, site):
                return

    def _reweight(self, p: Particle, log_w: float, site: Site) -> bool:
        """Add to the weight; True if the particle is dead."""
        p.log_weight += log_w
        if p.log_weight == -math.inf:
            p.killed_by = site
            self.rejections.append(site)
            return True
        return False

    # -- the batched language-model call -------------------------------------------------------

    def resolve(self, particles: Sequence[Particle]) -> int:
        """One batched model call per language model for all pending choices; resume them.

        Returns the number of particles resumed.
        """
        waiting = [p for p in particles if p.pending is not None and p.log_weight > -math.inf]
        if not waiting:
            return 0
        # every context any pending choice needs, one batched call per language model
        by_lm: dict[int, tuple[Any, list]] = {}
        for p in waiting:
            for ctx in p.pending[1]._contexts():
                by_lm.setdefault(id(ctx.lm), (ctx.lm, []))[1].append(ctx)
        for lm, contexts in by_lm.values():
            if id(lm) not in self._counters_at_start:
                self.lms.append(lm)
                self._counters_at_start[id(lm)] = (lm.forward_calls, lm.tokens_fed)
            lm.compute_logprobs(contexts)
        # draws, batched by kind of token distribution (plain, proposal, constrained, ...)
        kinds: dict[Any, list[Particle]] = {}
        for p in waiting:
            if p.pending[0] == "sample":
                kinds.setdefault(type(p.pending[1])._draw_batch, []).append(p)
        for draw_batch, group in kinds.items():
            drawn = draw_batch([p.pending[1] for p in group], self.torch_gen)
            for p, (token, log_p, log_w) in zip(group, drawn, strict=True):
                _, _, target, site, name, _ = p.pending
                p.pending = None
                p.trace = _Trace(p.trace, Choice(site, name, token, log_p))
                p.frames[-1].L[target] = token
                if log_w != 0.0:
                    self._reweight(p, as_log_weight(log_w, f"sample() at {site}"), site)
        for p in waiting:
            if p.pending is not None:  # observe
                _, dist, target, site, name, value = p.pending
                p.pending = None
                p.frames[-1].L[target] = value
                self._reweight(p, as_log_weight(dist.log_prob(value), f"observe() at {site}"), site)
        self.steps += 1
        return len(waiting)

    def counters(self) -> dict[str, int]:
        """Model calls and tokens fed during this run."""
        start = self._counters_at_start
        return {
            "forward_calls": sum(lm.forward_calls - start[id(lm)][0] for lm in self.lms),
            "tokens_fed": sum(lm.tokens_fed - start[id(lm)][1] for lm in self.lms),
        }


def _primitive_kind(callee: Any) -> str | None:
    try:
        return PRIMITIVES.get(callee)
    except TypeError:  # unhashable callable
        return None
