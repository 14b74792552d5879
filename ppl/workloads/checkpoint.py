"""The checkpoint of a mapped run: a JSONL file, one finished item per line.

Each line is one JSON object:

    {"format": "ppl.map/1", "index": 3, "input_hash": "…", "run_hash": "…",
     "status": "ok", "posterior": {…}}                      (see `Posterior.to_dict`)
    {"format": "ppl.map/1", "index": 4, "input_hash": "…", "run_hash": "…",
     "status": "error", "error": "ValueError: …", "traceback": "…"}

`input_hash` identifies the item's arguments; `run_hash` the method, program, seed, options and
model. A line is written and flushed to the disk (`fsync`) the moment its item finishes, so a
run killed at any point loses at most the items still running. On a rerun the file is read
first: items whose last line says "ok" are returned from it and not run again; items that raised
are run again (their new line follows the old one, and the last line of an index counts). A
line cut off by the kill is dropped. A file written for other inputs or other settings is
refused, with what differs, rather than mixed with this run's results.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from ppl.inference.posterior import Posterior
from ppl.workloads.items import ItemError

FORMAT = "ppl.map/1"


def canonical(x: Any) -> Any:
    """A JSON-able form of `x` that is the same for equal inputs in every process."""
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        return x if x == x and abs(x) != float("inf") else repr(x)
    if isinstance(x, (list, tuple)):
        return [type(x).__name__, [canonical(v) for v in x]]
    if isinstance(x, dict):
        return ["dict", sorted([str(k), canonical(v)] for k, v in x.items())]
    spec = getattr(x, "spec", None)  # a language model: its spec names it
    if spec is not None:
        return ["model", str(spec)]
    text = repr(x)
    if " at 0x" in text:  # an address changes from process to process
        text = ""
    return [type(x).__module__ + "." + type(x).__qualname__, text]


def _digest(x: Any) -> str:
    data = json.dumps(canonical(x), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()[:32]


def input_hash(args: tuple, kwargs: dict[str, Any]) -> str:
    """The hash of one item's arguments."""
    return _digest([list(args), kwargs])


class Checkpoint:
    """Appends finished items to `path` and reads back a run's earlier ones."""

    def __init__(self, path: str | os.PathLike, fingerprint: dict[str, Any], hashes: list[str]):
        self.path = os.fspath(path)
        self.fingerprint = fingerprint
        self.run_hash = _digest(fingerprint)
        self.hashes = hashes
        self._file: Any = None

    def load(self) -> dict[int, Any]:
        """The items the file holds: index -> Posterior or ItemError (the last line of each)."""
        if not os.path.exists(self.path):
            return {}
        with open(self.path, "rb") as f:
            data = f.read()
        out: dict[int, Any] = {}
        # a line is complete once its newline is written; what follows the last newline was
        # cut off by a kill, and that item runs again
        complete = data[: data.rfind(b"\n") + 1]
        for number, line in enumerate(complete.split(b"\n")[:-1], 1):
            try:
                record = json.loads(line)
            except ValueError:
                raise ValueError(
                    f"checkpoint {self.path}, line {number}: not a JSON line; the file is "
                    "damaged (or not a ppl.map checkpoint)"
                ) from None
            self._check(record, number)
            i = record["index"]
            if record["status"] == "ok":
                out[i] = Posterior.from_dict(record["posterior"])
            else:
                out[i] = ItemError(i, record["error"], record.get("traceback", ""), self.hashes[i])
        self._open(data, len(complete))
        return out

    def _check(self, record: Any, number: int) -> None:
        where = f"checkpoint {self.path}, line {number}"
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError(f"{where}: not a ppl.map checkpoint record")
        i = record.get("index")
        if not isinstance(i, int) or not 0 <= i < len(self.hashes):
            raise ValueError(
                f"{where}: item {i!r} is not one of this run's {len(self.hashes)} inputs; the "
                "file was written for other inputs: use another checkpoint file"
            )
        if record.get("input_hash") != self.hashes[i]:
            raise ValueError(
                f"{where}: input {i} differs from the one the file was written for; use "
                "another checkpoint file for other inputs"
            )
        if record.get("run_hash") != self.run_hash:
            raise ValueError(
                f"{where}: the file was written by a run with other settings (method, program, "
                f"seed, options or model); this run's are {self.fingerprint!r:.300}. Use "
                "another checkpoint file"
            )

    def _open(self, data: bytes, good: int) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        self._file = open(self.path, "ab")
        if good < len(data):
            self._file.truncate(good)

    def append(self, index: int, result: Any) -> None:
        """Write one finished item and flush it to the disk."""
        if self._file is None:
            self._open(b"", 0)
        record: dict[str, Any] = {
            "format": FORMAT,
            "index": index,
            "input_hash": self.hashes[index],
            "run_hash": self.run_hash,
        }
        if isinstance(result, Posterior):
            record.update(status="ok", posterior=result.to_dict())
        else:
            record.update(status="error", error=result.error, traceback=result.traceback)
        line = json.dumps(record, separators=(",", ":"), allow_nan=False)
        self._file.write(line.encode() + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
