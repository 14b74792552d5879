"""Inference algorithms over compiled programs, and the `Posterior` they return."""

from ppl.inference.mcmc import MHKernel, Proposal, Restart, UniformToken, mh, pgibbs, pimh
from ppl.inference.posterior import Posterior
from ppl.inference.smc import InferenceWarning, importance, smc
from ppl.inference.steer import smc_steer

__all__ = [
    "Posterior",
    "InferenceWarning",
    "importance",
    "smc",
    "smc_steer",
    "mh",
    "pimh",
    "pgibbs",
    "MHKernel",
    "Proposal",
    "UniformToken",
    "Restart",
]
