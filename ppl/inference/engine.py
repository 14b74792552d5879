"""Particles and the step-synchronous scheduler that every inference algorithm drives.

A `Particle` is a suspended execution of a compiled program: a stack of frames `(code, pc,
locals)`, a log weight and a trace of choices. `Engine.advance` runs every live particle to
its next language-model choice (or to its end), interpreting the primitives it meets on the
way; `Engine.resolve` then makes one batched model call per language model for all those
choices and resumes the particles with their tokens. Resampling sits between the two, in the
algorithm that drives the engine (`ppl.inference.smc`).

Weights: `observe(d, v)` adds log d(v), `factor(w)` adds w, `condition(ok)` adds 0 or -inf.
`sample` adds nothing when a choice is drawn from its own distribution (the prior is the
proposal), and log p(x) - log q(x) when it is drawn from a proposal q. A choice that
`condition(program, {address: value})` fixes is an observation: it adds log p(value). A particle
whose weight reaches -inf stops at once and records the statement that killed it.

Addresses: each frame holds the address prefix of its call and counts the sites met on each
line, so an unnamed choice gets `function:line#count` under its caller's prefix (`ppl.trace`).
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ppl.compiler import Code, Program
from ppl.distributions import Proposed
from ppl.loops import PLAIN_ITERATORS, copy_iterator
from ppl.models.base import Token, check_fed
from ppl.next_token import SAMPLE_CONTINUATION, Continuation, NextToken
from ppl.primitives import PRIMITIVES, parse_args
from ppl.runtime import _IN_COMPILED, as_log_weight, generators, raised_by_ppl
from ppl.trace import Choice, Site, Trace

# Choices fixed by `condition(program, data)`: (address prefix of that program's call, data).
Fixed = tuple[tuple[str, Mapping[str, Any]], ...]
_UNFIXED = object()


class Frame:
    """One activation of a program: code, program counter, locals, and where its value goes.

    `prefix` is the address of the call that made it (followed by "/", empty at the top),
    `counts` the sites met so far on each line, `fixed` the choices fixed by `condition`.
    """

    __slots__ = ("code", "pc", "L", "target", "prefix", "counts", "fixed")

    def __init__(
        self,
        code: Code,
        pc: int,
        L: dict,
        target: str | None,
        prefix: str = "",
        counts: dict[int, int] | None = None,
        fixed: Fixed = (),
    ) -> None:
        self.code = code
        self.pc = pc
        self.L = L
        self.target = target
        self.prefix = prefix
        self.counts = {} if counts is None else counts
        self.fixed = fixed


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
    __slots__ = (
        "frames",
        "log_weight",
        "trace",
        "value",
        "done",
        "pending",
        "killed_by",
        "error",
        "twist",
        "log_likelihood",
    )

    def __init__(self, frames: list[Frame]) -> None:
        self.frames = frames
        self.log_weight = 0.0
        self.trace: _Trace | None = None
        self.value: Any = None
        self.done = False
        # (kind, dist, target, site, name, value, address) awaiting the LM
        self.pending: tuple | None = None
        self.killed_by: Site | None = None
        self.error: BaseException | None = None
        self.twist = 0.0  # twist terms in `log_weight`, taken out at the particle's next step
        self.log_likelihood = 0.0  # observe, factor and condition terms (not reset by resampling)

    @property
    def alive(self) -> bool:
        return not self.done and self.log_weight > -math.inf

    def fork(self) -> Particle:
        """An independent copy: frames copied by value, contexts and trace shared."""
        memo: dict[int, Any] = {}
        counts: dict[int, dict] = {}  # a nested function's frame shares its caller's counts
        frames = [
            Frame(
                f.code,
                f.pc,
                _copy_locals(f, memo),
                f.target,
                f.prefix,
                counts.get(id(f.counts)) or counts.setdefault(id(f.counts), f.counts.copy()),
                f.fixed,
            )
            for f in self.frames
        ]
        other = Particle(frames)
        other.log_weight = self.log_weight
        other.trace = self.trace
        other.value = copy.deepcopy(self.value, memo)
        other.done = self.done
        other.pending = self.pending
        other.killed_by = self.killed_by
        other.error = self.error
        other.twist = self.twist
        other.log_likelihood = self.log_likelihood
        return other

    def to_trace(self) -> Trace:
        """The particle's choices so far, with their score (see `ppl.trace.Trace`)."""
        return Trace(self.trace.to_list() if self.trace is not None else [], self.log_likelihood)


def _copy_locals(frame: Frame, memo: dict[int, Any]) -> dict:
    """A frame's locals, copied by value: its loops' iterators first (`ppl.loops`)."""
    L = frame.L
    for slot, where in frame.code.loops:
        it = L.get(slot)
        if it is not None and it.__class__ not in PLAIN_ITERATORS:
            copy_iterator(it, memo, where)
    try:
        return copy.deepcopy(L, memo)
    except (TypeError, copy.Error) as e:
        for name, value in L.items():
            if name.startswith("__"):
                continue
            try:
                copy.deepcopy(value, memo)
            except (TypeError, copy.Error):
                raise TypeError(
                    f"a particle of {frame.code.name} was forked (resampled), but its local "
                    f"variable `{name}` holds a {type(value).__name__} object, which cannot be "
                    f"copied ({e}); keep such objects out of a program's variables across its "
                    "choices, or make them copyable"
                ) from e
        raise


def _catching_frame(frames: list[Frame], e: Exception, top: int) -> Frame:
    """The innermost of `frames[: top + 1]` whose `try` catches `e`, set to go on in its
    handler, with the frames above it dropped; `e` is raised again if none catches it."""
    for i in range(top, -1, -1):
        frame = frames[i]
        pc = frame.code.catch(frame.L, frame.pc, e)
        if pc is not None:
            del frames[i + 1 :]
            frame.pc = pc
            return frame
    raise e


# the method that interprets each primitive but `sample` and `observe`
_METHODS = {"factor": "_factor", "condition": "_condition", "twist": "_twist"}


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
        self.seed, self.rng, self.torch_gen = generators(seed)
        self.forward_calls = 0  # model calls made for this run's particles
        self.tokens_fed = 0
        self.steps = 0
        self.rejections: list[Site] = []  # the statement that killed each rejected particle
        self.errors_seen: Counter[str] = Counter()  # errors of dropped particles (errors="drop")

    def new_particles(self, n: int) -> list[Particle]:
        fixed: Fixed = (("", self.program.fixed),) if self.program.fixed else ()
        return [
            Particle(
                [Frame(self.code, 0, self.code.bind(self.args, self.kwargs), None, "", {}, fixed)]
            )
            for _ in range(n)
        ]

    # -- running particles to their next language-model choice ---------------------------------

    def advance(self, particles: Sequence[Particle]) -> None:
        """Run each live particle without a pending choice until it makes one or finishes."""
        # set for this context only, and reset to what it was: a nested run (a helper of a
        # program that calls `ppl.smc`) leaves its caller's flag set
        token = _IN_COMPILED.set(True)
        try:
            for i, p in enumerate(particles):
                if p.alive and p.pending is None:
                    try:
                        self._advance(p)
                    except Exception as e:
                        if hasattr(e, "add_note"):
                            e.add_note(_which_particle(p, i, len(particles)))
                        raise
        finally:
            _IN_COMPILED.reset(token)

    def _advance(self, p: Particle) -> None:
        try:
            self._run(p)
        except Exception as e:
            # only the user's exceptions are dropped: ppl's own errors (misuse of ppl, faults
            # of its own) always propagate
            if self.errors == "raise" or raised_by_ppl(e):
                raise
            p.error = e
            self.errors_seen[f"{type(e).__name__}: {e}"] += 1
            p.log_weight = -math.inf
            p.pending = None

    def _run(self, p: Particle) -> None:
        """Run `p` until it suspends at a language-model choice, dies or returns.

        Each block of the top frame runs until it returns, jumps or reaches a site; a site of a
        primitive goes to that primitive's method (`_sample`, `_observe`, `_factor`,
        `_condition`, `_twist`), which returns True when the particle stops there (a pending
        choice, or a weight of -inf). An exception the code raises, in a block or at a site,
        goes to the innermost `try` of the frames that catches it.
        """
        frames = p.frames
        frame = frames[-1]
        while True:
            try:
                r = frame.code.run(frame.L, frame.pc)
            except Exception as e:  # not caught in its frame: a `try` of a caller's may
                frame = _catching_frame(frames, e, len(frames) - 2)
                continue
            try:
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
                    called = self._call(frame, site, target, callee, args, kwargs)
                    if called is not None:
                        frames.append(called)
                        frame = called
                    continue
                if kind == "condition" and args and isinstance(args[-1], Mapping):
                    frame.L[target] = callee(*args, **kwargs)  # the handler form: a value, no site
                    continue
                if (
                    kind == "sample"
                    and len(args) == 1
                    and args[0].__class__ is NextToken
                    and not kwargs
                ):
                    name, obj, value = None, args[0], None  # the common case, without parsing
                else:
                    try:
                        name, obj, value = parse_args(kind, args, kwargs)
                    except TypeError as e:
                        raise TypeError(f"{site}: {e}") from None
                if kind == "sample" or kind == "observe":
                    address = self._address(frame, site, name)
                    if kind == "sample" and frame.fixed:
                        value = _fixed_value(frame.fixed, address)
                        if value is not _UNFIXED:
                            kind = "observe"  # a choice fixed by condition(): an observation
                    if kind == "sample":
                        stopped = self._sample(p, frame, site, target, name, address, obj)
                    else:
                        stopped = self._observe(p, frame, site, target, name, address, obj, value)
                else:
                    if kind != "twist":
                        self._address(frame, site, name)  # counted, for the sites after it
                    method = getattr(self, _METHODS[kind])  # a subclass's own, where it has one
                    stopped = method(p, frame, site, target, obj)
                if stopped:
                    return
            except Exception as e:  # raised at the site: the frame's own `try` may catch it
                frame = _catching_frame(frames, e, len(frames) - 1)

    def _call(
        self, frame: Frame, site: Site, target: str, callee: Any, args: tuple, kwargs: dict
    ) -> Frame | None:
        """A call of a program: the frame to push. A call of a plain callable: None, its value
        stored in `frame`, which goes on."""
        if isinstance(callee, Program) and callee.outer is not None:
            # a function nested in a program: its choices count in the scope of the call it
            # was made in, as a plain function's do in a direct run
            L = callee.code.bind(args, kwargs, share=True)
            L["__outer"] = callee.outer
            return Frame(callee.code, 0, L, target, frame.prefix, frame.counts, frame.fixed)
        if isinstance(callee, Program):
            prefix = self._address(frame, site, None) + "/"
            fixed = frame.fixed
            if callee.fixed:
                fixed = (*fixed, (prefix, callee.fixed))
            code = callee.code
            return Frame(code, 0, code.bind(args, kwargs, share=True), target, prefix, {}, fixed)
        frame.L[target] = callee(*args, **kwargs)  # a local holding a plain callable
        return None

    # -- the primitives: each is told where it was met (the site, the local its value goes to,
    # -- and for a choice its name and address) and returns True when the particle stops there

    def _sample(
        self, p: Particle, frame: Frame, site: Site, target: str, name: str | None, address: str,
        dist: Any,
    ) -> bool:  # fmt: skip
        """A choice: a token waits for the step's batched call; any other is drawn here from
        its own distribution (the weight is unchanged) or from a proposal (`Proposed`: the
        weight gains log p - log q)."""
        if isinstance(dist, NextToken):
            p.pending = ("sample", dist, target, site, name, None, address)
            return True
        if isinstance(dist, Continuation):
            raise TypeError(f"sample() at {site}: {SAMPLE_CONTINUATION}")
        value = dist.sample(self.rng)
        log_p = float(dist.log_prob(value))
        p.trace = _Trace(p.trace, Choice(site, name, value, log_p, address))
        frame.L[target] = value
        if dist.__class__ is Proposed:
            log_w = as_log_weight(dist.log_weight(value), f"sample() at {site}")
            return self._reweight(p, log_w, site)
        return False

    def _observe(
        self, p: Particle, frame: Frame, site: Site, target: str, name: str | None, address: str,
        dist: Any, value: Any,
    ) -> bool:  # fmt: skip
        """log dist(value) joins the weight; a token's or a continuation's waits for the step's
        batched call."""
        if isinstance(dist, NextToken):
            p.pending = ("observe", dist, target, site, name, value, address)
            return True
        if isinstance(dist, Continuation):  # its tokens are fed with the step's call
            try:
                scored = dist.observing(value)
            except (TypeError, ValueError) as e:
                raise type(e)(f"observe() at {site}: {e}") from None
            p.pending = ("observe", scored, target, site, name, value, address)
            return True
        log_w = as_log_weight(dist.log_prob(value), f"observe() at {site}")
        p.log_likelihood += log_w
        frame.L[target] = value
        return self._reweight(p, log_w, site)

    def _factor(self, p: Particle, frame: Frame, site: Site, target: str, log_w: Any) -> bool:
        """`log_w` joins the weight."""
        log_w = as_log_weight(log_w, f"factor() at {site}")
        p.log_likelihood += log_w
        frame.L[target] = None
        return self._reweight(p, log_w, site)

    def _condition(self, p: Particle, frame: Frame, site: Site, target: str, ok: Any) -> bool:
        """The weight is kept when `ok`, else it is -inf."""
        log_w = 0.0 if ok else -math.inf
        p.log_likelihood += log_w
        frame.L[target] = None
        return self._reweight(p, log_w, site)

    def _twist(self, p: Particle, frame: Frame, site: Site, target: str, log_w: Any) -> bool:
        """A twist: in the weight until the particle's next step, then taken out (`smc`)."""
        log_w = as_log_weight(log_w, f"twist() at {site}")
        if log_w == -math.inf:
            raise ValueError(f"twist() at {site}: the twist is -inf; use condition()")
        p.twist += log_w
        frame.L[target] = None
        return self._reweight(p, log_w, site)

    @staticmethod
    def _address(frame: Frame, site: Site, name: str | None) -> str:
        """Count the site on its line; the address of its choice (`ppl.trace.address_of`)."""
        counts = frame.counts
        line = site.lineno
        k = counts.get(line, 0)
        counts[line] = k + 1
        if name is not None:
            return frame.prefix + name
        return f"{frame.prefix}{site.function}:{line}#{k}"

    def _reweight(self, p: Particle, log_w: float, site: Site) -> bool:
        """Add to the weight; True if the particle is dead."""
        p.log_weight += log_w
        if p.log_weight == -math.inf:
            p.killed_by = site
            self.rejections.append(site)
            return True
        return False

    # -- the batched language-model call -------------------------------------------------------

    def compute(self, dists: Sequence[Any]) -> None:
        """Every context the token distributions `dists` need, computed: one batched call per
        language model, its cost counted for this run."""
        by_lm: dict[int, tuple[Any, list]] = {}
        for dist in dists:
            for ctx in dist._contexts():
                by_lm.setdefault(id(ctx.lm), (ctx.lm, []))[1].append(ctx)
        for lm, contexts in by_lm.values():
            fed = check_fed(lm, lm.compute_logprobs(contexts))
            self.forward_calls += fed.calls
            self.tokens_fed += fed.tokens

    def resolve(self, particles: Sequence[Particle]) -> int:
        """One batched model call per language model for all pending choices; resume them.

        Returns the number of particles resumed.
        """
        waiting = [p for p in particles if p.pending is not None and p.log_weight > -math.inf]
        if not waiting:
            return 0
        self.compute([p.pending[1] for p in waiting])
        # draws, batched by kind of token distribution (plain, proposal, constrained, ...)
        kinds: dict[Any, list[Particle]] = {}
        for p in waiting:
            if p.pending[0] == "sample":
                kinds.setdefault(type(p.pending[1])._draw_batch, []).append(p)
        for draw_batch, group in kinds.items():
            drawn = draw_batch([p.pending[1] for p in group], self.torch_gen)
            for p, (token, log_p, log_w) in zip(group, drawn, strict=True):
                _, _, target, site, name, _, address = p.pending
                p.pending = None
                p.trace = _Trace(p.trace, Choice(site, name, token, log_p, address))
                p.frames[-1].L[target] = token
                if log_w != 0.0:
                    self._reweight(p, as_log_weight(log_w, f"sample() at {site}"), site)
        for p in waiting:
            if p.pending is not None:  # observe
                _, dist, target, site, name, value, _ = p.pending
                p.pending = None
                p.frames[-1].L[target] = value
                log_w = as_log_weight(dist.log_prob(value), f"observe() at {site}")
                p.log_likelihood += log_w
                self._reweight(p, log_w, site)
        self.steps += 1
        return len(waiting)

    def counters(self) -> dict[str, int]:
        """Model calls made and tokens fed for this run's particles.

        Under `ppl.map` a call is shared with other inputs: it counts for each input that had
        rows in it, and a token that several inputs needed counts for the first of them.
        """
        return {"forward_calls": self.forward_calls, "tokens_fed": self.tokens_fed}


def _fixed_value(fixed: Fixed, address: str) -> Any:
    """The value `condition` fixed at `address`, or `_UNFIXED`."""
    for prefix, data in fixed:
        if address.startswith(prefix):
            value = data.get(address[len(prefix) :], _UNFIXED)
            if value is not _UNFIXED:
                return value
    return _UNFIXED


def _primitive_kind(callee: Any) -> str | None:
    try:
        return PRIMITIVES.get(callee)
    except TypeError:  # unhashable callable
        return None


def _which_particle(p: Particle, i: int, n: int) -> str:
    """Which particle raised, and the text of its tokens so far (the end of it when long)."""
    pieces = []
    node = p.trace
    while node is not None:
        value = node.choice.value
        if isinstance(value, Token):
            pieces.append("" if value.is_eos else value.text)
        node = node.prev
    text = "".join(reversed(pieces))
    if len(text) > 300:
        text = "..." + text[-300:]
    tokens = f"its text so far: {text!r}" if pieces else "it had drawn no tokens yet"
    return f"raised in particle {i} of {n}; {tokens}"
