"""MCMC over program traces: regeneration Metropolis-Hastings, PIMH and particle Gibbs.

A state of the chain is one complete execution x of the program. Its target density is

    pi(x) = p(x) L(x) / Z,

p(x) the probability of all its choices under their own distributions and L(x) the product of
its `observe`, `factor` and `condition` terms. The engine's log weight of an execution is
w(x) = log L(x) + sum log p/q over choices drawn from a proposal q instead of p (token masks),
i.e. the log importance weight log pi(x) Z - log q(x).

**Regeneration points.** While an execution runs, the chain keeps a *snapshot* of it just
before each language-model token choice: a fork of the suspended particle (frames copied,
contexts and their KV caches shared). Regeneration point m = 0 is the start of the program;
points m = 1..K(x) are the K(x) token choices. Regenerating from point m forks snapshot m and
runs the program on, drawing choice m and everything after it afresh (from the same
distributions the program would use). Nothing is replayed and no prompt is re-encoded.

**The acceptance ratio.** A proposal picks m with probability s(m | x), then regenerates. The
new execution x' shares with x everything before point m, so m is also a regeneration point of
x'. Writing x = (a, b) and x' = (a, b') for the shared prefix a and the suffixes, the suffix is
drawn with density q(b' | a), and pi(x) / q(b | a) = exp(w(x) - w(a)) / Z, the prefix weight
w(a) being common to both. The Metropolis-Hastings ratio on the space extended by m is

    alpha = [pi(x') s(m | x') q(b | a)] / [pi(x) s(m | x) q(b' | a)]
          = exp(w(x') - w(x)) * s(m | x') / s(m | x).

Detailed balance holds for each m separately (the move x -> x' with index m is undone by the
move x' -> x with the same index), so it holds for the mixture over m, whatever s is.

* proposal="token": m uniform on {0, ..., K(x)}: alpha = exp(w(x') - w(x)) (K(x)+1)/(K(x')+1).
* proposal="restart": m = 0 always (independent MH with the program as proposal):
  alpha = exp(w(x') - w(x)).
* a user proposal: any object with `choose(tokens, rng) -> m` and `log_prob(tokens, m)`, where
  `tokens` is the list of the execution's token `Choice`s (so K = len(tokens)).

Choices that are not language-model tokens (NumPyro latents, `Bernoulli`, ...) are not
regeneration points of their own: they are redrawn, from their own distributions, whenever a
regeneration point before them is chosen. A latent drawn before the first token is refreshed
only by m = 0, which redraws everything; under "token" that move has probability 1/(K+1), under
"restart" it is the only one. The ratio above covers these choices unchanged: they belong to
the suffix b, drawn from q(b | a) like the tokens, and any `Proposed` correction they carry is
part of w.

**Starting points.** Each kernel above leaves pi invariant, so the chain's stationary law is pi
whatever its starting state of positive weight, provided s(0 | x) > 0 ("token" and "restart":
m = 0 can propose every execution of positive weight, so the chain is irreducible). `init` only
changes how far from pi the early states are, i.e. how much `warmup` is needed: "prior" runs
the program until each chain has an execution of positive weight, "smc" draws the chains' states
from the final weights of one SMC sweep of `chains` particles (close to pi, and cheap when
the constraints reject most prior runs), and an MCMC `Posterior` continues its chains.

**PIMH** runs an independent SMC sweep as the proposal and accepts it with probability
min(1, Z'/Z), the ratio of the sweeps' evidence estimates; the stationary law of the kept
samples is the exact posterior for any number of particles (Andrieu, Doucet & Holenstein 2010).
**Particle Gibbs** runs conditional SMC: particle 0 follows the current reference execution, the
other N-1 are resampled from all N at every step (multinomially), and the next reference is
drawn from the final weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from ppl.compiler import Program
from ppl.context import Token
from ppl.inference.engine import Choice, Engine, Particle, _Trace
from ppl.inference.posterior import Posterior, log_sum_exp, normalise
from ppl.inference.progress import chains_bar, chains_status


class Snapshot(NamedTuple):
    """A particle suspended before a model call; it is never run itself, only forked."""

    step: int  # scheduler steps the execution had taken when the snapshot was made
    particle: Particle  # its log_weight is the cumulative log weight of the execution so far
    is_choice: bool  # pending a token `sample` (a regeneration point), not an `observe`


@dataclass
class Execution:
    """A run of the program with its snapshots: the state of an MCMC chain."""

    particle: Particle
    history: list[Snapshot] = field(default_factory=list)
    step: int = 0
    # the particle sits at the state of history[-1]: do not snapshot it a second time
    at_snapshot: bool = False

    @property
    def log_weight(self) -> float:
        return self.particle.log_weight

    def tokens(self) -> list[Choice]:
        """The token choices made at the regeneration points 1..K, in order."""
        trace = _trace_list(self.particle.trace)
        out = []
        for snap in self.history:
            if snap.is_choice:
                i = _trace_len(snap.particle.trace)
                if i < len(trace):
                    out.append(trace[i])
        return out

    def regeneration_points(self) -> list[int]:
        """Indices in `history` of the snapshots that are token choices."""
        return [i for i, s in enumerate(self.history) if s.is_choice]


def _trace_list(trace: _Trace | None) -> list[Choice]:
    return trace.to_list() if trace is not None else []


def _trace_len(trace: _Trace | None) -> int:
    n = 0
    while trace is not None:
        n += 1
        trace = trace.prev
    return n


# -- running executions, batched -----------------------------------------------------------------


def untwist(p: Particle) -> None:
    """Take the particle's twist terms out of its weight (see `ppl.twist`)."""
    if p.twist != 0.0:
        p.log_weight -= p.twist
        p.twist = 0.0


def settle(particles: Sequence[Particle]) -> None:
    """After a run to the next suspension: a finished program keeps no twist."""
    for p in particles:
        if p.done:
            untwist(p)


def is_waiting(p: Particle) -> bool:
    return p.pending is not None and p.log_weight > -math.inf


def run_forward(engine: Engine, runs: Sequence[Execution], until: int | None = None) -> None:
    """Run the executions together, one batched model call per step, snapshotting each one
    before every model call, until each has finished, died or taken `until` steps."""
    live = list(runs)
    engine.advance([r.particle for r in live])
    settle([r.particle for r in live])
    while True:
        live = [r for r in live if is_waiting(r.particle) and (until is None or r.step < until)]
        if not live:
            return
        for r in live:
            if r.at_snapshot:
                r.at_snapshot = False
            else:
                p = r.particle
                r.history.append(Snapshot(r.step, p.fork(), p.pending[0] == "sample"))
        ps = [r.particle for r in live]
        engine.resolve(ps)
        for r in live:
            untwist(r.particle)
            r.step += 1
        engine.advance(ps)
        settle(ps)


def regenerate(engine: Engine, x: Execution, m: int) -> Execution:
    """A new execution sharing x before regeneration point m (0: the start), not yet run on."""
    if m == 0:
        return Execution(engine.new_particles(1)[0])
    i = x.regeneration_points()[m - 1]
    snap = x.history[i]
    return Execution(snap.particle.fork(), x.history[: i + 1], snap.step, at_snapshot=True)


# -- proposals -----------------------------------------------------------------------------------


class Proposal(Protocol):
    """Where to regenerate an execution from: m = 0 (the start) or a token position 1..K."""

    def choose(self, tokens: list[Choice], rng: np.random.Generator) -> int: ...

    def log_prob(self, tokens: list[Choice], m: int) -> float: ...


class UniformToken:
    """m uniform on {0, 1, ..., K}: the start or any token position, equally likely."""

    def choose(self, tokens: list[Choice], rng: np.random.Generator) -> int:
        return int(rng.integers(len(tokens) + 1))

    def log_prob(self, tokens: list[Choice], m: int) -> float:
        return -math.log(len(tokens) + 1) if 0 <= m <= len(tokens) else -math.inf


class Restart:
    """m = 0: a fresh execution of the whole program (independent Metropolis-Hastings)."""

    def choose(self, tokens: list[Choice], rng: np.random.Generator) -> int:
        return 0

    def log_prob(self, tokens: list[Choice], m: int) -> float:
        return 0.0 if m == 0 else -math.inf


PROPOSALS = {"token": UniformToken, "restart": Restart}


def get_proposal(proposal: str | Proposal) -> Proposal:
    if isinstance(proposal, str):
        try:
            return PROPOSALS[proposal]()
        except KeyError:
            raise ValueError(
                f"unknown proposal {proposal!r}; choose one of {sorted(PROPOSALS)} or pass an "
                "object with choose(tokens, rng) and log_prob(tokens, m)"
            ) from None
    if not (hasattr(proposal, "choose") and hasattr(proposal, "log_prob")):
        raise TypeError(
            "a proposal needs choose(tokens, rng) -> int and log_prob(tokens, m) -> float, "
            f"got {type(proposal).__name__}"
        )
    return proposal


# -- the Metropolis-Hastings kernel --------------------------------------------------------------


class MHInfo(NamedTuple):
    accepted: np.ndarray  # bool per chain
    log_alpha: np.ndarray  # log acceptance ratio per chain (-inf: rejected outright)


def mh_step(
    engine: Engine,
    states: Sequence[Execution],
    proposal: Proposal,
    until: int | None = None,
) -> tuple[list[Execution], MHInfo]:
    """One regeneration move for every chain; the regenerated runs share model calls.

    With `until`, executions are partial (they stop after `until` scheduler steps) and the
    target is the intermediate one of SMC at that step; the ratio is the same.
    """
    rng = engine.rng
    proposed = []
    moves = []
    for x in states:
        tokens = x.tokens()
        m = proposal.choose(tokens, rng)
        if not isinstance(m, (int, np.integer)) or not 0 <= m <= len(tokens):
            raise ValueError(
                f"proposal {type(proposal).__name__}.choose returned {m!r}; it must be an int "
                f"in 0..{len(tokens)} (0: the start, k: the k-th of the {len(tokens)} tokens)"
            )
        moves.append((int(m), proposal.log_prob(tokens, int(m))))
        proposed.append(regenerate(engine, x, int(m)))
    run_forward(engine, proposed, until)
    out: list[Execution] = []
    accepted = np.zeros(len(states), dtype=bool)
    log_alpha = np.full(len(states), -math.inf)
    for c, (x, y, (m, log_s_fwd)) in enumerate(zip(states, proposed, moves)):
        if y.log_weight > -math.inf:
            log_s_rev = proposal.log_prob(y.tokens(), m)
            la = y.log_weight - x.log_weight + log_s_rev - log_s_fwd
            if math.isnan(la):  # both weights +-inf cannot happen: x has a finite weight
                la = -math.inf
            log_alpha[c] = la
            accepted[c] = math.log(rng.random()) < la
        out.append(y if accepted[c] else x)
    return out, MHInfo(accepted, log_alpha)


def mh_init(
    engine: Engine, chains: int, init: str | Posterior = "prior", tries: int = 100
) -> list[Execution]:
    """The chains' starting executions, each of positive weight (see "Starting points")."""
    if isinstance(init, Posterior):
        return _init_from(init, engine, chains)
    if init == "prior":
        return _init_prior(engine, chains, tries)
    if init == "smc":
        return _init_smc(engine, chains)
    raise ValueError(f"mh: init must be 'prior', 'smc' or a Posterior of an MCMC run, got {init!r}")


def _init_prior(engine: Engine, chains: int, tries: int) -> list[Execution]:
    """Run the program until each chain has an execution with positive weight."""
    states: list[Execution | None] = [None] * chains
    for _ in range(tries):
        todo = [c for c in range(chains) if states[c] is None]
        if not todo:
            break
        runs = [Execution(p) for p in engine.new_particles(len(todo))]
        run_forward(engine, runs)
        for c, r in zip(todo, runs):
            if r.log_weight > -math.inf:
                states[c] = r
    missing = sum(s is None for s in states)
    if missing:
        raise ValueError(
            f"mh: no execution with positive weight for {missing} of {chains} chains after "
            f"{tries} runs of the program each; rejections: {_rejections(engine)}"
        )
    return states  # type: ignore[return-value]


def _init_smc(engine: Engine, chains: int) -> list[Execution]:
    """`chains` executions drawn (with replacement) from the final weights of one SMC sweep of
    `chains` particles; its model calls are the run's first."""
    runs, lw, _ = smc_sweep(engine, chains)
    w = normalise(lw)
    if w.sum() == 0:
        raise ValueError(
            f"mh: init='smc': every one of the {chains} particles of the SMC sweep has zero "
            f"weight; rejections: {_rejections(engine)}"
        )
    return [_restart_from(runs[i]) for i in engine.rng.choice(chains, size=chains, p=w)]


def _init_from(post: Posterior, engine: Engine, chains: int) -> list[Execution]:
    """The last states of an MCMC Posterior's chains: chain c goes on from its chain c when the
    numbers of chains agree, else each chain starts from one of them drawn uniformly."""
    kept = getattr(post, "_last_states", None)
    if kept is None:
        raise ValueError(
            f"mh: init= takes a Posterior of ppl.mh, ppl.pimh or ppl.pgibbs (they keep the "
            f"last state of each chain); a {post.method!r} Posterior keeps only values and "
            "traces: use init='smc' to start from an SMC sample"
        )
    (program, args, kwargs), last = kept
    if program is not engine.program:
        raise ValueError(
            f"mh: the init Posterior comes from a run of {program.__qualname__}, "
            f"not of {engine.program.__qualname__}"
        )
    # its snapshots hold the frames of that run: with other arguments the chains would go on
    # running the old ones
    if not (_same(args, engine.args) and _same(kwargs, engine.kwargs)):
        raise ValueError(
            f"mh: the init Posterior comes from a run of {program.__qualname__} with other "
            "arguments"
        )
    if len(last) == chains:
        return [_restart_from(x) for x in last]
    return [_restart_from(last[i]) for i in engine.rng.choice(len(last), size=chains)]


def _same(a: Any, b: Any) -> bool:
    """Arguments equal element by element (by identity where `==` gives no plain bool)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(map(_same, a, b))
    if a is b:
        return True
    try:
        eq = a == b
    except Exception:
        return False
    return eq if isinstance(eq, bool) else False


def _restart_from(x: Execution) -> Execution:
    """A chain's own handle on a finished execution (the particle itself is never run again)."""
    return Execution(x.particle, list(x.history), x.step)


def _rejections(engine: Engine) -> str:
    counts: dict[str, int] = {}
    for site in engine.rejections:
        counts[str(site)] = counts.get(str(site), 0) + 1
    return "; ".join(f"{k} at {s}" for s, k in counts.items()) or "none recorded"


class MHKernel:
    """A regeneration Metropolis-Hastings kernel for resample-move SMC (`smc(rejuvenation=)`).

    After each resampling every particle makes `moves` MH moves that leave the intermediate
    target of that step invariant (regeneration stops at the current step, see `mh_step`).
    """

    def __init__(self, proposal: str | Proposal = "token", moves: int = 1) -> None:
        if not isinstance(moves, (int, np.integer)) or moves < 1:
            raise ValueError(f"MHKernel: moves must be a positive integer, got {moves!r}")
        self.proposal = get_proposal(proposal)
        self.moves = int(moves)

    def __call__(
        self, engine: Engine, states: list[Execution], step: int
    ) -> tuple[list[Execution], int]:
        accepted = 0
        for _ in range(self.moves):
            states, info = mh_step(engine, states, self.proposal, until=step)
            accepted += int(info.accepted.sum())
        return states, accepted

    def __repr__(self) -> str:
        return f"MHKernel(proposal={type(self.proposal).__name__}, moves={self.moves})"


# -- drivers -------------------------------------------------------------------------------------


def _check_count(name: str, n: Any, minimum: int = 1) -> int:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {n!r}")
    return int(n)


def mh(
    program: Program,
    *args: Any,
    chains: int = 4,
    steps: int = 100,
    proposal: str | Proposal = "token",
    warmup: int = 0,
    init: str | Posterior = "prior",
    seed: int | None = None,
    errors: str = "raise",
    progress: bool | None = None,
    **kwargs: Any,
) -> Posterior:
    """Regeneration Metropolis-Hastings: `chains` chains of `steps` kept states each.

    Every step, each chain proposes to regenerate its execution from a point chosen by
    `proposal` ("token", "restart" or a user `Proposal`) and accepts with the ratio in the
    module docstring; the chains' regenerations share one batched model call per step.
    The chains target the program's posterior pi whatever their starting states, which `init`
    chooses (see "Starting points" in the module docstring):

    * "prior": the program is run until each chain has an execution of positive weight;
    * "smc": one SMC sweep of `chains` particles (resampling at every step), each chain
      starting from an execution drawn from its final weights;
    * a Posterior of `ppl.mh`, `ppl.pimh` or `ppl.pgibbs` on the same program: its chains go
      on from their last states (drawn uniformly among them when the numbers of chains differ).

    The model calls of the initialisation count in `stats` ("forward_calls", "tokens_fed") and
    are also given apart ("init_forward_calls", "init_tokens_fed"). The first `warmup` states
    of each chain are dropped. The result has equal weights, `acceptance` per chain and no
    evidence estimate (`log_evidence` is None).

    `progress` is a progress bar (chain steps done out of chains x (warmup + steps), with the
    acceptance rate so far): True shows it, False hides it, None (the default) shows it when
    stderr is a terminal or in a Jupyter notebook.
    """
    chains = _check_count("chains", chains)
    steps = _check_count("steps", steps)
    warmup = _check_count("warmup", warmup, 0)
    prop = get_proposal(proposal)
    engine = Engine(program, args, kwargs, seed, errors)
    start = time.perf_counter()
    total = warmup + steps
    bar = chains_bar(progress, "mh", chains, total)
    try:
        bar.show(0, f"chains {chains}, initialising")
        states = mh_init(engine, chains, init)
        init_cost = engine.counters()
        kept: list[list[Execution]] = [[] for _ in range(chains)]
        accepted = np.zeros(chains)
        moves_accepted = 0  # warmup included, for the bar
        for s in range(total):
            states, info = mh_step(engine, states, prop)
            moves_accepted += int(info.accepted.sum())
            if s >= warmup:
                accepted += info.accepted
                for c, x in enumerate(states):
                    kept[c].append(x)
            if bar.due() or s == total - 1:
                rate = moves_accepted / (chains * (s + 1))
                bar.show(*chains_status(chains, s + 1, total, rate, warmup))
    finally:
        bar.close()
    post = _chain_posterior("mh", engine, kept, accepted / steps, start, None)
    post.stats["init"] = init if isinstance(init, str) else f"{init.method} Posterior"
    post.stats["init_forward_calls"] = init_cost["forward_calls"]
    post.stats["init_tokens_fed"] = init_cost["tokens_fed"]
    return post


def _chain_posterior(
    method: str,
    engine: Engine,
    kept: list[list[Execution]],
    acceptance: np.ndarray,
    start: float,
    log_evidence: float | None,
) -> Posterior:
    flat = [x for chain in kept for x in chain]
    n = len(flat)
    post = Posterior(
        method=method,
        values=[x.particle.value for x in flat],
        log_weights=np.full(n, -math.log(n)),
        log_evidence=log_evidence,
        ess=np.zeros(0),
        traces=[_trace_list(x.particle.trace) for x in flat],
        chain=np.repeat(np.arange(len(kept)), [len(c) for c in kept]),
        acceptance=np.asarray(acceptance, dtype=float),
        stats={
            "chains": len(kept),
            "steps": len(kept[0]) if kept else 0,
            "seconds": time.perf_counter() - start,
            "seed": engine.seed,
            **engine.counters(),
        },
    )
    # what `mh(init=post)` goes on from: one execution per chain, not every kept state, so that
    # the Posterior does not hold every state's contexts (and their KV caches) alive
    post._last_states = (
        (engine.program, engine.args, engine.kwargs),
        [chain[-1] for chain in kept if chain],
    )
    return post


def smc_sweep(
    engine: Engine, n: int, reference: Execution | None = None
) -> tuple[list[Execution], np.ndarray, float]:
    """One SMC sweep that resamples multinomially at every step, snapshotting every particle.

    With a `reference`, it is conditional SMC: particle 0 follows the reference execution and
    keeps ancestor 0. Returns the final executions, their log weights since the last resampling
    and the log evidence estimate.
    """
    runs = [Execution(p) for p in engine.new_particles(n)]
    carried = np.zeros(n)  # cumulative log weight at the last resampling
    ref_states: list[Particle] = []
    if reference is not None:
        ref_states = [s.particle for s in reference.history] + [reference.particle]
        runs[0] = _follow(reference, 0)
        rest = runs[1:]
    else:
        rest = runs
    engine.advance([r.particle for r in rest])
    settle([r.particle for r in rest])
    log_z = 0.0
    t = 0
    while True:
        lw = np.array([r.particle.log_weight for r in runs]) - carried
        if not any(is_waiting(r.particle) for r in runs):
            break
        log_z += log_sum_exp(lw) - math.log(n)
        if log_z == -math.inf:
            return runs, lw, log_z  # every particle is dead
        w = normalise(lw)
        if reference is not None:
            idx = np.concatenate([[0], engine.rng.choice(n, size=n - 1, p=w)])
        else:
            idx = engine.rng.choice(n, size=n, p=w)
        cum = np.array([r.particle.log_weight for r in runs])
        new_runs = []
        seen: set[int] = set()
        for i in idx.tolist():
            r = runs[i]
            if i in seen:
                r = Execution(r.particle.fork(), list(r.history), r.step, r.at_snapshot)
            else:
                seen.add(i)
                r = Execution(r.particle, list(r.history), r.step, r.at_snapshot)
            new_runs.append(r)
        runs = new_runs
        carried = cum[idx]
        t += 1
        if reference is not None:
            others = runs[1:]
            runs[0] = _follow(reference, t, ref_states)
        else:
            others = runs
        # one step for every particle but the reference: snapshot, resolve, run on
        for r in others:
            if is_waiting(r.particle):
                r.history.append(
                    Snapshot(r.step, r.particle.fork(), r.particle.pending[0] == "sample")
                )
        waiting = [r for r in others if is_waiting(r.particle)]
        engine.resolve([r.particle for r in waiting])
        for r in waiting:
            untwist(r.particle)
            r.step += 1
        engine.advance([r.particle for r in waiting])
        settle([r.particle for r in waiting])
    log_z += log_sum_exp(lw) - math.log(n)
    return runs, lw, log_z


def _follow(reference: Execution, t: int, states: list[Particle] | None = None) -> Execution:
    """The reference execution as it was after t steps (a fork: it may be resampled from)."""
    if states is None:
        states = [s.particle for s in reference.history] + [reference.particle]
    j = min(t, len(states) - 1)
    return Execution(states[j].fork(), list(reference.history[:j]), t, at_snapshot=False)


def pimh(
    program: Program,
    *args: Any,
    particles: int = 16,
    steps: int = 20,
    seed: int | None = None,
    errors: str = "raise",
    progress: bool | None = None,
    **kwargs: Any,
) -> Posterior:
    """Particle independent Metropolis-Hastings: SMC sweeps as independent proposals.

    Each step runs an SMC sweep of `particles` particles, draws one execution x' from its final
    weights and accepts it with probability min(1, Z'/Z), Z' and Z the evidence estimates of
    the new and the current sweep. `log_evidence` is the log of the mean of all sweeps'
    estimates, an unbiased estimate of Z.

    `progress` is a progress bar (steps done out of `steps`, with the acceptance rate and the
    running log evidence estimate): True shows it, False hides it, None (the default) shows it
    when stderr is a terminal or in a Jupyter notebook.
    """
    particles = _check_count("particles", particles)
    steps = _check_count("steps", steps)
    start = time.perf_counter()
    engine = Engine(program, args, kwargs, seed, errors)
    current: Execution | None = None
    current_log_z = -math.inf
    sweeps = []
    kept: list[Execution] = []
    accepted = 0
    bar = chains_bar(progress, "pimh", 1, steps)
    try:
        for s in range(steps):
            runs, lw, log_z = smc_sweep(engine, particles)
            sweeps.append(log_z)
            if log_z > -math.inf:
                pick = runs[int(engine.rng.choice(particles, p=normalise(lw)))]
                if current is None or math.log(engine.rng.random()) < log_z - current_log_z:
                    current, current_log_z = pick, log_z
                    accepted += 1
            if current is not None:
                kept.append(current)
            if bar.due() or s == steps - 1:
                z = log_sum_exp(np.array(sweeps)) - math.log(len(sweeps))
                bar.show(*chains_status(1, s + 1, steps, accepted / (s + 1), log_z=z))
    finally:
        bar.close()
    if not kept:
        raise ValueError(
            f"pimh: every one of {steps} SMC sweeps gave zero evidence; "
            f"rejections: {_rejections(engine)}"
        )
    log_evidence = log_sum_exp(np.array(sweeps)) - math.log(len(sweeps))
    return _chain_posterior(
        "pimh", engine, [kept], np.array([accepted / steps]), start, log_evidence
    )


def pgibbs(
    program: Program,
    *args: Any,
    particles: int = 8,
    steps: int = 50,
    seed: int | None = None,
    errors: str = "raise",
    progress: bool | None = None,
    **kwargs: Any,
) -> Posterior:
    """Particle Gibbs: conditional SMC sweeps, each keeping the previous sample as reference.

    The first sweep is plain SMC. Each later sweep runs `particles` - 1 fresh particles beside
    the reference (particle 0, never resampled away) and draws the next reference from the final
    weights. `acceptance` reports how often the reference changed.

    `progress` is a progress bar (steps done out of `steps`, with how often the reference
    changed so far): True shows it, False hides it, None (the default) shows it when stderr is
    a terminal or in a Jupyter notebook.
    """
    particles = _check_count("particles", particles, 2)
    steps = _check_count("steps", steps)
    start = time.perf_counter()
    engine = Engine(program, args, kwargs, seed, errors)
    reference: Execution | None = None
    kept: list[Execution] = []
    changed = 0
    bar = chains_bar(progress, "pgibbs", 1, steps)
    try:
        for s in range(steps):
            if bar.due():
                rate = changed / max(1, len(kept) - 1)
                bar.show(*chains_status(1, s, steps, rate))
            runs, lw, _ = smc_sweep(engine, particles, reference)
            w = normalise(lw)
            if w.sum() == 0:
                if reference is None:
                    continue  # no execution with positive weight yet
                raise AssertionError("conditional SMC lost its reference")  # cannot happen
            k = int(engine.rng.choice(particles, p=w))
            if reference is not None and k != 0:
                changed += 1
            reference = runs[k]
            kept.append(reference)
        bar.show(*chains_status(1, steps, steps, changed / max(1, len(kept) - 1)))
    finally:
        bar.close()
    if not kept:
        raise ValueError(
            f"pgibbs: no SMC sweep found an execution with positive weight; "
            f"rejections: {_rejections(engine)}"
        )
    return _chain_posterior(
        "pgibbs", engine, [kept], np.array([changed / max(1, len(kept) - 1)]), start, None
    )


def token_text(trace: _Trace | None, cache: dict[int, str]) -> str:
    """The text of a trace's token choices (other choices shown as [value]), memoised by node."""
    if trace is None:
        return ""
    key = id(trace)
    hit = cache.get(key)
    if hit is not None and hit[0] is trace:
        return hit[1]
    value = trace.choice.value
    if isinstance(value, Token):
        piece = "" if value.is_eos else value.text
    else:
        piece = f"[{value!r}]"
    text = token_text(trace.prev, cache) + piece
    cache[key] = (trace, text)  # type: ignore[assignment]
    return text
