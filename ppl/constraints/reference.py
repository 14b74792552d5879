"""Reference checks: an independent reader of each constraint's language.

The mask engine decides, token by token, which texts a constraint allows. Its languages are
meant to be exactly the constraint's, but an engine has holes, and some JSON Schema keywords it
cannot express at all. So every finished text is also read by a reference that does not share
its code: Python's `re.fullmatch` for a `Regex`, the Lark parser for a `Grammar`, and the
`jsonschema` library's validator (numbers read as decimals) for a `JSONSchema`. A text the
reference rejects cannot end the generation: EOS is allowed only when both accept, so the
target is the model conditioned on the whole constraint.

A text that the mask engine accepted and the reference rejected, where the engine was meant to
enforce the rule it broke, is a *mask leak*: it is counted (`Posterior.diagnostics
["mask_leaks"]`, shown by `summary()`) and warned about once per constraint, with the text and
the rule, so a fault of the engine is visible and never changes a result.
"""

from __future__ import annotations

import contextvars
import decimal
import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ppl.constraints.json_prefix import decimal_validator
from ppl.lazy import lazy_import

jsonschema = lazy_import("jsonschema")  # 0.7-1.5 s to import: loaded at first use


class MaskLeakWarning(UserWarning):
    """The mask engine let through a text its constraint forbids (the reference check caught
    it, so the result stays exact: the text got weight zero)."""


@dataclass(frozen=True, eq=False)
class Verdict:
    """What `Constraint.matches(text)` says: true when both the mask engine's language and the
    reference accept `text`; `reason` says what the reference found wrong, if anything."""

    language: bool
    reference: bool
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.language and self.reference

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Verdict):
            return (self.language, self.reference) == (other.language, other.reference)
        if isinstance(other, bool):
            return bool(self) is other
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.language, self.reference))

    def __repr__(self) -> str:
        if self.language and self.reference:
            return "Verdict(True)"
        shown = f"language={self.language}, reference={self.reference}"
        return f"Verdict(False: {shown}{f', {self.reason}' if self.reason else ''})"


# -- leaks, counted per inference run --------------------------------------------------------


class LeakLog:
    """The mask leaks met during one run: distinct (constraint, text) pairs."""

    def __init__(self) -> None:
        self.seen: set[tuple[int, str]] = set()

    @property
    def count(self) -> int:
        return len(self.seen)


_RUN_LEAKS: contextvars.ContextVar[LeakLog | None] = contextvars.ContextVar(
    "ppl_mask_leaks", default=None
)


def collect_leaks() -> tuple[LeakLog, contextvars.Token]:
    """Start counting the leaks of a run; `stop_collecting(token)` ends it."""
    log = LeakLog()
    return log, _RUN_LEAKS.set(log)


def stop_collecting(token: contextvars.Token) -> None:
    _RUN_LEAKS.reset(token)


def report_leak(owner: Any, text: str, rule: str) -> None:
    """Count a leak in the current run, and warn about the first one of each constraint."""
    log = _RUN_LEAKS.get()
    if log is not None:
        log.seen.add((id(owner), text))
    if getattr(owner, "_leak_warned", False):
        return
    try:
        owner._leak_warned = True
    except AttributeError:  # pragma: no cover - a constraint always takes attributes
        pass
    shown = text if len(text) <= 200 else text[:197] + "..."
    warnings.warn(
        f"{owner!r}: the mask engine accepted a text the constraint forbids ({rule}): "
        f"{shown!r}. The reference check gave it weight zero, so the result is still exact; "
        "further leaks of this constraint are counted in Posterior.diagnostics['mask_leaks'] "
        "without a warning",
        MaskLeakWarning,
        stacklevel=2,
    )


# -- the references ----------------------------------------------------------------------------


class Reference:
    """Reads a finished text independently of the mask engine.

    `check(text)` is None when the text is in the language, else what is wrong. `leak(text)`
    says whether a rejected text is one the mask was meant to refuse (a leak) rather than one
    it was known to let through (a rule the reference enforces alone).
    """

    def check(self, text: str) -> str | None:
        raise NotImplementedError

    def leak(self, text: str) -> bool:
        return True


class RegexReference(Reference):
    def __init__(self, pattern: re.Pattern) -> None:
        self.pattern = pattern

    def check(self, text: str) -> str | None:
        if self.pattern.fullmatch(text) is None:
            return f"re.fullmatch of /{self.pattern.pattern}/ fails"
        return None


class GrammarReference(Reference):
    def __init__(self, parse: Callable[[str], Any]) -> None:
        self.parse = parse

    def check(self, text: str) -> str | None:
        try:
            self.parse(text)
        except Exception as e:  # noqa: BLE001 - any parse failure is a rejection
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return f"the Lark parser rejects it: {first}"
        return None


def decimal_json(text: str) -> Any:
    """JSON with every non-integer number a `Decimal` (so 0.3 is 3/10, not a binary float).

    A key repeated in an object is refused (`RepeatedKey`): JSON readers disagree on which
    value it has, and the prefix checks read each member as it closes, so a repeated key is
    outside every JSON schema's language."""
    return json.loads(text, parse_float=_decimal, object_pairs_hook=_unique_members)


class RepeatedKey(ValueError):
    pass


def _unique_members(pairs: list[tuple[str, Any]]) -> dict:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise RepeatedKey(f"the key {key!r} is repeated in an object")
        out[key] = value
    return out


def _decimal(text: str) -> Any:
    try:
        return decimal.Decimal(text)
    except decimal.InvalidOperation:  # an exponent beyond Decimal's range: as a float (inf, 0)
        return float(text)


def json_error(validator: Any, value: Any) -> str | None:
    """The most relevant error of `value` under `validator`, as "at /path: message (keyword)"."""
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = "/" + "/".join(str(p) for p in error.absolute_path)
    message = error.message if len(error.message) <= 160 else error.message[:157] + "..."
    return f"at {where}: {message} ({error.validator})"


class JSONReference(Reference):
    """`jsonschema` on the decoded text; `relaxed` is the schema the mask enforces (for telling
    a leak from a rule the reference enforces alone)."""

    def __init__(self, schema: Any, relaxed: Any) -> None:
        self.validator = decimal_validator(schema)
        self.relaxed = self.validator if relaxed is schema else decimal_validator(relaxed)

    def check(self, text: str) -> str | None:
        try:
            value = decimal_json(text)
        except ValueError as e:
            return f"not JSON: {e}"
        try:
            return json_error(self.validator, value)
        except jsonschema.exceptions.UnknownType as e:  # pragma: no cover - refused earlier
            return str(e)

    def leak(self, text: str) -> bool:
        try:
            value = decimal_json(text)
        except RepeatedKey:
            return False  # the engine may repeat a name that `properties` does not list
        except ValueError:
            return True
        if self.relaxed is self.validator:
            return True
        return json_error(self.relaxed, value) is not None
