"""Inference algorithms over compiled programs, and the `Posterior` they return."""

from ppl.inference.posterior import Posterior
from ppl.inference.smc import InferenceWarning, importance, smc

__all__ = ["Posterior", "InferenceWarning", "importance", "smc"]
