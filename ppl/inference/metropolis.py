"""Regeneration Metropolis-Hastings over program traces: `mh`, `MHKernel` and the proposals.

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

Executions and their snapshots are in `ppl.inference.execution`; PIMH and particle Gibbs, MCMC
whose proposals are SMC sweeps, in `ppl.inference.particle_mcmc`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from ppl.compiler import Program
from ppl.inference.builders import ZeroEvidence, chain_posterior, failed_posterior, rejections
from ppl.inference.engine import Choice, Engine
from ppl.inference.execution import Execution, run_forward
from ppl.inference.notices import count, fits
from ppl.inference.options import checks_options
from ppl.inference.particle_mcmc import smc_sweep
from ppl.inference.posterior import Posterior, counts_mask_leaks
from ppl.inference.progress import chains_bar, chains_status
from ppl.inference.weights import normalise

# -- regeneration --------------------------------------------------------------------------------


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
        raise ZeroEvidence(
            f"no execution with positive weight for {missing} of {chains} chains after "
            f"{tries} runs of the program each; rejections: {rejections(engine)}"
        )
    return states  # type: ignore[return-value]


def _init_smc(engine: Engine, chains: int) -> list[Execution]:
    """`chains` executions drawn (with replacement) from the final weights of one SMC sweep of
    `chains` particles; its model calls are the run's first."""
    runs, lw, _ = smc_sweep(engine, chains)
    w = normalise(lw)
    if w.sum() == 0:
        raise ZeroEvidence(
            f"init='smc': every one of the {chains} particles of the SMC sweep has zero "
            f"weight; rejections: {rejections(engine)}"
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


@counts_mask_leaks
@checks_options
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
    chains = count("chains", chains)
    steps = count("steps", steps)
    warmup = count("warmup", warmup, 0)
    fits(f"mh with chains={chains} x steps={steps} kept states", chains * steps)
    prop = get_proposal(proposal)
    engine = Engine(program, args, kwargs, seed, errors)
    start = time.perf_counter()
    total = warmup + steps
    bar = chains_bar(progress, "mh", chains, total)
    try:
        bar.show(0, f"chains {chains}, initialising")
        try:
            states = mh_init(engine, chains, init)
        except ZeroEvidence as e:
            return failed_posterior("mh", engine, str(e), start, None)
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
    post = chain_posterior("mh", engine, kept, accepted / steps, start, None)
    post.stats["init"] = init if isinstance(init, str) else f"{init.method} Posterior"
    post.stats["init_forward_calls"] = init_cost["forward_calls"]
    post.stats["init_tokens_fed"] = init_cost["tokens_fed"]
    return post
