"""The converted-weights cache: a GGUF file dequantised once per machine, read in a second after.

transformers dequantises a GGUF file's weights and rebuilds its tokenizer on every load (some
25 s for the embedded model). `cached(...)` runs that conversion once and keeps its result, the
weights as safetensors plus the config and tokenizer files transformers writes, in a directory
that later loads read without opening the GGUF file. Its promises:

* Where: `$PPL_CACHE_DIR`, else `$XDG_CACHE_HOME/ppl`, else `~/.cache/ppl`, under `weights/`.
  `PPL_CACHE_DIR=off` (or `weights_cache=False` where a loader takes it) turns the cache off:
  nothing is read or written there.
* Key: an entry is named by a hash of the source file's content, the dtype, the versions of
  torch, transformers and safetensors, and `FORMAT` (this module's layout); a change of any of
  them makes a new entry. The content hash is computed once per (path, size, mtime) and kept in a
  small stamp file (`weights/.sources/`), so a warm load only `stat`s the source.
* Atomic: an entry is built in a temporary directory beside its final one (`.tmp-HOST-PID-...`),
  every file and the directory fsynced, then renamed into place; a reader never sees a
  half-written entry. Two processes converting at once both finish; the first rename wins and
  the other's copy is discarded. A temporary directory left by a killed build is ignored, and
  removed by the next build (at once if its process is gone, after a day if it ran elsewhere).
* Verified: `manifest.json`, written last, holds the key and every file's size and sha256; for a
  file over `FULL_CHECK_BYTES` (the weights), the sha256 of its first and last MiB only, since
  hashing all of the embedded model's 538 MB would cost 0.4-1 s of every load. So a missing,
  truncated or partly written file, or a damaged header, manifest, config or tokenizer, is
  caught; a flipped byte in the middle of the weights is not. A damaged entry is reported in
  one line on stderr, removed and converted again.
* Told: before converting, one line on stderr says what, for about how long, and where later
  loads will read it.

The loaders (`HFModel.from_pretrained(..., gguf_file=...)`, `ppl.models.load()`) say how to
convert and how to read; this module knows only files, so it imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.metadata
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: the layout of an entry; bump it when what is written changes
FORMAT = 1
#: files larger than this are checked by size and the sha256 of their first and last MiB
FULL_CHECK_BYTES = 64 << 20
MANIFEST = "manifest.json"
OFF = "off"
_END = 1 << 20
_STALE_ELSEWHERE_S = 24 * 3600  # a temporary directory of another host's build
_SECONDS_PER_MB = 0.25  # of GGUF file, to convert it (the embedded model: 98 MB, some 25 s)
_LIBRARIES = ("torch", "transformers", "safetensors")
#: why a cache directory cannot be written, rather than a failed conversion
_UNWRITABLE = frozenset(
    {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.ENOTDIR}
    | {getattr(errno, "EDQUOT", errno.ENOSPC)}
)


def cache_dir() -> Path | None:
    """The cache's root directory, or None when `PPL_CACHE_DIR=off` turns it off."""
    value = os.environ.get("PPL_CACHE_DIR", "").strip()
    if value.lower() == OFF:
        return None
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "ppl"


def cached(
    source: Path,
    dtype: str,
    convert: Callable[[Path], None],
    *,
    root: Path | None = None,
) -> Path | None:
    """The directory holding `source` converted to `dtype`, converting it first if needed.

    `convert(directory)` writes the converted files (flat, no subdirectories) into an empty
    directory. `root`: the cache's root (default `cache_dir()`, which must not be off). None,
    said on stderr, when the cache cannot be written (no permission, a read-only or full disk):
    the caller loads without it.
    """
    root = root if root is not None else cache_dir()
    if root is None:
        raise ValueError(f"the weights cache is off (PPL_CACHE_DIR={OFF})")
    source = Path(source).resolve()
    weights = root / "weights"
    key = {
        "format": FORMAT,
        "source": source.name,
        "source_sha256": _content_hash(source, weights / ".sources"),
        "dtype": dtype,
        **{name: _version(name) for name in _LIBRARIES},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    entry = weights / f"{source.stem}-{dtype}-{digest}"
    estimate = _estimate_s(source)
    if entry.exists():
        problem = verify(entry, key)
        if problem is None:
            return entry
        _say(f"the cached weights at {entry} are damaged ({problem}); converting again, {estimate}")
        _discard(entry)
    else:
        try:
            weights.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return _unwritable(root, e)
        _say(
            f"converting the GGUF weights of {source.name} to {dtype} once ({estimate}); "
            f"later loads read them from {entry}"
        )
    try:
        _build(entry, key, convert)
    except OSError as e:
        return _unwritable(root, e)
    return entry


def _unwritable(root: Path, error: OSError) -> None:
    if error.errno not in _UNWRITABLE:
        raise error
    _say(f"cannot write the weights cache in {root} ({error}); loading without it")


def verify(entry: Path, key: dict[str, Any]) -> str | None:
    """None if `entry` holds what its manifest lists for `key`, else what is wrong with it."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest: the conversion did not finish"
    except (OSError, ValueError) as e:
        return f"unreadable manifest: {e}"
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        return "its manifest is for other weights"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "its manifest lists no files"
    for name, expected in files.items():
        path = entry / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != expected.get("size"):
            return f"{name} has {size} bytes, not {expected.get('size')}"
        if _checksum(path, size) != expected:
            return f"the checksum of {name} differs"
    return None


# -- building an entry ---------------------------------------------------------------------------


def _build(entry: Path, key: dict[str, Any], convert: Callable[[Path], None]) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(entry.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{_host()}-{os.getpid()}-", dir=entry.parent))
    try:
        convert(tmp)
        files = sorted(p for p in tmp.iterdir() if p.is_file())
        manifest = {
            "key": key,
            "files": {p.name: _checksum(p, p.stat().st_size) for p in files},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        for path in [*files, tmp / MANIFEST, tmp]:
            _fsync(path)
        try:
            os.rename(tmp, entry)
        except OSError:
            # another process renamed its copy first: keep that one if it is sound
            if verify(entry, key) is not None:
                raise
            return
        _fsync(entry.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _discard(entry: Path) -> None:
    """Remove a damaged entry: renamed aside first, so no reader meets it half-deleted."""
    aside = entry.parent / f".old-{_host()}-{os.getpid()}-{entry.name}"
    try:
        os.rename(entry, aside)
    except FileNotFoundError:  # another process removed it
        return
    shutil.rmtree(aside, ignore_errors=True)


def _clean_leftovers(weights: Path) -> None:
    """Remove the temporary directories of builds that were killed."""
    host, now = _host(), time.time()
    for path in [*weights.glob(".tmp-*"), *weights.glob(".old-*")]:
        try:
            _, other_host, pid, _ = path.name.split("-", 3)
            mtime = path.stat().st_mtime
        except (ValueError, OSError):
            continue
        running = _running(int(pid)) if other_host == host and pid.isdigit() else True
        if not running or (other_host != host and now - mtime > _STALE_ELSEWHERE_S):
            shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


# -- hashing -------------------------------------------------------------------------------------


def _content_hash(source: Path, stamps: Path) -> str:
    """sha256 of `source`, read from its stamp while its size and mtime are unchanged."""
    st = source.stat()
    stamp = stamps / (hashlib.sha256(str(source).encode()).hexdigest()[:24] + ".json")
    seen = {"path": str(source), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(stamp.read_text())
        if {k: known.get(k) for k in seen} == seen and isinstance(known.get("sha256"), str):
            return known["sha256"]
    digest = _sha256(source)
    with contextlib.suppress(OSError):  # a read-only cache still works, hashing each time
        stamps.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=stamps)
        with os.fdopen(fd, "w") as f:
            json.dump({**seen, "sha256": digest}, f)
        os.replace(tmp, stamp)
    return digest


def _checksum(path: Path, size: int) -> dict[str, Any]:
    if size <= FULL_CHECK_BYTES:
        return {"size": size, "sha256": _sha256(path)}
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(_END))
        f.seek(size - _END)
        h.update(f.read(_END))
    return {"size": size, "sha256_ends": h.hexdigest()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


# -- small helpers -------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _host() -> str:
    return socket.gethostname().replace("-", "_") or "host"


def _estimate_s(source: Path) -> str:
    seconds = max(5, 5 * round(source.stat().st_size / 1e6 * _SECONDS_PER_MB / 5))
    return f"about {seconds:.0f} s"


def _say(message: str) -> None:
    print(f"ppl: {message}", file=sys.stderr, flush=True)
