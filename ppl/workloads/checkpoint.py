"""The checkpoint of a mapped run: a JSONL file, one finished item per line.

Each line is one JSON object:

    {"format": "ppl.map/2", "index": 3, "input_hash": "…", "run_hash": "…", "run": {…},
     "status": "ok", "posterior": {…}}                      (see `Posterior.to_dict`)
    {"format": "ppl.map/2", "index": 4, "input_hash": "…", "run_hash": "…", "run": {…},
     "status": "error", "error": "ValueError: …", "traceback": "…"}

`input_hash` identifies the item's arguments by content; `run` holds the hashes of the parts of
the work (the method, the program and each program it reads, the model, the seed, each option:
`ppl.workloads.fingerprint`), and `run_hash` the hash of them all, so that a file written by
other work is refused with what changed. A line is written and flushed to the disk (`fsync`)
the moment its item finishes, so a run killed at any point loses at most the items still
running. On a rerun the file is read first: items whose last line says "ok" are returned from
it and not run again; items that raised are run again (their new line follows the old one, and
the last line of an index counts). A line cut off by the kill is dropped. A file written for
other inputs or other work is refused, with what differs, rather than mixed with this run's
results.

The file holds data, not code. A result holding a value JSON cannot hold (see
`ppl.inference.serialize`) stops the run with a `SaveError` (a TypeError) naming the item and the
value, before anything of that item is written: the lines already written stay, and a rerun
resumes from them. `ppl.map(..., allow_pickle=True)` writes such values as pickles; reading them
back needs `allow_pickle=True` too, and without it a line holding a pickle is refused
(`PickleRefusedError`, a ValueError naming the line and the value) before anything of it is
unpickled, as unpickling can run any code.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from typing import Any

from ppl.inference.posterior import Posterior
from ppl.inference.serialize import (
    PLAIN_DATA,
    UNSAFE,
    PickleRefusedError,
    SaveError,
    pickle_advice,
)
from ppl.workloads.fingerprint import content, digest
from ppl.workloads.items import ItemError

FORMAT = "ppl.map/2"
_MEND = (
    "Delete that line to run its item again (the other lines are kept), or use another "
    "checkpoint file"
)
_CHECK = b',"check":"'


def _sealed(body: bytes) -> bytes:
    """A record's JSON with its checksum added as the last field."""
    return body[:-1] + _CHECK + hashlib.sha256(body).hexdigest()[:32].encode() + b'"}'


def _intact(line: bytes) -> bool:
    """Whether a line holds the checksum of what it holds (`_sealed`)."""
    at = line.rfind(_CHECK)
    if at < 0 or not line.endswith(b'"}'):
        return False
    body = line[:at] + b"}"
    return line[at + len(_CHECK) : -2] == hashlib.sha256(body).hexdigest()[:32].encode()


def _write_all(fd: int, data: bytes) -> None:
    """`os.write` until all of `data` is written (a write may take part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def input_hash(args: tuple, kwargs: dict[str, Any], index: int | None = None) -> str:
    """The hash of one item's arguments, by content (`ppl.workloads.fingerprint`).

    Raises `Unidentifiable` for an argument whose content cannot be read.
    """
    where = "an input" if index is None else f"input {index}"
    positional = [content(a, f"{where}, argument {j}") for j, a in enumerate(args)]
    named = sorted([k, content(v, f"{where}, argument {k!r}")] for k, v in kwargs.items())
    return digest([positional, named])


def differences(mine: dict[str, Any], theirs: Any) -> list[str]:
    """What differs between this run's fingerprint and the one a file was written by."""
    if not isinstance(theirs, dict):
        return ["the run's fingerprint is missing"]
    out = []
    if theirs.get("method") != mine["method"]:
        out.append(f"the method ({theirs.get('method')} then, {mine['method']} now)")
    programs = theirs.get("program") or {}
    if not isinstance(programs, dict):
        programs = {}
    changed = [name for name, h in mine["program"].items() if programs.get(name) != h]
    gone = [name for name in programs if name not in mine["program"]]
    if changed or gone:
        named = ", ".join(changed + gone)
        out.append(f"the program ({named}: its source, or what the names it reads hold)")
    if theirs.get("model") != mine["model"]:
        out.append("the model (its spec or one of its options)")
    if theirs.get("seed") != mine["seed"]:
        out.append(f"the seed ({theirs.get('seed')!r} then, {mine['seed']!r} now)")
    options = theirs.get("options") or {}
    if not isinstance(options, dict):
        options = {}
    for name in sorted(set(options) | set(mine["options"])):
        if name not in options:
            out.append(f"option {name!r} (not given then)")
        elif name not in mine["options"]:
            out.append(f"option {name!r} (given then, not now)")
        elif options[name] != mine["options"][name]:
            out.append(f"option {name!r}")
    return out or ["the run's settings"]


class Checkpoint:
    """Appends finished items to `path` and reads back a run's earlier ones."""

    def __init__(
        self,
        path: str | os.PathLike,
        fingerprint: dict[str, Any],
        hashes: list[str],
        *,
        allow_pickle: bool = False,
    ):
        self.path = os.fspath(path)
        self.allow_pickle = allow_pickle
        self.fingerprint = fingerprint
        self.run_hash = digest(fingerprint)
        self.hashes = hashes
        self._file: Any = None
        self.written = 0  # lines in the file: read back, then appended

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
            where = f"checkpoint {self.path}, line {number}"
            try:
                record = json.loads(line)
            except ValueError:
                raise ValueError(
                    f"{where}: not a JSON line; the file is damaged (or not a ppl.map "
                    f"checkpoint). {_MEND}"
                ) from None
            self._check(record, number)
            if not _intact(line):
                raise ValueError(
                    f"{where}: the line was changed after ppl wrote it (its checksum does not "
                    f"match what it holds), so its result cannot be trusted. {_MEND}"
                )
            self.written += 1
            i = record["index"]
            if record["status"] == "ok":
                out[i] = self._posterior(record["posterior"], i, number)
            else:
                out[i] = ItemError(i, record["error"], record.get("traceback", ""), self.hashes[i])
        self._open(data, len(complete))
        return out

    def _posterior(self, d: Any, index: int, number: int) -> Posterior:
        """Item `index`'s posterior from line `number`: no pickle in it is loaded unless
        `allow_pickle` (the check comes before any unpickling)."""
        where = f"checkpoint {self.path}, line {number}"
        try:
            return Posterior.from_dict(d, allow_pickle=self.allow_pickle)
        except PickleRefusedError as e:
            raise PickleRefusedError(
                f"{where}: item {index}'s {e.where} is a pickled value (the file records its "
                f"repr as {e.recorded!r}); it was not loaded, as unpickling can run any code. If "
                "this file was written by your own run with ppl.map(..., allow_pickle=True), "
                f"resume with allow_pickle=True too. {UNSAFE}",
                where=e.where,
                recorded=e.recorded,
            ) from None
        except ValueError as e:
            raise ValueError(f"{where}: item {index}: {e}") from e

    def _check(self, record: Any, number: int) -> None:
        where = f"checkpoint {self.path}, line {number}"
        if isinstance(record, dict) and record.get("format") == "ppl.map/1":
            raise ValueError(
                f"{where}: the file was written by an earlier ppl (format ppl.map/1), whose "
                "checkpoints do not record the program's source or the model's options, so "
                "its results cannot be checked against this run: use another checkpoint file"
            )
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError(f"{where}: not a ppl.map checkpoint record")
        if record.get("run_hash") != self.run_hash:
            changed = "; ".join(differences(self.fingerprint, record.get("run")))
            raise ValueError(
                f"{where}: the file was written by other work; what changed: {changed}. Its "
                "results are not this run's: use another checkpoint file (or delete this one)"
            )
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

    def _open(self, data: bytes, good: int) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        self._file = open(self.path, "ab", buffering=0)  # each line goes to the disk whole
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
            "run": self.fingerprint,
        }
        if isinstance(result, Posterior):
            try:
                posterior = result.to_dict(allow_pickle=self.allow_pickle)
            except SaveError as e:  # nothing of this item is written; earlier lines stay
                advice = (
                    pickle_advice(
                        "pass ppl.map(..., allow_pickle=True), to this run and to every run "
                        "that resumes from the file"
                    )
                    if e.needs_pickle
                    else f"Make it plain data ({PLAIN_DATA})."
                )
                raise SaveError(
                    f"ppl.map: item {index}'s result cannot be written to checkpoint "
                    f"{self.path} (the lines already written are kept): {e.reason}. {advice}",
                    where=e.where,
                    what=e.what,
                    reason=e.reason,
                    needs_pickle=e.needs_pickle,
                ) from None
            record.update(status="ok", posterior=posterior)
        else:
            record.update(status="error", error=result.error, traceback=result.traceback)
        body = json.dumps(record, separators=(",", ":"), allow_nan=False).encode()
        self._write(index, _sealed(body) + b"\n")

    def _write(self, index: int, line: bytes) -> None:
        """Append `line` and flush it to the disk; on a failed write (a full disk), cut the
        file back to where the line began, so that what it held stays readable."""
        start = self._file.seek(0, os.SEEK_END)
        try:
            _write_all(self._file.fileno(), line)
            os.fsync(self._file.fileno())
        except OSError as e:
            try:
                self._file.truncate(start)
            except OSError:
                pass  # a rerun drops a line cut off without its newline
            kept = self.written
            raise OSError(
                e.errno,
                f"checkpoint {self.path}: cannot write item {index}: "
                f"{e.strerror or e} ({errno.errorcode.get(e.errno or 0, 'error')}); the file "
                f"keeps the {kept} items written before it, and a rerun resumes from them "
                "once the cause is fixed",
            ) from e
        self.written += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
