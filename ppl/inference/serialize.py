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
    complex   {"__ppl__": "complex", "real": 1.0, "imag": "nan"}
    tuple     {"__ppl__": "tuple", "items": [...]}
    dict      {"__ppl__": "dict", "items": [[key, value], ...]}   a key not a str, or "__ppl__"
    bytes     {"__ppl__": "bytes", "base64": "..."}
    ndarray   {"__ppl__": "ndarray", "dtype": "float32", "shape": [2, 3], "data": [...]}
    scalar    {"__ppl__": "scalar", "dtype": "int64", "value": 3}    a numpy scalar
    token     {"__ppl__": "token", "id": 7, "text": "a"}    + "eos": true, + "base64" (below)
    pickle    {"__ppl__": "pickle", "repr": "...", "base64": "..."}   only with allow_pickle=True

Array data is flat, in C order; where a dtype says the entries are floats, as in the float
fields of the posterior itself (`log_weights`, `ess`, ...), a non-finite entry is the string
"inf", "-inf" or "nan", with no tag. Arrays of bool, int, uint, float (up to 64 bits), str and
object dtype are written so, complex ones (up to 128 bits) with `[real, imag]` entries, datetime64
and timedelta64 ones with their int64 counts. A token's "base64" holds its bytes when its text
does not (part of a multi-byte character).

Files hold data, not code. Only types that are exactly `list`, `dict`, `int`, ... are written as
JSON: any other value (a subclass such as a namedtuple, an `OrderedDict` or an `IntEnum`, a
`Fraction`, a user's class, an array of another dtype) is refused when it is saved, with a
`SaveError` (a TypeError) that names it and where it is. `allow_pickle=True` writes such a value
as a pickle, so that it comes back as itself; loading a pickle runs `pickle.loads`, which can run
any code, so a reader refuses it (`PickleRefusedError`, a ValueError, raised before anything in
the file is unpickled) unless it too passes `allow_pickle=True`. Pass it on both sides, and only
for files you wrote yourself: never load a file from someone else with it.
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
from ppl.context import Context
from ppl.models.base import Token
from ppl.next_token import NextToken
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


# -- refusals --------------------------------------------------------------------------------------


class SaveError(TypeError):
    """A value that a file cannot hold, found when it is saved; nothing was written for it.

    `where` names the value (`"values[3]['x']"`), `what` its type and a short repr, and
    `needs_pickle` says whether `allow_pickle=True` would save it (False for a value nothing
    saves: a `Context`, or one that pickle refuses). `reason` is the message without the advice.
    """

    def __init__(self, message: str, *, where: str, what: str, reason: str, needs_pickle: bool):
        super().__init__(message)
        self.where = where
        self.what = what
        self.reason = reason
        self.needs_pickle = needs_pickle


class PickleRefusedError(ValueError):
    """A saved value is a pickle and `allow_pickle` is off: it was not unpickled.

    `where` names the value (`"values[3]"`), `recorded` is the repr the file says it had (text
    of the file's, not checked).
    """

    def __init__(self, message: str, *, where: str, recorded: str):
        super().__init__(message)
        self.where = where
        self.recorded = recorded


PLAIN_DATA = (
    "None, bool, int, float, complex, str, bytes, list, tuple, dict, numpy arrays and scalars"
)
UNSAFE = (
    "A pickle runs code when it is loaded: use allow_pickle=True only for files you wrote "
    "yourself, never for a file from someone else."
)


def pickle_advice(how: str) -> str:
    """What to do about a value that needs pickle: `how` says where `allow_pickle=True` goes."""
    return f"Make it plain data ({PLAIN_DATA}), or {how}. {UNSAFE}"


SAVE_HOW = (
    "pass allow_pickle=True both when saving (Posterior.save, Posterior.to_dict) and when "
    "loading (Posterior.load, Posterior.from_dict)"
)
LOAD_HOW = "if you wrote the file yourself, load it with allow_pickle=True"


def short_repr(value: Any) -> str:
    """`repr(value)`, cut to a couple of hundred characters (and never raising)."""
    try:
        text = repr(value)
    except Exception as e:  # a broken __repr__ must not hide the real error
        text = f"<repr failed: {type(e).__name__}>"
    return text if len(text) <= _REPR_CHARS else text[: _REPR_CHARS - 3] + "..."


class _Refused(Exception):
    """Raised inside `_encode` and passed up through the containers, which add where it is."""

    def __init__(self, value: Any, kind: str, detail: str = "") -> None:
        self.value = value
        self.kind = kind  # "pickle" (allow_pickle would save it), "model", "unpicklable"
        self.detail = detail
        self.inner = value  # the element of the container being encoded that failed
        self.path: list[str] = []  # innermost first

    def error(self, root: str, how: str = SAVE_HOW) -> SaveError:
        where = root + "".join(reversed(self.path))
        t = type(self.value)
        what = (
            f"a {t.__module__}.{t.__qualname__}"
            if t.__module__ != "builtins"
            else f"a {t.__name__}"
        )
        what = f"{what}, {short_repr(self.value)}"
        if self.kind == "model":
            reason = f"{where} is a {t.__name__}, which holds its language model"
            advice = "Return its text or token ids instead."
        elif self.kind == "unpicklable":
            reason = f"{where} is {what}, not JSON data, and it cannot be pickled ({self.detail})"
            advice = f"Make it plain data ({PLAIN_DATA})."
        else:
            reason = f"{where} is {what}, not JSON data"
            advice = pickle_advice(how)
        message = f"cannot save {where}: it {reason.removeprefix(where + ' ')}. {advice}"
        return SaveError(
            message, where=where, what=what, reason=reason, needs_pickle=self.kind == "pickle"
        )

    def at(self, container: Any, step: str) -> _Refused:
        self.path.append(step)
        self.inner = container
        return self


class _Pickled(Exception):
    """Raised inside `_decode` at a pickle it may not load, passed up like `_Refused`."""

    def __init__(self, recorded: str, obj: Any) -> None:
        self.recorded = recorded
        self.inner = obj
        self.path: list[str] = []

    def error(self, root: str, how: str = LOAD_HOW) -> PickleRefusedError:
        where = root + "".join(reversed(self.path))
        message = (
            f"{where} is a pickled value (the file records its repr as {self.recorded!r}); it "
            f"was not loaded, as unpickling can run any code. {how[0].upper()}{how[1:]}. "
            f"{UNSAFE}"
        )
        return PickleRefusedError(message, where=where, recorded=self.recorded)

    def at(self, container: Any, step: str) -> _Pickled:
        self.path.append(step)
        self.inner = container
        return self


def _index(items: Any, inner: Any) -> int | str:
    """Where `inner` is in `items`: the first element that is it (encoding goes in order, so
    an earlier one that is the same object would have failed first)."""
    return next((i for i, v in enumerate(items) if v is inner), "?")


def _array_index(flat: int | str, shape: Any) -> str:
    """`[i, j]`: where entry `flat` (in C order) is in an array of `shape`."""
    try:
        at = np.unravel_index(flat, tuple(shape))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"[flat index {flat}]"
    return f"[{', '.join(str(int(i)) for i in at)}]"


# -- values ----------------------------------------------------------------------------------------


def to_jsonable(value: Any, *, allow_pickle: bool = False) -> Any:
    """`value` as JSON data (see the module docstring); `from_jsonable` gives it back.

    A value JSON cannot hold raises `SaveError` (a TypeError) naming it and where it is, unless
    `allow_pickle=True`: it is then pickled (and loading it needs `allow_pickle=True` too). A
    `Context` or `NextToken` is always refused (pickling one would carry its language model).
    """
    try:
        return _encode(value, allow_pickle)
    except _Refused as r:
        raise r.error("the value") from None


def _encode(value: Any, allow_pickle: bool) -> Any:
    t = type(value)
    if value is None or t is bool or t is int or t is str:
        return value
    if t is float:
        return value if math.isfinite(value) else {TAG: "float", "value": _float_out(value)}
    if t is list:
        try:
            return [_encode(v, allow_pickle) for v in value]
        except _Refused as r:
            raise r.at(value, f"[{_index(value, r.inner)}]") from None
    if t is dict:
        if all(type(k) is str for k in value) and TAG not in value:
            try:
                return {k: _encode(v, allow_pickle) for k, v in value.items()}
            except _Refused as r:
                key = next((k for k, v in value.items() if v is r.inner), "?")
                raise r.at(value, f"[{short_repr(key)}]") from None
        items = []
        for k, v in value.items():
            try:
                key = _encode(k, allow_pickle)
            except _Refused as r:
                raise r.at(value, f"<the key {short_repr(k)}>") from None
            try:
                items.append([key, _encode(v, allow_pickle)])
            except _Refused as r:
                raise r.at(value, f"[{short_repr(k)}]") from None
        return {TAG: "dict", "items": items}
    if t is tuple:
        try:
            return {TAG: "tuple", "items": [_encode(v, allow_pickle) for v in value]}
        except _Refused as r:
            raise r.at(value, f"[{_index(value, r.inner)}]") from None
    if t is bytes:
        return {TAG: "bytes", "base64": _b64(value)}
    if t is complex:
        return {TAG: "complex", "real": _float_out(value.real), "imag": _float_out(value.imag)}
    if isinstance(value, (Token, TokenRecord)):
        out: dict[str, Any] = {TAG: "token", "id": int(value.id), "text": value.text}
        if value.is_eos:
            out["eos"] = True
        if value.text.encode() != value.bytes:
            out["base64"] = _b64(value.bytes)
        return out
    if isinstance(value, (np.ndarray, np.generic)) or _is_jax_array(value):
        arr = np.asarray(value)
        try:
            encoded = _encode_array(arr, allow_pickle)
        except _Refused as r:
            raise r.at(value, _array_index(_index(arr.ravel(), r.inner), arr.shape)) from None
        if encoded is not None:
            dtype, data = encoded
            if isinstance(value, np.generic):
                return {TAG: "scalar", "dtype": dtype, "value": data[0]}
            return {TAG: "ndarray", "dtype": dtype, "shape": list(np.shape(value)), "data": data}
    if isinstance(value, (Context, NextToken)):
        raise _Refused(value, "model")
    try:
        data = pickle.dumps(value)  # without allow_pickle, only to say whether it would help
    except Exception as e:
        raise _Refused(value, "unpicklable", f"{type(e).__name__}: {e}") from None
    if not allow_pickle:
        raise _Refused(value, "pickle")
    return {TAG: "pickle", "repr": short_repr(value), "base64": _b64(data)}


def from_jsonable(obj: Any, *, allow_pickle: bool = False) -> Any:
    """The value that `to_jsonable` encoded as `obj`.

    Equal to the original value, except that a Token comes back as a `TokenRecord` and a jax
    array as a numpy array. A pickled value raises `PickleRefusedError` (a ValueError), without
    being unpickled, unless `allow_pickle=True` (unpickling can run any code: only for data you
    wrote yourself). Raises ValueError for data that `to_jsonable` does not write.
    """
    try:
        return _decode(obj, allow_pickle)
    except _Pickled as p:
        raise p.error("the value") from None


def _decode(obj: Any, allow_pickle: bool) -> Any:
    if isinstance(obj, list):
        try:
            return [_decode(v, allow_pickle) for v in obj]
        except _Pickled as p:
            raise p.at(obj, f"[{_index(obj, p.inner)}]") from None
    if not isinstance(obj, dict):
        return obj
    if TAG not in obj:
        try:
            return {k: _decode(v, allow_pickle) for k, v in obj.items()}
        except _Pickled as p:
            key = next((k for k, v in obj.items() if v is p.inner), "?")
            raise p.at(obj, f"[{key!r}]") from None
    tag = obj[TAG]
    try:
        if tag == "float":
            return _float_in(obj["value"])
        if tag == "complex":
            return complex(_float_in(obj["real"]), _float_in(obj["imag"]))
        if tag == "tuple":
            items = obj["items"]
            try:
                return tuple(_decode(v, allow_pickle) for v in items)
            except _Pickled as p:
                raise p.at(obj, f"[{_index(items, p.inner)}]") from None
        if tag == "dict":
            out = {}
            for pair in obj["items"]:
                k, v = pair
                try:
                    key = _decode(k, allow_pickle)
                except _Pickled as p:
                    raise p.at(obj, "<a key>") from None
                try:
                    out[key] = _decode(v, allow_pickle)
                except _Pickled as p:
                    raise p.at(obj, f"[{short_repr(key)}]") from None
            return out
        if tag == "bytes":
            return base64.b64decode(obj["base64"])
        if tag == "token":
            raw = base64.b64decode(obj["base64"]) if "base64" in obj else obj["text"].encode()
            return TokenRecord(int(obj["id"]), raw, bool(obj.get("eos", False)))
        if tag == "ndarray":
            data = obj["data"]
            try:
                return _decode_array(obj["dtype"], data, obj["shape"], allow_pickle)
            except _Pickled as p:
                raise p.at(obj, _array_index(_index(data, p.inner), obj["shape"])) from None
        if tag == "scalar":
            try:
                return _decode_array(obj["dtype"], [obj["value"]], [], allow_pickle)[()]
            except _Pickled as p:
                raise p.at(obj, "") from None
        if tag == "pickle":
            if not allow_pickle:  # checked before anything of the pickle is read
                recorded = obj.get("repr")
                text = recorded[:_REPR_CHARS] if type(recorded) is str else short_repr(recorded)
                raise _Pickled(text, obj)
            return pickle.loads(base64.b64decode(obj["base64"]))
    except KeyError as e:
        raise ValueError(f"malformed {tag!r} object: no {e.args[0]!r} in it") from None
    raise ValueError(f"unknown {TAG} tag {tag!r}")


def _encode_array(arr: np.ndarray, allow_pickle: bool) -> tuple[str, list[Any]] | None:
    """(dtype name, flat data) of an array whose entries JSON can hold; None for other dtypes."""
    dt = arr.dtype
    flat = arr.ravel()
    if dt.kind == "f" and dt.itemsize <= 8:
        data = [_float_out(x) for x in flat.tolist()]
    elif dt.kind in "biuU":
        data = flat.tolist()
    elif dt.kind == "c" and dt.itemsize <= 16:
        data = [[_float_out(z.real), _float_out(z.imag)] for z in flat.tolist()]
    elif dt.kind in "mM":
        data = flat.astype(np.int64).tolist()
    elif dt.kind == "O":
        data = [_encode(x, allow_pickle) for x in flat]
    else:  # bytes, structured, long double: pickled as a whole (with allow_pickle)
        return None
    name = dt.name if dt.kind in "biufc" and dt.isnative else dt.str
    return name, data


def _decode_array(dtype: str, data: list[Any], shape: list[int], allow_pickle: bool) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "O":
        arr = np.empty(len(data), dtype=object)
        for i, x in enumerate(data):  # element by element: a list entry must stay one object
            arr[i] = _decode(x, allow_pickle)
    elif dt.kind == "f":
        arr = np.array([_float_in(x) for x in data], dtype=dt)
    elif dt.kind == "c":
        arr = np.array([complex(_float_in(re), _float_in(im)) for re, im in data], dtype=dt)
    elif dt.kind in "mM":
        arr = np.array(data, dtype=np.int64).astype(dt)
    elif dt.kind in "biuU":
        arr = np.array(data, dtype=dt)
    else:  # to_jsonable writes no other dtype: a structured one could hold objects
        raise ValueError(f"malformed 'ndarray' object: dtype {dtype!r} is not one ppl writes")
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


def posterior_to_dict(post: Posterior, *, allow_pickle: bool = False) -> dict[str, Any]:
    """Every field of `post` as strict JSON data (see the module docstring and docs/inference.md).

    Sites are written once, in a `sites` list, and each choice names its site by index there. A
    value JSON cannot hold raises `SaveError` naming the field (`"values[3]"`, `"stats['x']"`,
    a choice by its trace, index and address) unless `allow_pickle=True` (see `to_jsonable`).
    """

    def value(x: Any, where: Any) -> Any:
        try:
            return _encode(x, allow_pickle)
        except _Refused as r:
            raise r.error(where()) from None

    sites: dict[Site, int] = {}
    traces = [_trace_out(t, k, sites, value) for k, t in enumerate(post.traces)]  # fills `sites`
    return {
        "format": FORMAT,
        "version": VERSION,
        "ppl_version": __version__,
        "method": post.method,
        "values": [value(v, lambda i=i: f"values[{i}]") for i, v in enumerate(post.values)],
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
        "diagnostics": value(post.diagnostics, lambda: "diagnostics"),
        "stats": value(post.stats, lambda: "stats"),
        "log_evidence_steps": _floats_out(post.log_evidence_steps),
        "chain": None if post.chain is None else [int(c) for c in post.chain],
        "acceptance": None if post.acceptance is None else _floats_out(post.acceptance),
        "history": None if post.history is None else value(post.history, lambda: "history"),
    }


def posterior_from_dict(
    d: dict[str, Any], *, cls: type[Posterior], allow_pickle: bool = False
) -> Posterior:
    """The `Posterior` that `posterior_to_dict` wrote as `d`, made as `cls(**fields)`.

    `cls` is the `Posterior` class (`Posterior.from_dict` passes itself: this module does not
    import it). Traces written from a `Trace` come back as a `Trace`, others as a list of
    `Choice`; sites come back as `Site`s equal to the originals. Raises ValueError when `d` is
    not a ppl posterior, is of a later format version, or lacks a field, and
    `PickleRefusedError` (a ValueError, naming the field) when it holds a pickled value and
    `allow_pickle` is False: no pickle in `d` is loaded then.
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
    def value(x: Any, where: Any) -> Any:
        try:
            return _decode(x, allow_pickle)
        except _Pickled as p:
            raise p.error(where()) from None

    sites = [Site(s["filename"], int(s["lineno"]), s["function"], s["source"]) for s in d["sites"]]
    z = d["log_evidence"]
    return cls(
        method=d["method"],
        values=[value(v, lambda i=i: f"values[{i}]") for i, v in enumerate(d["values"])],
        log_weights=_floats_in(d["log_weights"]),
        log_evidence=None if z is None else _float_in(z),
        ess=_floats_in(d["ess"]),
        resampled=[int(t) for t in d["resampled"]],
        ancestors=[np.asarray(a, dtype=np.int64) for a in d["ancestors"]],
        traces=[_trace_in(t, k, sites, value) for k, t in enumerate(d["traces"])],
        failure=d["failure"],
        diagnostics=value(d["diagnostics"], lambda: "diagnostics"),
        stats=value(d["stats"], lambda: "stats"),
        log_evidence_steps=_floats_in(d["log_evidence_steps"]),
        chain=None if d["chain"] is None else np.asarray(d["chain"], dtype=np.int64),
        acceptance=None if d["acceptance"] is None else _floats_in(d["acceptance"]),
        history=None if d["history"] is None else value(d["history"], lambda: "history"),
    )


def _floats_out(xs: Any) -> list[float | str]:
    return [_float_out(x) for x in np.asarray(xs, dtype=float).ravel().tolist()]


def _floats_in(xs: list[float | str]) -> np.ndarray:
    return np.array([_float_in(x) for x in xs], dtype=np.float64)


def _choice_where(k: int, j: int, address: Any) -> str:
    return f"traces[{k}][{j}].value (the choice at address {short_repr(address)})"


def _trace_out(
    trace: Sequence[Choice], k: int, sites: dict[Site, int], value: Any
) -> dict[str, Any]:
    choices = []
    for j, c in enumerate(trace):
        site = None if c.site is None else sites.setdefault(c.site, len(sites))
        choices.append(
            {
                "address": c.address,
                "name": c.name,
                "value": value(c.value, lambda j=j, c=c: _choice_where(k, j, c.address)),
                "log_prob": _float_out(c.log_prob),
                "site": site,
            }
        )
    out: dict[str, Any] = {"choices": choices}
    if isinstance(trace, Trace):  # a plain list of choices has no likelihood to keep
        out["log_likelihood"] = _float_out(trace.log_likelihood)
    return out


def _trace_in(t: dict[str, Any], k: int, sites: list[Site], value: Any) -> Sequence[Choice]:
    choices = [
        Choice(
            site=None if c["site"] is None else sites[c["site"]],
            name=c["name"],
            value=value(c["value"], lambda j=j, c=c: _choice_where(k, j, c["address"])),
            log_prob=_float_in(c["log_prob"]),
            address=c["address"],
        )
        for j, c in enumerate(t["choices"])
    ]
    if "log_likelihood" in t:
        return Trace(choices, _float_in(t["log_likelihood"]))
    return choices
