"""Inference algorithms over compiled programs, and the `Posterior` they return."""

from ppl.inference.exact import NotEnumerable, exact
from ppl.inference.metropolis import MHKernel, Proposal, Restart, UniformToken, mh
from ppl.inference.notices import InferenceWarning
from ppl.inference.particle_mcmc import pgibbs, pimh
from ppl.inference.posterior import Posterior
from ppl.inference.smc import importance, smc
from ppl.inference.steer import smc_steer

__all__ = [
    "Posterior",
    "InferenceWarning",
    "importance",
    "smc",
    "exact",
    "NotEnumerable",
    "smc_steer",
    "mh",
    "pimh",
    "pgibbs",
    "MHKernel",
    "Proposal",
    "UniformToken",
    "Restart",
]
