"""The JSON form of a `Posterior`: what `Posterior.save` writes and a checkpoint line holds.

The promise: `posterior_to_dict(post)` is strict JSON (`json.dumps(d, allow_nan=False)`
succeeds, and compact output has no line break, so a JSONL file can hold one run per line), and
`posterior_from_dict` of it gives back every field of `post`, equal, with two exceptions:
a `ppl.Token` comes back as a `TokenRecord` (a token without its language model) and a jax array
as a numpy array. Attributes outside the dataclass fields (the states `mh(init=post)` resumes
from) are not saved.

Values of any type (return values, choice values, `stats`, `diagnostics`, `history`) go through
`to_jsonable`. JSON's own values (None, bool, int, finite float, str, list, dict with str keys)
are written as themselves; every other value is a tagged object, `{"__ppl__": tag, ...}`:

    float     {"__ppl__": "float", "value": "inf"}        only inf, -inf and nan
    tuple     {"__ppl__": "tuple", "items": [...]}
    dict      {"__ppl__": "dict", "items": [[key, value], ...]}   a key not a str, or "__ppl__"
    bytes     {"__ppl__": "bytes", "base64": "..."}
    ndarray   {"__ppl__": "ndarray", "dtype": "float32", "shape": [2, 3], "data": [...]}
    scalar    {"__ppl__": "scalar", "dtype": "int64", "value": 3}    a numpy scalar
    token     {"__ppl__": "token", "id": 7, "text": "a"}    + "eos": true, + "base64" (below)
    pickle    {"__ppl__": "pickle", "repr": "...", "base64": "..."}   anything else

Array data is flat, in C order; where a dtype says the entries are floats, as in the float
fields of the posterior itself (`log_weights`, `ess`, ...), a non-finite entry is the string
"inf", "-inf" or "nan", with no tag. Only types that are exactly `list`, `dict`, `int`, ... are
written as JSON: a subclass (a namedtuple, an `OrderedDict`, an `IntEnum`) is pickled, so it
comes back as itself. A token's "base64" holds its bytes when its text does not (part of a
multi-byte character). Loading a "pickle" object runs `pickle.loads`, which can run any code:
load files you trust, or pass `allow_pickle=False`.
"""

from __future__ import annotations

import base64
import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from ppl._version import __version__
from ppl.context import Context, NextToken, Token
from ppl.trace import Choice, Site, Trace

if TYPE_CHECKING:  # `Posterior`'s methods import this module: it does not import them back
    from ppl.inference.posterior import Posterior

FORMAT = "ppl.posterior"
VERSION = 1
TAG = "__ppl__"
_REPR_CHARS = 200


@dataclass(frozen=True, eq=False)
class TokenRecord:
    """A loaded `ppl.Token`: its id, bytes and EOS flag, without the model it came from.

    It compares and hashes as a Token does: equal to a `Token` or `TokenRecord` with the same id
    and bytes, and to its int id; its hash is that of its id. So `distribution()`, and
    comparisons of loaded values and traces with the originals, behave as before saving. It has
    no language model: `ctx + int(record)` or `lm.token(record.id)` makes a Token again.
    """

    id: int
    bytes: bytes
    is_eos: bool = False

    @property
    def text(self) -> str:
        """The token's text; a token holding part of a multi-byte character shows U+FFFD."""
        return self.bytes.decode("utf-8", errors="replace")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Token, TokenRecord)):
            return self.id == other.id and self.bytes == other.bytes
        if isinstance(other, (int, np.integer)) and not isinstance(other, bool):
            return self.id == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __int__(self) -> int:
        return self.id

    __index__ = __int__

    def __repr__(self) -> str:
        return f"TokenRecord({self.id}, {self.text!r}{', eos' if self.is_eos else ''})"


# -- values ----------------------------------------------------------------------------------------


def to_jsonable(value: Any) -> Any:
    """`value` as JSON data (see the module docstring); `from_jsonable` gives it back.

    Raises TypeError for a `Context` or `NextToken` (pickling one would carry its whole language
    model) and for a value that is not JSON data and cannot be pickled.
    """
    t = type(value)
    if value is None or t is bool or t is int or t is str:
        return value
    if t is float:
        return value if math.isfinite(value) else {TAG: "float", "value": _float_out(value)}
    if t is list:
        return [to_jsonable(v) for v in value]
    if t is dict:
        if all(type(k) is str for k in value) and TAG not in value:
            return {k: to_jsonable(v) for k, v in value.items()}
        return {TAG: "dict", "items": [[to_jsonable(k), to_jsonable(v)] for k, v in value.items()]}
    if t is tuple:
        return {TAG: "tuple", "items": [to_jsonable(v) for v in value]}
    if t is bytes:
        return {TAG: "bytes", "base64": _b64(value)}
    if isinstance(value, (Token, TokenRecord)):
        out: dict[str, Any] = {TAG: "token", "id": int(value.id), "text": value.text}
        if value.is_eos:
            out["eos"] = True
        if value.text.encode() != value.bytes:
            out["base64"] = _b64(value.bytes)
        return out
    if isinstance(value, (np.ndarray, np.generic)) or _is_jax_array(value):
        encoded = _encode_array(np.asarray(value))
        if encoded is not None:
            dtype, data = encoded
            if isinstance(value, np.generic):
                return {TAG: "scalar", "dtype": dtype, "value": data[0]}
            return {TAG: "ndarray", "dtype": dtype, "shape": list(np.shape(value)), "data": data}
    if isinstance(value, (Context, NextToken)):
        raise TypeError(
            f"cannot save a {type(value).__name__}: it holds its language model; "
            "return its text or token ids instead"
        )
    try:
        data = pickle.dumps(value)
    except Exception as e:
        raise TypeError(
            f"cannot save a {t.__qualname__} value: it is not JSON data and cannot be pickled ({e})"
        ) from e
    text = repr(value)
    if len(text) > _REPR_CHARS:
        text = text[: _REPR_CHARS - 3] + "..."
    return {TAG: "pickle", "repr": text, "base64": _b64(data)}


def from_jsonable(obj: Any, *, allow_pickle: bool = True) -> Any:
    """The value that `to_jsonable` encoded as `obj`.

    Equal to the original value, except that a Token comes back as a `TokenRecord` and a jax
    array as a numpy array. With `allow_pickle=False` a pickled value raises ValueError instead
    of being unpickled (unpickling can run any code).
    """
    if isinstance(obj, list):
        return [from_jsonable(v, allow_pickle=allow_pickle) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if TAG not in obj:
        return {k: from_jsonable(v, allow_pickle=allow_pickle) for k, v in obj.items()}
    tag = obj[TAG]
    try:
        if tag == "float":
            return _float_in(obj["value"])
        if tag == "tuple":
            return tuple(from_jsonable(v, allow_pickle=allow_pickle) for v in obj["items"])
        if tag == "dict":
            return {
                from_jsonable(k, allow_pickle=allow_pickle): from_jsonable(
                    v, allow_pickle=allow_pickle
                )
                for k, v in obj["items"]
            }
        if tag == "bytes":
            return base64.b64decode(obj["base64"])
        if tag == "token":
            raw = base64.b64decode(obj["base64"]) if "base64" in obj else obj["text"].encode()
            return TokenRecord(int(obj["id"]), raw, bool(obj.get("eos", False)))
        if tag == "ndarray":
            return _decode_array(obj["dtype"], obj["data"], obj["shape"], allow_pickle)
        if tag == "scalar":
            return _decode_array(obj["dtype"], [obj["value"]], [], allow_pickle)[()]
        if tag == "pickle":
            if not allow_pickle:
                raise ValueError(f"refusing to unpickle {obj.get('repr')!r}: allow_pickle=False")
            return pickle.loads(base64.b64decode(obj["base64"]))
    except KeyError as e:
        raise ValueError(f"malformed {tag!r} object: no {e.args[0]!r} in it") from None
    raise ValueError(f"unknown {TAG} tag {tag!r}")


def _encode_array(arr: np.ndarray) -> tuple[str, list[Any]] | None:
    """(dtype name, flat data) of an array whose entries JSON can hold; None for other dtypes."""
    dt = arr.dtype
    flat = arr.ravel()
    if dt.kind == "f" and dt.itemsize <= 8:
        data = [_float_out(x) for x in flat.tolist()]
    elif dt.kind in "biuU":
        data = flat.tolist()
    elif dt.kind == "O":
        data = [to_jsonable(x) for x in flat]
    else:  # complex, datetime, bytes, structured, long double: pickled as a whole
        return None
    name = dt.name if dt.kind in "biuf" and dt.isnative else dt.str
    return name, data


def _decode_array(dtype: str, data: list[Any], shape: list[int], allow_pickle: bool) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "O":
        arr = np.empty(len(data), dtype=object)
        for i, x in enumerate(data):  # element by element: a list entry must stay one object
            arr[i] = from_jsonable(x, allow_pickle=allow_pickle)
    elif dt.kind == "f":
        arr = np.array([_float_in(x) for x in data], dtype=dt)
    else:
        arr = np.array(data, dtype=dt)
    return arr.reshape(shape)


def _is_jax_array(value: Any) -> bool:
    # jax is imported by whoever made the array, never here: saving needs no jax import
    import sys

    jax = sys.modules.get("jax")
    return jax is not None and isinstance(value, jax.Array)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _float_out(x: float) -> float | str:
    """A float as JSON: itself when finite, else "inf", "-inf" or "nan"."""
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _float_in(x: float | int | str) -> float:
    if isinstance(x, str) and x not in ("inf", "-inf", "nan"):
        raise ValueError(f"{x!r} is not a float")
    return float(x)


# -- posteriors ------------------------------------------------------------------------------------


def posterior_to_dict(post: Posterior) -> dict[str, Any]:
    """Every field of `post` as strict JSON data (see the module docstring and docs/inference.md).

    Sites are written once, in a `sites` list, and each choice names its site by index there.
    """
    sites: dict[Site, int] = {}
    traces = [_trace_out(t, sites) for t in post.traces]  # fills `sites`
    return {
        "format": FORMAT,
        "version": VERSION,
        "ppl_version": __version__,
        "method": post.method,
        "values": [to_jsonable(v) for v in post.values],
        "log_weights": _floats_out(post.log_weights),
        "log_evidence": None if post.log_evidence is None else _float_out(post.log_evidence),
        "ess": _floats_out(post.ess),
        "resampled": [int(t) for t in post.resampled],
        "ancestors": [[int(i) for i in a] for a in post.ancestors],
        "sites": [
            {"filename": s.filename, "lineno": s.lineno, "function": s.function, "source": s.source}
            for s in sites
        ],
        "traces": traces,
        "failure": post.failure,
        "diagnostics": to_jsonable(post.diagnostics),
        "stats": to_jsonable(post.stats),
        "log_evidence_steps": _floats_out(post.log_evidence_steps),
        "chain": None if post.chain is None else [int(c) for c in post.chain],
        "acceptance": None if post.acceptance is None else _floats_out(post.acceptance),
        "history": None if post.history is None else to_jsonable(post.history),
    }


def posterior_from_dict(
    d: dict[str, Any], *, cls: type[Posterior], allow_pickle: bool = True
) -> Posterior:
    """The `Posterior` that `posterior_to_dict` wrote as `d`, made as `cls(**fields)`.

    `cls` is the `Posterior` class (`Posterior.from_dict` passes itself: this module does not
    import it). Traces written from a `Trace` come back as a `Trace`, others as a list of
    `Choice`; sites come back as `Site`s equal to the originals. Raises ValueError when `d` is
    not a ppl posterior, is of a later format version, or lacks a field.
    """
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        found = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"not a ppl posterior (format {found!r}, expected {FORMAT!r})")
    version = d.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ValueError(
            f"ppl posterior format version {version!r} is newer than this ppl reads ({VERSION}); "
            f"it was written by ppl {d.get('ppl_version')}"
        )
    missing = [k for k in [f.name for f in fields(cls)] + ["sites"] if k not in d]
    if missing:
        raise ValueError(f"malformed ppl posterior: missing {', '.join(missing)}")

    try:
        return _posterior_from_dict(d, cls, allow_pickle)
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"malformed ppl posterior: {type(e).__name__}: {e}") from e


def _posterior_from_dict(d: dict[str, Any], cls: type[Posterior], allow_pickle: bool) -> Posterior:
    def value(x: Any) -> Any:
        return from_jsonable(x, allow_pickle=allow_pickle)

    sites = [Site(s["filename"], int(s["lineno"]), s["function"], s["source"]) for s in d["sites"]]
    z = d["log_evidence"]
    return cls(
        method=d["method"],
        values=[value(v) for v in d["values"]],
        log_weights=_floats_in(d["log_weights"]),
        log_evidence=None if z is None else _float_in(z),
        ess=_floats_in(d["ess"]),
        resampled=[int(t) for t in d["resampled"]],
        ancestors=[np.asarray(a, dtype=np.int64) for a in d["ancestors"]],
        traces=[_trace_in(t, sites, value) for t in d["traces"]],
        failure=d["failure"],
        diagnostics=value(d["diagnostics"]),
        stats=value(d["stats"]),
        log_evidence_steps=_floats_in(d["log_evidence_steps"]),
        chain=None if d["chain"] is None else np.asarray(d["chain"], dtype=np.int64),
        acceptance=None if d["acceptance"] is None else _floats_in(d["acceptance"]),
        history=None if d["history"] is None else value(d["history"]),
    )


def _floats_out(xs: Any) -> list[float | str]:
    return [_float_out(x) for x in np.asarray(xs, dtype=float).ravel().tolist()]


def _floats_in(xs: list[float | str]) -> np.ndarray:
    return np.array([_float_in(x) for x in xs], dtype=np.float64)


def _trace_out(trace: Sequence[Choice], sites: dict[Site, int]) -> dict[str, Any]:
    choices = []
    for c in trace:
        site = None if c.site is None else sites.setdefault(c.site, len(sites))
        choices.append(
            {
                "address": c.address,
                "name": c.name,
                "value": to_jsonable(c.value),
                "log_prob": _float_out(c.log_prob),
                "site": site,
            }
        )
    out: dict[str, Any] = {"choices": choices}
    if isinstance(trace, Trace):  # a plain list of choices has no likelihood to keep
        out["log_likelihood"] = _float_out(trace.log_likelihood)
    return out


def _trace_in(t: dict[str, Any], sites: list[Site], value: Any) -> Sequence[Choice]:
    choices = [
        Choice(
            site=None if c["site"] is None else sites[c["site"]],
            name=c["name"],
            value=value(c["value"]),
            log_prob=_float_in(c["log_prob"]),
            address=c["address"],
        )
        for c in t["choices"]
    ]
    if "log_likelihood" in t:
        return Trace(choices, _float_in(t["log_likelihood"]))
    return choices
