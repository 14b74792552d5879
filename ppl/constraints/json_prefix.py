"""Early JSON-schema checks on a prefix of a JSON text.

The mask engine enforces most of a JSON schema while a document is generated; the keywords it
cannot express (`uniqueItems`, `not`, `if`, `contains`, `propertyNames`, `oneOf` exclusivity,
...) are checked by a reference validator on the finished text. `PrefixChecker.violation` checks
them sooner: on a prefix of the text it finds the sub-values that are already complete, and
reports one that breaks the schema in a way no continuation can repair, so that generation can
stop at once.

Soundness: a violation is reported only when every completion of the prefix is invalid. A
complete value is checked only against subschemas that certainly apply at its location whatever
the rest of the document is: from the root through `properties`, `patternProperties`,
`additionalProperties`, `prefixItems`, `items`, `additionalItems`, `allOf`, local `$ref`s and
`dependentSchemas` (`dependencies`) of keys already present, never through `anyOf`, `oneOf`,
`not`, `if`, `contains`, `unevaluated...` or dynamic references. Such a subschema must hold for
the final document, so the value is validated against all of it. Open containers at such
locations are checked for what their complete parts already decide: `uniqueItems`, `maxItems`,
`maxContains`, `maxProperties`, `propertyNames`, `additionalProperties: false` (and any `false`
subschema), which only get worse as the text grows.

One assumption: a key is not written twice in one object (RFC 8259: names SHOULD be unique; the
mask engine never repeats a name of `properties`). `json.loads` keeps the last of repeated
members, so a value reported under a key that the text later writes again could be a false
alarm; `PrefixChecker(..., unique_keys=False)` drops the assumption and checks a value under a
key only once its object is closed (key names, their number and `false` subschemas are still
checked at once).
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from json.decoder import scanstring
from typing import Any

import referencing
import referencing.jsonschema

from ppl.lazy import lazy_import

jsonschema = lazy_import("jsonschema")  # 0.7-1.5 s to import: loaded at first use

__all__ = ["PrefixChecker", "decimal_validator"]

_WS = " \t\n\r"
_WS_RE = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
# what a number not yet complete may look like, up to the end of the text
_NUMBER_PREFIX = re.compile(r"-|-?(?:0|[1-9][0-9]*)(?:\.[0-9]*|(?:\.[0-9]+)?[eE][-+]?[0-9]*)?")
# an unterminated string, up to the end of the text (possibly inside an escape)
_STRING_PREFIX = re.compile(
    r'"[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*'
    r"(?:\\(?:u[0-9a-fA-F]{0,3})?)?"
)
_NUMBER_END = " \t\n\r,]}"
_LITERALS = {"t": "true", "f": "false", "n": "null"}
# characters after which some value may be complete (see `worth_checking`)
_TRIGGER = re.compile(r'[]}",el\s]')
_CACHE_LIMIT = 50_000


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# the C scanner of a strict decoder: (value, end) of the JSON value at a position; raises
# StopIteration or ValueError (JSONDecodeError) where there is none (NaN, Infinity refused)
_SCAN_ONCE = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant).scan_once


class _Invalid(Exception):
    """The text is not a prefix of any JSON text."""


def _decimals(value: Any) -> Any:
    """`value` with every float replaced by the Decimal of its shortest repr."""
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _decimals(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decimals(v) for v in value]
    return value


def _is_number(checker: Any, instance: Any) -> bool:
    return isinstance(instance, numbers.Number) and not isinstance(instance, bool)


def _is_integer(checker: Any, instance: Any) -> bool:
    if isinstance(instance, bool):
        return False
    if isinstance(instance, int):
        return True
    if isinstance(instance, float):
        return instance.is_integer()
    if isinstance(instance, Decimal):
        return instance.is_finite() and instance == instance.to_integral_value()
    return False


def _multiple_of(validator: Any, step: Any, instance: Any, schema: Any) -> Any:
    """`multipleOf`, exactly: is `instance / step` an integer, whatever their sizes? (A Decimal
    remainder fails once the quotient outgrows the context's precision, 1e308 % 0.1234 say.)"""
    if not validator.is_type(instance, "number"):
        return
    if not _is_multiple(instance, step):
        yield jsonschema.ValidationError(f"{instance!r} is not a multiple of {step}")


def _is_multiple(value: Any, step: Any) -> bool:
    try:
        by = Fraction(step)
    except (ValueError, OverflowError, TypeError):
        return False
    if by == 0:
        return False
    if isinstance(value, Decimal) and value.is_finite() and value.as_tuple().exponent > 64:
        # m 10^e with a large e (1e999999999): m 10^e / (p/q) is an integer exactly when p
        # divides m 10^e (p and q are coprime), and p's factors 2 and 5 divide 10^e here, so
        # when the rest of p divides m; no 10^e is ever built
        sign, digits, exponent = value.as_tuple()
        m = int("".join(map(str, digits)) or "0")
        p = abs(by.numerator)
        twos = fives = 0
        while p % 2 == 0:
            p, twos = p // 2, twos + 1
        while p % 5 == 0:
            p, fives = p // 5, fives + 1
        if max(twos, fives) <= exponent:  # type: ignore[operator]
            return m % p == 0
    try:
        return (Fraction(value) / by).denominator == 1
    except (ValueError, OverflowError, TypeError):  # inf or nan: no multiple
        return False


def decimal_validator(schema: dict | bool) -> Any:
    """A jsonschema validator for `schema` that reads JSON numbers parsed as `Decimal`.

    The draft is the one `$schema` names (Draft 2020-12 without one); `Decimal` counts as
    "number", an integral Decimal or float as "integer", and formats are checked with the
    draft's FORMAT_CHECKER. Floats in the schema become Decimals (so `multipleOf: 0.01` is
    exact). `$schema` is left out of the validator's own copy of the schema so that
    `evolve(schema=...)` and `$ref`s to the root keep this validator class.
    Validate `json.loads(text, parse_float=Decimal)` with it.
    """
    schema = _decimals(schema)
    base = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    types = base.TYPE_CHECKER.redefine_many({"number": _is_number, "integer": _is_integer})
    cls = jsonschema.validators.extend(
        base, validators={"multipleOf": _multiple_of}, type_checker=types
    )
    return cls(_without_dialect(schema), format_checker=cls.FORMAT_CHECKER)


def _without_dialect(schema: Any) -> Any:
    if isinstance(schema, dict) and "$schema" in schema:
        return {k: v for k, v in schema.items() if k != "$schema"}
    return schema


def _pointer_part(key: Any) -> str:
    return "/" + str(key).replace("~", "~0").replace("/", "~1")


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _canon(value: Any) -> Any:
    """A hashable key equal for values that JSON-schema equality calls equal."""
    if value is True or value is False:
        return ("b", value)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, list):
        return ("l", tuple(_canon(v) for v in value))
    if isinstance(value, dict):
        return ("d", frozenset((k, _canon(v)) for k, v in value.items()))
    return ("n", value)  # numbers (equal int and Decimal hash alike) and None


def _count(value: Any) -> Any:
    """A count keyword's value, or None when it is not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        return None
    return value


_UNIQUE_SCHEMA = {"uniqueItems": True}
_MISSING = object()
_UNKNOWN = object()  # validation raised: no conclusion


class _Node:
    """The subschemas that certainly apply at one location, and what follows from them."""

    __slots__ = (
        "checker",
        "validate",
        "schemas",
        "false",
        "unique",
        "max_items",
        "max_props",
        "prop_names",
        "contains",
        "deps",
        "_members",
        "_items",
        "ids",
        "_base_validate",
    )

    def __init__(self, checker: PrefixChecker, validate: tuple, extra: tuple) -> None:
        # validate: ((schema, origin), ...), schemas a complete value here is validated against
        # extra: dependent schemas of present keys (covered by `validate` on the whole object)
        self.checker = checker
        self._base_validate = validate
        self.ids = (tuple(id(s) for s, _ in validate), tuple(id(s) for s, _ in extra))
        v = checker._keywords
        # (a subschema with its own base URI would resolve its references otherwise alone)
        self.validate = tuple(
            s
            for s, _ in validate
            if s is False
            or (
                isinstance(s, dict)
                and any(k in v for k in s)
                and (s is checker.schema or not _has_id(s))
            )
        )
        schemas: list[dict] = []
        seen: set[int] = set()
        self.false: str | None = None
        for s, origin in validate + extra:
            if checker._expand(s, schemas, seen) and self.false is None:
                self.false = origin
        self.schemas = schemas
        self.unique = "uniqueItems" in v and any(s.get("uniqueItems") for s in schemas)
        self.max_items = _least(s.get("maxItems") for s in schemas if "maxItems" in v)
        self.max_props = _least(s.get("maxProperties") for s in schemas if "maxProperties" in v)
        # (subschemas validated on their own: not with dynamic references about)
        static = checker._static
        self.prop_names = [
            s["propertyNames"]
            for s in schemas
            if static and "propertyNames" in v and s.get("propertyNames", True) is not True
        ]
        self.contains = [
            (s["contains"], _count(s.get("maxContains")))
            for s in schemas
            if static
            and "contains" in v
            and not checker._legacy_ref  # maxContains: draft 2019-09 on, with contains
            and "contains" in s
            and _count(s.get("maxContains")) is not None
        ]
        deps: dict[str, list] = {}
        for s in schemas:
            for keyword in ("dependentSchemas", "dependencies"):
                found = s.get(keyword) if keyword in v else None
                if isinstance(found, dict):
                    for key, sub in found.items():
                        if _is_schema(sub):
                            deps.setdefault(key, []).append((sub, f"{keyword}/{key}"))
        self.deps = deps
        self._members: dict[str, _Node] = {}
        self._items: dict[int, _Node] = {}

    def member(self, key: str) -> _Node:
        """The node of the value of member `key` of an object here."""
        found = self._members.get(key)
        if found is None:
            found = self.checker._member_node(self, key)
            if len(self._members) < 1000:
                self._members[key] = found
        return found

    def item(self, index: int) -> _Node:
        """The node of item `index` of an array here."""
        found = self._items.get(index)
        if found is None:
            found = self.checker._item_node(self, index)
            if len(self._items) < 1000:
                self._items[index] = found
        return found

    def grown(self, keys: set[str], extra: tuple) -> tuple[_Node, tuple]:
        """This object's node once `keys` are present: with their dependent schemas (and theirs),
        and the dependent schemas it holds (`extra`)."""
        node = self
        while True:
            seen = {id(s) for s, _ in extra}
            more: dict[int, tuple] = {}
            for key in sorted(keys):
                for sub, origin in node.deps.get(key, ()):
                    if id(sub) not in seen:
                        more.setdefault(id(sub), (sub, origin))
            if not more:
                return node, extra
            extra = extra + tuple(more.values())
            node = self.checker._node(self._base_validate, extra)


def _is_schema(value: Any) -> bool:
    return isinstance(value, dict) or value is True or value is False


def _least(values: Any) -> Any:
    found = None
    for value in values:
        value = _count(value)
        if value is not None and (found is None or value < found):
            found = value
    return found


class PrefixChecker:
    """Finds complete parts of a JSON prefix that certainly break a JSON schema."""

    def __init__(
        self,
        schema: dict | bool,
        validator_for: Callable[[Any], Any],
        *,
        unique_keys: bool = True,
    ) -> None:
        """`validator_for(subschema)` returns an object with `iter_errors(instance)` (a jsonschema
        validator for that subschema, resolving `$ref` against the root schema), for instance
        `lambda sub: root_validator.evolve(schema=sub)` with `root_validator =
        decimal_validator(schema)`. Floats in `schema` are read as Decimals, and subschemas are
        passed to it without a top-level `$schema`. `unique_keys`: see the module docstring."""
        self.schema = _decimals(schema)
        self.unique_keys = unique_keys
        self._validator_for = validator_for
        self._validators: dict[int, Any] = {}
        self._results: dict[tuple, Any] = {}
        self._nodes: dict[tuple, _Node] = {}
        probe = self._validator(self.schema) if isinstance(self.schema, dict) else None
        cls = type(probe)
        if not isinstance(getattr(cls, "VALIDATORS", None), dict):
            cls = jsonschema.validators.validator_for(
                self.schema, default=jsonschema.Draft202012Validator
            )
        self._keywords = set(cls.VALIDATORS)
        self._legacy_ref = not ({"$dynamicRef", "$recursiveRef"} & self._keywords)
        self._bool_schemas = "const" in self._keywords  # draft 6 and later
        nested_ids, dynamic = _scan_schema(self.schema)
        # with dynamic references, a subschema validated on its own may resolve them otherwise
        # than within the whole schema: then only keyword checks at the root and the whole
        # document are checked
        self._static = not dynamic
        self._resolver = None
        if not nested_ids and isinstance(self.schema, dict):
            try:
                dialect = getattr(cls, "META_SCHEMA", {}).get("$schema")
                spec = referencing.jsonschema.specification_with(
                    dialect or "", default=referencing.jsonschema.DRAFT202012
                )
                resource = spec.create_resource(self.schema)
                base = resource.id() or ""
                registry = referencing.Registry().with_resource(uri=base, resource=resource)
                self._resolver = registry.crawl().resolver(base_uri=base)
            except Exception:
                self._resolver = None
        self._root = self._node(((self.schema, "the schema"),), ())

    @staticmethod
    def worth_checking(token_text: str) -> bool:
        """Might a value be complete once `token_text` is added? (`"`, `]`, `}`, `,`,
        whitespace or the last letter of true, false, null: what ends a string, container,
        number or literal.) Cheap; errs on the side of True."""
        return _TRIGGER.search(token_text) is not None

    def violation(self, prefix: str) -> str | None:
        """A message saying which complete sub-value of `prefix` certainly breaks which rule,
        with its JSON pointer (`"/tags: items 0 and 2 are equal: 1 (uniqueItems)"`), or None.
        None also when `prefix` is not a prefix of any JSON text."""
        scan = _Scan(self, prefix)
        try:
            return scan.run()
        except (_Invalid, RecursionError):
            return None

    # -- schemas -------------------------------------------------------------------------------

    def _node(self, validate: tuple, extra: tuple) -> _Node:
        key = (tuple(id(s) for s, _ in validate), tuple(id(s) for s, _ in extra))
        found = self._nodes.get(key)
        if found is None:
            found = _Node(self, validate, extra)
            if len(self._nodes) < _CACHE_LIMIT:
                self._nodes[key] = found
        return found

    def _expand(self, schema: Any, out: list, seen: set[int]) -> bool:
        """Add to `out` the schemas whose keywords certainly apply where `schema` does (itself,
        `allOf` members, `$ref` targets); True when one of them is `false`."""
        if schema is False:
            return True
        if not isinstance(schema, dict) or id(schema) in seen:
            return False
        seen.add(id(schema))
        if schema is not self.schema and _has_id(schema):
            return False  # another base URI: stop there
        v = self._keywords
        false = False
        ref = schema.get("$ref") if "$ref" in v else None
        if ref is not None and self._legacy_ref:
            target = self._resolve(ref)
            return self._expand(target, out, seen) if target is not None else False
        out.append(schema)
        if ref is not None:
            target = self._resolve(ref)
            if target is not None:
                false |= self._expand(target, out, seen)
        all_of = schema.get("allOf") if "allOf" in v else None
        if isinstance(all_of, list):
            for sub in all_of:
                false |= self._expand(sub, out, seen)
        return false

    def _resolve(self, ref: Any) -> Any:
        if self._resolver is None or not isinstance(ref, str):
            return None
        try:
            target = self._resolver.lookup(ref).contents
        except Exception:
            return None
        return target if isinstance(target, dict) or target is True or target is False else None

    def _subschema(self, sub: Any) -> bool:
        """Is `sub` usable as a subschema here (booleans only from draft 6 on)?"""
        return isinstance(sub, dict) or (self._bool_schemas and (sub is True or sub is False))

    def _member_node(self, node: _Node, key: str) -> _Node:
        if not self._static:
            return self._empty
        v = self._keywords
        found: list = []
        for s in node.schemas:
            props = s.get("properties") if "properties" in v else None
            props = props if isinstance(props, dict) else {}
            if key in props and _is_schema(props[key]):
                found.append((props[key], "properties"))
            patterns = s.get("patternProperties") if "patternProperties" in v else None
            patterns = patterns if isinstance(patterns, dict) else {}
            try:
                for pattern, sub in patterns.items():
                    if re.search(pattern, key) and _is_schema(sub):
                        found.append((sub, "patternProperties"))
                if "additionalProperties" in s and "additionalProperties" in v and key not in props:
                    joined = "|".join(patterns)
                    if not (joined and re.search(joined, key)):
                        if _is_schema(s["additionalProperties"]):
                            found.append((s["additionalProperties"], "additionalProperties"))
            except (re.error, TypeError):
                continue
        return self._node(tuple(found), ()) if found else self._empty

    def _item_node(self, node: _Node, index: int) -> _Node:
        if not self._static:
            return self._empty
        v = self._keywords
        found: list = []
        for s in node.schemas:
            if "prefixItems" in v:
                prefix = s.get("prefixItems", [])
                if not isinstance(prefix, list):
                    continue
                if index < len(prefix):
                    if self._subschema(prefix[index]):
                        found.append((prefix[index], "prefixItems"))
                elif "items" in s and self._subschema(s["items"]):
                    found.append((s["items"], "items"))
                continue
            items = s.get("items") if "items" in v else None
            if isinstance(items, list):
                if index < len(items):
                    if self._subschema(items[index]):
                        found.append((items[index], "items"))
                elif "additionalItems" in v and "additionalItems" in s:
                    if _is_schema(s["additionalItems"]):
                        found.append((s["additionalItems"], "additionalItems"))
            elif items is not None and self._subschema(items):
                found.append((items, "items"))
        return self._node(tuple(found), ()) if found else self._empty

    @property
    def _empty(self) -> _Node:
        return self._node((), ())

    # -- validation ----------------------------------------------------------------------------

    def _validator(self, schema: Any) -> Any:
        key = id(schema)
        if key not in self._validators:
            try:
                found = self._validator_for(_without_dialect(schema))
            except Exception:
                found = None
            self._validators[key] = found
        return self._validators[key]

    def _error(self, schema: Any, value: Any, key: tuple | None) -> Any:
        """The first error of `value` under `schema`, None if valid, `_UNKNOWN` if validation
        failed; `key` identifies `value` for the cache (None: not cached)."""
        cache_key = (id(schema), *key) if key is not None else None
        found = self._results.get(cache_key, _MISSING)
        if found is not _MISSING:
            return found
        validator = self._validator(schema)
        error = _UNKNOWN
        if validator is not None:
            try:
                error = next(iter(validator.iter_errors(value)), None)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException:  # also pyo3's PanicException, after a RecursionError
                error = _UNKNOWN
        if cache_key is not None:
            if len(self._results) >= _CACHE_LIMIT:
                self._results.clear()
            self._results[cache_key] = error
        return error


def _has_id(schema: dict) -> bool:
    for keyword in ("$id", "id"):
        found = schema.get(keyword)
        if isinstance(found, str) and not found.startswith("#"):
            return True
    return False


def _scan_schema(schema: Any) -> tuple[bool, bool]:
    """(has a `$id` below the root, has a dynamic reference), looking everywhere."""
    nested = dynamic = False
    stack = [(schema, True)]
    while stack:
        value, top = stack.pop()
        if isinstance(value, dict):
            if not top and _has_id(value):
                nested = True
            if isinstance(value.get("$dynamicRef"), str) or isinstance(
                value.get("$recursiveRef"), str
            ):
                dynamic = True
            stack.extend(
                (v, False)
                for k, v in value.items()
                # lists of values, never of schemas (a property named "enum" has a schema)
                if not (k in ("enum", "examples") and isinstance(v, list))
            )
        elif isinstance(value, list):
            stack.extend((v, False) for v in value)
    return nested, dynamic


def _pointer(path: Any) -> str:
    """The JSON pointer of `path`: None for the root, else (parent path, key or index)."""
    parts = []
    while path is not None:
        path, key = path
        parts.append(_pointer_part(key))
    return "".join(reversed(parts))


def _where(path: Any) -> str:
    return _pointer(path) or "(root)"


class _Scan:
    """One pass over a prefix: parses it, checks what is decided, keeps the first violation."""

    __slots__ = ("checker", "text", "n", "found")

    def __init__(self, checker: PrefixChecker, text: str) -> None:
        self.checker = checker
        self.text = text
        self.n = len(text)
        self.found: str | None = None

    def report(self, message: str) -> None:
        if self.found is None:
            self.found = message

    def ws(self, pos: int) -> int:
        if pos < self.n and self.text[pos] in _WS:
            return _WS_RE.match(self.text, pos).end()
        return pos

    def after(self, pos: int, char: str) -> int | None:
        """Past whitespace, `char` (a "," or ":") and whitespace again: the position there, or
        None when the text ends before `char`; _Invalid when something else stands there."""
        pos = self.ws(pos)
        if pos == self.n:
            return None
        if self.text[pos] != char:
            raise _Invalid
        return self.ws(pos + 1)

    def run(self) -> str | None:
        pos = self.ws(0)
        if pos == self.n:
            return None
        root = self.checker._root
        if root.false is not None:
            self.report("(root): no value is allowed (false schema)")
        end, _ = self.value(pos, root, None, True)
        if end is not None and self.ws(end) != self.n:
            return None  # text after the document
        return self.found

    def value(self, pos: int, node: _Node, path: Any, final: bool) -> tuple[int | None, Any]:
        """Parse the value starting at `pos` (< n): (its end, itself) when it is complete,
        (None, None) when the text ends inside it. `final`: this value is certainly the one at
        `path` in the finished document."""
        text = self.text
        try:
            value, end = _SCAN_ONCE(text, pos)
        except (StopIteration, ValueError):
            c = text[pos]
            if c == "{":
                self.object(pos, node, path, final)
            elif c == "[":
                self.array(pos, node, path, final)
            elif c == '"':
                if not _STRING_PREFIX.fullmatch(text, pos):
                    raise _Invalid from None
            elif c == "-" or "0" <= c <= "9":
                if not _NUMBER_PREFIX.fullmatch(text, pos):
                    raise _Invalid from None
            elif c in _LITERALS:
                word = _LITERALS[c]
                if not (self.n - pos < len(word) and word.startswith(text[pos:])):
                    raise _Invalid from None
            else:
                raise _Invalid from None
            return None, None
        c = text[pos]
        if (c == "-" or "0" <= c <= "9") and (end == self.n or text[end] not in _NUMBER_END):
            # "12" may become "123"; "1e" or "1." is a number under way; "01" is no JSON
            if _NUMBER_PREFIX.fullmatch(text, pos):
                return None, None
        if final and node.validate and self.found is None:
            self.check(node, path, value, (0, text[pos:end]))
        return end, value

    def check(self, node: _Node, path: Any, value: Any, key: tuple) -> None:
        """Validate a complete value against the subschemas that certainly apply to it."""
        for schema in node.validate:
            error = self.checker._error(schema, value, key)
            if error is not None and error is not _UNKNOWN:
                where = _pointer(path) + "".join(_pointer_part(p) for p in error.absolute_path)
                rule = error.validator or "false schema"
                self.report(f"{where or '(root)'}: {error.message} ({rule})")
                return

    def array(self, pos: int, node: _Node, path: Any, final: bool) -> None:
        """Parse an array that the text ends inside (raises _Invalid if it is not JSON)."""
        text, n = self.text, self.n
        checker = self.checker
        pos = self.ws(pos + 1)
        if pos == n:
            return
        if text[pos] == "]":
            raise _Invalid  # complete, yet the decoder refused it
        if not final:
            node = checker._empty
        checks = final and (node.unique or node.contains or node.max_items is not None)
        seen: dict[Any, int] = {}
        items: list = []
        matches = [0] * len(node.contains)
        index = 0
        while True:
            # item `index` certainly exists
            child = node.item(index)
            if final and self.found is None:
                if child.false is not None:
                    self.report(f"{_pointer((path, index))}: item not allowed ({child.false})")
                elif node.max_items is not None and index + 1 > node.max_items:
                    self.report(f"{_where(path)}: more than {node.max_items} items (maxItems)")
            if pos == n:
                return
            end, value = self.value(pos, child, (path, index), final)
            if end is None:
                return
            if checks and self.found is None:
                items.append(value)
                if node.unique:
                    self.unique(path, seen, items, index, value)
                for k, (contains, most) in enumerate(node.contains):
                    if checker._error(contains, value, (0, text[pos:end])) is None:
                        matches[k] += 1
                        if matches[k] > most:
                            self.report(
                                f"{_where(path)}: more than {most} items match 'contains'"
                                " (maxContains)"
                            )
            pos = self.after(end, ",")
            if pos is None:
                return
            index += 1

    def unique(self, path: Any, seen: dict, items: list, index: int, value: Any) -> None:
        try:
            first = seen.setdefault(_canon(value), index)
        except TypeError:
            return
        error = self.checker._error(_UNIQUE_SCHEMA, items, None) if first != index else None
        if error is not None and error is not _UNKNOWN:
            self.report(
                f"{_where(path)}: items {first} and {index} are equal: {_show(value)} (uniqueItems)"
            )

    def object(self, pos: int, node: _Node, path: Any, final: bool) -> None:
        """Parse an object that the text ends inside (raises _Invalid if it is not JSON)."""
        text, n = self.text, self.n
        checker = self.checker
        pos = self.ws(pos + 1)
        if pos == n:
            return
        if not final:
            node = checker._empty
        final_members = final and checker.unique_keys
        keys: set[str] = set()
        members: list = []  # (key, start, end, value) of complete members
        extra: tuple = ()
        while True:
            if text[pos] != '"':
                raise _Invalid  # includes a "}" that the decoder refused
            try:
                key, pos = scanstring(text, pos + 1, True)
            except ValueError:
                if _STRING_PREFIX.fullmatch(text, pos):
                    return
                raise _Invalid from None
            # the key is complete: it is in the finished document
            keys.add(key)
            if final and self.found is None:
                if key in node.deps:
                    grown, extra = node.grown(keys, extra)
                    if grown is not node:
                        node = grown
                        if node.false is not None:
                            self.report(
                                f"{_where(path)}: not allowed with key {key!r} ({node.false})"
                            )
                        self.recheck(node, path, keys, members, final_members)
                self.key(node, path, key, len(keys))
            child = node.member(key)
            pos = self.after(pos, ":")
            if pos is None or pos == n:
                return
            start = pos
            end, value = self.value(pos, child, (path, key), final_members)
            if end is None:
                return
            if node.deps:
                members.append((key, start, end, value))
            pos = self.after(end, ",")
            if pos is None or pos == n:
                return

    def key(self, node: _Node, path: Any, key: str, count: int) -> None:
        """Checks on a key present in an object at a certain location."""
        if node.max_props is not None and count > node.max_props:
            self.report(f"{_where(path)}: more than {node.max_props} properties (maxProperties)")
            return
        for schema in node.prop_names:
            error = self.checker._error(schema, key, (2, key))
            if error is not None and error is not _UNKNOWN:
                self.report(
                    f"{_where(path)}: property name {key!r}: {error.message} (propertyNames)"
                )
                return
        child = node.member(key)
        if child.false is not None:
            self.report(f"{_pointer((path, key))}: property not allowed ({child.false})")

    def recheck(
        self, node: _Node, path: Any, keys: set[str], members: list, final_members: bool
    ) -> None:
        """Dependent schemas came in: check the keys and members seen so far again."""
        for key in sorted(keys):
            self.key(node, path, key, len(keys))
        if final_members:
            for key, start, end, value in members:
                child = node.member(key)
                if child.validate and self.found is None:
                    self.check(child, (path, key), value, (0, self.text[start:end]))
