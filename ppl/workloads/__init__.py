"""Workloads: one inference method over many inputs (`ppl.map`, `ppl.imap`), on this machine or
on Ray workers, with a checkpoint file that loses nothing.

* `run`: `map` and `imap`, their options (`MapOptions`) and their results.
* `items`: what an item is: its call, with its seed, and the error it becomes when it raises.
* `batch`: the shared step: the runs in flight share each batched model call.
* `checkpoint`: the JSONL file of finished items.
* `cluster`: Ray workers (optional: `pip install ray`, or `pip install -e '.[ray]'` in a clone).
"""

from ppl.workloads.batch import SharedPassOutOfMemory
from ppl.workloads.cluster import WorkersLost
from ppl.workloads.items import ItemError
from ppl.workloads.run import Results, Running, imap, map

__all__ = [
    "map",
    "imap",
    "Results",
    "Running",
    "ItemError",
    "SharedPassOutOfMemory",
    "WorkersLost",
]
