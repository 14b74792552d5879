"""MCMC over program traces: the old home of MH, PIMH, particle Gibbs and their helpers.

Each idea now has a module of its own, and every name is re-exported here as it was:

* `ppl.inference.execution`: executions with their snapshots, run forward together (what SMC
  and MCMC share);
* `ppl.inference.metropolis`: regeneration Metropolis-Hastings (`mh`, `MHKernel`, the
  proposals), with its derivation;
* `ppl.inference.particle_mcmc`: SMC sweeps, `pimh` and `pgibbs`;
* `ppl.inference.chains`: the `Posterior` of an MCMC run, or its failure;
* `ppl.inference.texts`: the text of a particle's token choices.

Modules of the package import from those homes, never from here.
"""

from ppl.inference.chains import ZeroEvidence as ZeroEvidence
from ppl.inference.chains import _chain_posterior as _chain_posterior
from ppl.inference.chains import _rejections as _rejections
from ppl.inference.chains import failed_posterior as failed_posterior
from ppl.inference.execution import Execution as Execution
from ppl.inference.execution import Snapshot as Snapshot
from ppl.inference.execution import _trace_len as _trace_len
from ppl.inference.execution import _trace_list as _trace_list
from ppl.inference.execution import is_waiting as is_waiting
from ppl.inference.execution import run_forward as run_forward
from ppl.inference.execution import settle as settle
from ppl.inference.execution import untwist as untwist
from ppl.inference.metropolis import PROPOSALS as PROPOSALS
from ppl.inference.metropolis import MHInfo as MHInfo
from ppl.inference.metropolis import MHKernel as MHKernel
from ppl.inference.metropolis import Proposal as Proposal
from ppl.inference.metropolis import Restart as Restart
from ppl.inference.metropolis import UniformToken as UniformToken
from ppl.inference.metropolis import _init_from as _init_from
from ppl.inference.metropolis import _init_prior as _init_prior
from ppl.inference.metropolis import _init_smc as _init_smc
from ppl.inference.metropolis import _restart_from as _restart_from
from ppl.inference.metropolis import _same as _same
from ppl.inference.metropolis import get_proposal as get_proposal
from ppl.inference.metropolis import mh as mh
from ppl.inference.metropolis import mh_init as mh_init
from ppl.inference.metropolis import mh_step as mh_step
from ppl.inference.metropolis import regenerate as regenerate
from ppl.inference.particle_mcmc import _follow as _follow
from ppl.inference.particle_mcmc import pgibbs as pgibbs
from ppl.inference.particle_mcmc import pimh as pimh
from ppl.inference.particle_mcmc import smc_sweep as smc_sweep
from ppl.inference.texts import token_text as token_text
