"""What a mapped run is, by content: the fingerprint a checkpoint file is checked against.

A checkpoint may only answer for the work that wrote it. So the fingerprint covers everything
that decides an item's result, each part kept apart so that a mismatch can say what changed:

* the program: its parsed source (comments and blank lines aside), the choices fixed by
  `ppl.condition`, and what the names it reads hold: other programs (their own fingerprints,
  recursively), plain functions and classes (their source), models (as below) and plain data
  (numbers, strings, containers, arrays: by content);
* the model: its spec, every field and option but the hub token (`revision`, `gguf_file`,
  dtype, KV cache...); a model without a spec by its type, vocabulary and functions' source;
* the method, by module and name, the seed, and each option by content;
* each input, by content: numbers and strings as themselves, containers element by element,
  numpy, jax and torch arrays by dtype, shape and bytes. No `repr` is ever used: numpy
  summarises large arrays in theirs, and an object's shows its address.

An input holding an object whose content cannot be read (no fields, cannot be pickled) cannot
be told from another of its type: `content` refuses it, naming where it is, when a checkpoint
is asked for. The names a program reads are resolved where it was defined, once per run; an
object there whose content cannot be read counts by its type.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import enum
import hashlib
import inspect
import json
import pickle
import types
from typing import Any

import numpy as np

_BUILTINS = frozenset(dir(builtins))


class Unidentifiable(TypeError):
    """An input holds a value whose content a checkpoint cannot identify."""


def digest(x: Any) -> str:
    """A short hash of JSON data (as `content` gives)."""
    data = json.dumps(x, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(data.encode()).hexdigest()[:32]


def _bytes_digest(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def content(
    x: Any, where: str = "the value", *, strict: bool = True, _seen: Any = None, _depth: int = 0
) -> Any:
    """JSON data that is the same for equal values in every process, and differs for values
    that differ in what they hold.

    `strict`: an object whose content cannot be read raises `Unidentifiable` naming `where`;
    otherwise it counts by its type alone.
    """
    seen: set[int] = set() if _seen is None else _seen

    def inner(v: Any, at: str) -> Any:  # a part of x, one level down
        return content(v, at, strict=strict, _seen=seen, _depth=_depth + 1)

    t = type(x)
    if x is None or t is bool or t is int or t is str:
        return x
    if t is float:
        return x if x == x and abs(x) != float("inf") else ["float", repr(x)]
    if id(x) in seen:  # a container that holds itself
        return ["cycle"]
    from ppl.compiler import Program
    from ppl.models.base import LanguageModel

    if isinstance(x, Program):
        return program_content(x, _seen=seen)
    if isinstance(x, LanguageModel):
        return model_content(x)
    if isinstance(x, (bytes, bytearray)):
        return [t.__name__, _bytes_digest(bytes(x))]
    if isinstance(x, enum.Enum):
        return ["enum", _qualname(t), inner(x.value, where)]
    if isinstance(x, (np.ndarray, np.generic)):
        return _array(np.asarray(x), where, strict, seen)
    if _is_tensor(x):
        return _tensor(x)
    if _is_jax_array(x):
        return _array(np.asarray(x), where, strict, seen)
    if isinstance(x, (types.FunctionType, type)):
        if _is_library(x):  # ppl's own, a package's or the standard library's: by name
            return ["name", _qualname(x)]
        return ["code", _qualname(x), source_digest(x)]
    if isinstance(x, (types.BuiltinFunctionType, types.ModuleType)):
        return [
            "name",
            getattr(x, "__module__", None) or "",
            getattr(x, "__qualname__", x.__name__),
        ]
    seen = seen | {id(x)}
    if isinstance(x, (list, tuple)):
        items = [inner(v, f"{where}[{i}]") for i, v in enumerate(x)]
        return [_qualname(t), items]
    if isinstance(x, dict):
        pairs = [
            [inner(k, f"a key of {where}"), inner(v, f"{where}[{k!r:.40}]")] for k, v in x.items()
        ]
        return [_qualname(t), pairs]  # in order: a program may iterate over it
    if isinstance(x, (set, frozenset)):
        members = sorted(digest(inner(v, f"a member of {where}")) for v in x)
        return [_qualname(t), members]
    if dataclasses.is_dataclass(x):
        fields = {
            f.name: inner(getattr(x, f.name), f"{where}.{f.name}") for f in dataclasses.fields(x)
        }
        return [_qualname(t), fields]
    spec = getattr(x, "spec", None)
    if spec is not None and type(spec).__name__ == "ModelSpec":
        return model_content(x)
    state = getattr(x, "__dict__", None)
    if not strict and _depth > 3:  # an object deep inside what a program reads: by its type
        return [_qualname(t)]
    if isinstance(state, dict) and state:
        return [
            _qualname(t),
            inner(state, f"{where}.__dict__"),
        ]
    try:  # an object with slots, or one that keeps its state in C: its pickle is its content
        return [_qualname(t), _bytes_digest(pickle.dumps(x, protocol=4))]
    except Exception:
        if not strict:
            return [_qualname(t)]
        raise Unidentifiable(
            f"{where} is a {_qualname(t)} whose content cannot be read (it has no fields and "
            "cannot be pickled), so a checkpoint could not tell it from another one; pass its "
            "data instead, or run without a checkpoint"
        ) from None


def _array(a: np.ndarray, where: str, strict: bool, seen: set[int]) -> Any:
    if a.dtype.hasobject:
        flat = [content(v, f"{where}[{i}]", strict=strict, _seen=seen) for i, v in
                enumerate(a.reshape(-1))]  # fmt: skip
        return ["ndarray", str(a.dtype), list(a.shape), flat]
    data = np.ascontiguousarray(a).tobytes()
    return ["ndarray", a.dtype.str, list(a.shape), _bytes_digest(data)]


def _is_tensor(x: Any) -> bool:
    torch = _loaded("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _tensor(x: Any) -> Any:
    import torch

    t = x.detach().cpu().contiguous().reshape(-1)
    raw = t.view(torch.uint8) if t.numel() and t.element_size() else t
    data = raw.numpy().tobytes() if t.numel() else b""
    return ["tensor", str(x.dtype), list(x.shape), _bytes_digest(data)]


def _is_jax_array(x: Any) -> bool:
    jax = _loaded("jax")
    return jax is not None and isinstance(x, jax.Array)


def _loaded(name: str) -> Any:
    import sys

    return sys.modules.get(name)


def _is_library(obj: Any) -> bool:
    """Whether `obj` comes from ppl, an installed package or the standard library (whose
    source a user's edit does not change), rather than from the user's own files."""
    import sys
    import sysconfig

    module = getattr(obj, "__module__", None) or ""
    if module.split(".")[0] in ("ppl", "builtins"):
        return True
    path = getattr(sys.modules.get(module), "__file__", None) or ""
    if not path:
        return False
    if "site-packages" in path or "dist-packages" in path:
        return True
    stdlib = sysconfig.get_paths().get("stdlib") or ""
    return bool(stdlib) and path.startswith(stdlib)


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def source_digest(obj: Any) -> str:
    """The hash of a function's or class's source, comments and layout aside (its code
    object's instructions and constants where the source cannot be read)."""
    try:
        text = inspect.getsource(obj)
        tree = ast.parse(_dedent(text))
        return digest(ast.dump(tree))
    except (OSError, TypeError, SyntaxError, IndentationError):
        code = getattr(obj, "__code__", None)
        if code is None:
            return ""
        return _bytes_digest(code.co_code + repr(code.co_consts).encode())


def _dedent(text: str) -> str:
    import textwrap

    return textwrap.dedent(text)


# -- the model --------------------------------------------------------------------------------


def model_content(lm: Any) -> Any:
    """A model by its spec (every field, every option but secrets), or by what it holds."""
    from ppl.models.spec import _SECRET_OPTIONS, ModelSpec
    from ppl.models.tempered import Tempered

    if isinstance(lm, Tempered):
        return ["tempered", lm.temperature, model_content(lm.base)]
    spec = lm if isinstance(lm, ModelSpec) else getattr(lm, "spec", None)
    if isinstance(spec, ModelSpec):
        fields = dataclasses.asdict(spec)
        fields["options"] = [[k, content(v, strict=False)] for k, v in spec.options
                             if k not in _SECRET_OPTIONS]  # fmt: skip
        return ["spec", fields]
    vocab = getattr(lm, "token_bytes", None)
    functions = sorted(
        [name, source_digest(v)]
        for name, v in vars(lm).items()
        if isinstance(v, types.FunctionType)
    )
    return [
        "model",
        _qualname(type(lm)),
        _bytes_digest(b"\0".join(vocab)) if vocab else None,
        functions,
    ]


def model_digest(lm: Any) -> str | None:
    return None if lm is None else digest(model_content(lm))


# -- the program ------------------------------------------------------------------------------


def program_content(program: Any, *, deep: bool = True, _seen: Any = None) -> Any:
    """A program by its source, fixed choices and what the names it reads hold.

    `deep`: the programs it reads count by their own content, recursively; otherwise by name
    (`program_parts` lists each of them apart).
    """
    from ppl.compiler import Program

    seen: set[int] = set() if _seen is None else _seen
    name = _qualname(program.fn)
    if id(program) in seen:  # a program that calls itself
        return ["program", name]
    seen = seen | {id(program)}
    names = {}
    for k, v in sorted(_read_names(program).items()):
        if isinstance(v, Program) and not deep:
            names[k] = ["program", _qualname(v.fn)]
        else:
            names[k] = content(v, k, strict=False, _seen=seen)
    return [
        "program",
        name,
        _program_source(program),
        content(program.fixed, "the fixed choices", strict=False, _seen=seen),
        names,
    ]


def _program_source(program: Any) -> str:
    source = getattr(program, "_source", None)  # a nested program has its function's
    return digest(ast.dump(source.tree)) if source is not None else source_digest(program.fn)


def program_parts(program: Any) -> dict[str, str]:
    """The program and each program it reads, by name: the hash of each one's own content."""
    from ppl.compiler import Program

    parts: dict[str, str] = {}

    def visit(p: Any) -> None:
        key = _qualname(p.fn)
        if key in parts:
            return
        parts[key] = digest(program_content(p, deep=False))
        for value in _read_names(p).values():
            if isinstance(value, Program):
                visit(value)

    visit(program)
    return parts


def _read_names(program: Any) -> dict[str, Any]:
    """The globals and closure variables the program's source reads, with their values."""
    fn = program.fn
    names = {
        n.id
        for n in ast.walk(program._source.tree)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }
    free = dict(zip(fn.__code__.co_freevars, fn.__closure__ or ()))
    out: dict[str, Any] = {}
    for name in names:
        if name in free:
            try:
                out[name] = free[name].cell_contents
            except ValueError:  # a cell not yet filled
                continue
        elif name in fn.__globals__:
            out[name] = fn.__globals__[name]
        elif name in _BUILTINS:
            continue
    # the ppl primitives and modules read by every program say nothing about this one
    return {k: v for k, v in out.items() if not isinstance(v, types.ModuleType)}
