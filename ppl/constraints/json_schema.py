"""`JSONSchema`: the JSON documents valid under a JSON schema, as a constraint.

The token-mask engine (llguidance) enforces what it can of the schema; each keyword it lacks is
left out of the mask's copy (`_relax`, a superset of the language) and enforced by the reference
validator (`jsonschema`) instead: on each value as it closes (`ppl.constraints.json_prefix`)
where it certainly applies, else on the finished text. So the language stays exactly the
schema's. Schemas are checked here, before any model call: an invalid one, a `$ref` to a schema
not given, and one whose language is empty are `ConstraintError`s.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from typing import Any

import llguidance

from ppl.constraints.grammar import EMPTY_SCHEMA, Constraint, ConstraintError, llg_message
from ppl.constraints.json_prefix import PrefixChecker
from ppl.constraints.reference import JSONReference
from ppl.lazy import lazy_import

jsonschema = lazy_import("jsonschema")  # 0.7-1.5 s to import: loaded at first use


class JSONSchema(Constraint):
    """JSON documents valid under a JSON schema (a dict, a bool or its JSON text), written in the
    form the token-mask engine generates: see docs/constraints.md for exactly which documents.

    Without `whitespace=True` the documents are compact (no whitespace between tokens), which
    is what most uses want and keeps masks small. Keywords the engine cannot mask (`not`,
    `uniqueItems`, `if`/`then`/`else`, `dependentRequired`, non-exclusive `oneOf`, unknown
    formats, ...) are left out of the mask (`relaxed` lists them) and enforced by the reference
    validator: on each value as it closes where they certainly apply, else on the finished text,
    so the language is still exactly the schema's. `lenient=True` does not enforce them (the
    language is then the larger one of the relaxed schema) and `coerce_one_of=True` reads every
    `oneOf` as `anyOf`. Other options of the engine go in the schema's top-level
    `"x-guidance"` object. `parse` returns the decoded Python value.

    Raises `ConstraintError` for an invalid schema, a `$ref` to a schema not given, and a schema
    whose language is empty (naming the part that makes it so, e.g. `"enum": []`).
    """

    def __init__(
        self,
        schema: dict | bool | str,
        *,
        whitespace: bool = False,
        coerce_one_of: bool = False,
        lenient: bool = False,
    ) -> None:
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise ConstraintError(
                    f"JSONSchema: invalid JSON: {e.msg}", e.lineno, e.colno
                ) from None
        if not isinstance(schema, (dict, bool)):
            raise TypeError(
                f"JSONSchema takes a dict, a bool or JSON text, got {type(schema).__name__}"
            )
        self.schema = schema
        self.source = json.dumps(schema)
        if schema is False:
            raise ConstraintError(f"JSONSchema: {EMPTY_SCHEMA}: the schema is false")
        own = schema.get("x-guidance") if isinstance(schema, dict) else None
        own = own if isinstance(own, dict) else {}
        lenient = lenient or own.get("lenient") is True
        coerce_one_of = coerce_one_of or own.get("coerce_one_of") is True
        normal = _normal_schema(schema, "")
        empty = _empty_schema_part(normal, "")
        if empty:
            raise ConstraintError(f"JSONSchema: {EMPTY_SCHEMA}: {empty}")
        validator = _schema_validator(normal)
        # the mask takes what the engine can do: each keyword it lacks is left out of its copy
        # (`oneOf` read as `anyOf`), a superset of the language, and the reference enforces the
        # rest on the finished text, so the language stays exactly the schema's
        options: dict[str, bool] = {"whitespace_flexible": whitespace}
        relaxed, self.relaxed, self.grammar = _relax(normal, options)
        if lenient:  # the user asked for the larger language: only what the mask enforces
            target = relaxed
        elif coerce_one_of:
            target = _one_of_as_any_of(normal)
        else:
            target = normal
        unread: list[str] = []
        self.reference = JSONReference(_re_readable(target, unread), _re_readable(relaxed, []))
        if unread:
            warnings.warn(
                f"JSONSchema: pattern {', '.join(map(repr, sorted(set(unread))))} is enforced by "
                "the mask engine alone: Python's re, which the reference check uses, cannot "
                "read it",
                UserWarning,
                stacklevel=2,
            )
        # the rules the mask leaves to the reference, checked as each value closes
        self._prefix = (
            PrefixChecker(
                self.reference.validator.schema,
                lambda sub, root=self.reference.validator: root.evolve(schema=sub),
            )
            if self.relaxed and target is not relaxed
            else None
        )
        self.checks_prefixes = self._prefix is not None
        self._warn_unchecked_formats(normal, validator)
        try:
            self._check()
        except ConstraintError as e:
            message = str(e)
            for words, hint in _JSON_HINTS.items():
                message = message.replace(words, hint)
            raise ConstraintError(message) from None

    def prefix_violation(self, text: str) -> str | None:
        if self._prefix is None:
            return None
        return self._prefix.violation(text)

    def may_close(self, token_text: str) -> bool:
        """Can a token with this text complete a value that `prefix_violation` would read?"""
        return self._prefix is not None and self._prefix.worth_checking(token_text)

    def _warn_unchecked_formats(self, schema: Any, validator: Any) -> None:
        known = set(validator.FORMAT_CHECKER.checkers)
        unknown = sorted(f[len("format ") :] for f in self.relaxed if f.startswith("format "))
        unchecked = [f for f in unknown if f not in known]
        if unchecked:
            warnings.warn(
                f"JSONSchema: format {', '.join(map(repr, unchecked))} is not checked: neither "
                "the mask engine nor the reference validator knows it, so it is read as an "
                "annotation, as JSON Schema 2020-12 specifies for unknown formats",
                UserWarning,
                stacklevel=3,
            )

    def _empty_part(self) -> str | None:
        return _empty_schema_part(self.schema, "")

    def parse(self, text: str) -> Any:
        """The decoded JSON value; raises `json.JSONDecodeError` if `text` is not JSON."""
        return json.loads(text)


# keywords whose value is a non-negative integer (draft 2020-12 counts 2.0 as one)
_COUNT_KEYWORDS = {
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minContains",
    "maxContains",
    "minProperties",
    "maxProperties",
}
# keywords whose value is a schema, a list of schemas or a map from names to schemas
_SUBSCHEMA = {
    "items",
    "additionalItems",
    "additionalProperties",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
    "contentSchema",
}
_SUBSCHEMA_LISTS = {"allOf", "anyOf", "oneOf", "prefixItems", "items"}
_SUBSCHEMA_MAPS = {
    "properties",
    "patternProperties",
    "$defs",
    "definitions",
    "dependentSchemas",
    "dependencies",
}

# the engine's words -> what they mean for JSONSchema's options
_JSON_HINTS = {
    "Resource '": "a schema named by $ref or $schema that is not given (ppl fetches nothing: "
    "put it under $defs and refer to it there): '",
}


def _pointer(path: str, key: str | int) -> str:
    """The JSON pointer of `key` under the schema at `path`."""
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


def _normal_schema(schema: Any, path: str) -> Any:
    """A copy of `schema` in the form the engine takes: `true` as `{}`, counts such as
    `"maxItems": 2.0` as integers, `"uniqueItems": false` (which constrains nothing) left out."""
    if schema is True and not path:
        return {}
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        where = _pointer(path, key)
        if key in _COUNT_KEYWORDS:
            integral = isinstance(value, float) and value.is_integer()
            if integral:
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConstraintError(
                    f"JSONSchema: invalid schema: {key} at {where} must be a non-negative "
                    f"integer, got {value!r}"
                )
        elif key == "uniqueItems" and value is False:
            continue
        elif key in _SUBSCHEMA_LISTS and isinstance(value, list):
            value = [_normal_schema(v, _pointer(where, i)) for i, v in enumerate(value)]
        elif key in _SUBSCHEMA:
            value = _normal_schema(value, where)
        elif key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            value = {k: _normal_schema(v, _pointer(where, k)) for k, v in value.items()}
        out[key] = value
    return out


def _schema_validator(schema: Any) -> Any:
    """The `jsonschema` validator class of the schema's draft, once the schema is checked
    against its draft's metaschema (an invalid schema is a `ConstraintError`)."""
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    # the metaschema's structure only: a `pattern` is read by the mask engine, whose syntax
    # (`\\p{Letter}`, say) Python's `re` may not read
    error = jsonschema.exceptions.best_match(cls(cls.META_SCHEMA).iter_errors(schema))
    if error is not None:
        where = "/" + "/".join(str(p) for p in error.absolute_path)
        raise ConstraintError(
            f"JSONSchema: invalid schema: at {where}: {error.message} "
            f"(under the metaschema of {cls.__name__.removesuffix('Validator')})"
        )
    return cls


def _map_schema(schema: Any, fn: Callable[[dict], dict]) -> Any:
    """`schema` with `fn` applied to each of its (sub)schema objects, innermost first."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SUBSCHEMA_LISTS and isinstance(value, list):
            value = [_map_schema(v, fn) for v in value]
        elif key in _SUBSCHEMA:
            value = _map_schema(value, fn)
        elif key in _SUBSCHEMA_MAPS and isinstance(value, dict):
            value = {k: _map_schema(v, fn) for k, v in value.items()}
        out[key] = value
    return fn(out)


def _re_readable(schema: Any, unread: list[str]) -> Any:
    """The schema as the reference validator (Python's `re`) can read it: a `pattern` that only
    the mask engine reads (`\\p{Letter}`) is left to the mask, and added to `unread`."""

    def readable(pattern: Any) -> bool:
        try:
            re.compile(pattern)
        except (re.error, TypeError):
            return False
        return True

    def visit(s: dict) -> dict:
        keys = s.get("patternProperties")
        for key in keys if isinstance(keys, dict) else ():
            if not readable(key):
                raise ConstraintError(
                    f"JSONSchema: patternProperties key {key!r} is not a regular expression "
                    "Python's re reads, so the reference check could not read it"
                )
        if "pattern" in s and not readable(s["pattern"]):
            unread.append(s["pattern"])
            return {k: v for k, v in s.items() if k != "pattern"}
        return s

    return _map_schema(schema, visit)


def _one_of_as_any_of(schema: Any) -> Any:
    return _map_schema(
        schema, lambda s: {("anyOf" if k == "oneOf" else k): v for k, v in s.items()}
    )


def _all_required(schema: dict) -> bool:
    properties, required = schema.get("properties", {}), schema.get("required", [])
    return isinstance(properties, dict) and set(properties) <= set(required)


def _without_keys(found: re.Match, schema: Any) -> tuple[list[str], Any]:
    keys = sorted(json.loads(f"[{found.group(1)}]"))
    return keys, _map_schema(schema, lambda s: {k: v for k, v in s.items() if k not in keys})


def _without_format(found: re.Match, schema: Any) -> tuple[list[str], Any]:
    name = found.group(1)
    return [f"format {name}"], _map_schema(
        schema, lambda s: {k: v for k, v in s.items() if not (k == "format" and v == name)}
    )


def _one_of_relaxed(found: re.Match, schema: Any) -> tuple[list[str], Any]:
    return ["oneOf"], _one_of_as_any_of(schema)


def _without_property_counts(found: re.Match, schema: Any) -> tuple[list[str], Any]:
    counts = ("minProperties", "maxProperties")

    def relax(s: dict) -> dict:
        return s if _all_required(s) else {k: v for k, v in s.items() if k not in counts}

    return list(counts), _map_schema(schema, relax)


def _without_refs(keep: Callable[[str], bool], what: str) -> Callable[..., tuple[list[str], Any]]:
    def relax(found: re.Match, schema: Any) -> tuple[list[str], Any]:
        def visit(s: dict) -> dict:
            ref = s.get("$ref")
            return (
                s
                if not isinstance(ref, str) or keep(ref)
                else {k: v for k, v in s.items() if k != "$ref"}
            )

        return [what], _map_schema(schema, visit)

    return relax


def _known_remote(ref: str) -> bool:
    """Is `ref` a metaschema, which the reference validator knows (and the engine cannot
    always read: they use `$dynamicAnchor`)?"""
    from jsonschema_specifications import REGISTRY

    return ref.split("#")[0] in REGISTRY


def _without_multiple_of(found: re.Match, schema: Any) -> tuple[list[str], Any]:
    return ["multipleOf"], _map_schema(
        schema, lambda s: {k: v for k, v in s.items() if k != "multipleOf"}
    )


# what the engine says it lacks -> (what is left out, the schema without it); the first that
# changes the schema is taken
_RELAXATIONS: list[tuple[str, Callable[[re.Match, Any], tuple[list[str], Any]]]] = [
    (r"Unimplemented keys: \[(.*?)\]", _without_keys),
    # keys it lacks inside a metaschema that a $ref names: the $ref is left to the reference
    (
        r"Unimplemented keys: \[",
        _without_refs(lambda ref: not _known_remote(ref), "$ref to a metaschema"),
    ),
    (r"Unknown format: ([^\s,;]+)", _without_format),
    (r"coerce_one_of", _one_of_relaxed),
    (r"min/maxProperties only supported", _without_property_counts),
    (
        r"Anchor '(.*?)' does not exist",
        lambda found, schema: _without_refs(
            lambda ref: ref != f"#{found.group(1)}", f"$ref to #{found.group(1)}"
        )(found, schema),
    ),
    (r"Value for 'multipleOf' has too many digits", _without_multiple_of),
]


def _relax(schema: Any, options: dict[str, bool]) -> tuple[Any, list[str], str]:
    """The schema the mask engine enforces: `schema` less each keyword the engine says it lacks
    (a superset of its language), what was left out, and the engine's grammar for it.

    An error of another kind is left in the grammar for `Constraint._check` to report."""
    relaxed = schema
    if isinstance(schema, dict) and isinstance(schema.get("x-guidance"), dict):
        # ppl reads these itself: the engine must say what it lacks, not ignore it
        own = {k: v for k, v in schema["x-guidance"].items() if k not in _OWN_OPTIONS}
        relaxed = {**schema, "x-guidance": own}
    left_out: list[str] = []
    for _ in range(64):
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(relaxed, overrides=options)
        except ValueError as e:
            raise ConstraintError(f"JSONSchema: {e}") from None
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
        if not is_error:
            break
        message = llg_message(messages[0])
        for pattern, relax in _RELAXATIONS:
            found = re.search(pattern, message)
            if found:
                what, smaller = relax(found, relaxed)
                if smaller != relaxed:
                    relaxed = smaller
                    left_out += [w for w in what if w not in left_out]
                    break
        else:  # nothing the engine lacks can be left out: `_check` reports the error
            break
    return relaxed, left_out, grammar


_OWN_OPTIONS = ("lenient", "coerce_one_of")


def _empty_schema_part(schema: Any, path: str) -> str | None:
    """A part of `schema` that by itself makes its language empty: the schema `false`, an empty
    `enum`, `type`, `anyOf` or `oneOf`, reached through `allOf`, through every branch of an
    `anyOf`, or through a required property of a schema that only takes objects."""
    if schema is False:
        return f"the schema at {path} is false" if path else "the schema is false"
    if not isinstance(schema, dict):
        return None
    for key in ("enum", "type", "anyOf", "oneOf"):
        if schema.get(key) == []:
            return f"{key} at {_pointer(path, key)} is empty"
    if "not" in schema and _takes_all(schema["not"]):
        return f"not at {_pointer(path, 'not')} excludes every value"
    branches = schema.get("oneOf")
    if isinstance(branches, list) and sum(map(_takes_all, branches)) > 1:
        return f"oneOf at {_pointer(path, 'oneOf')} has two branches that take every value"
    for key in ("allOf", "anyOf", "oneOf"):
        branches = schema.get(key)
        if not isinstance(branches, list):
            continue
        where = _pointer(path, key)
        found = [_empty_schema_part(b, _pointer(where, i)) for i, b in enumerate(branches)]
        if key == "allOf" and any(found):
            return next(f for f in found if f)
        if key != "allOf" and found and all(found):
            return f"no branch of {key} at {where} is satisfiable: {'; '.join(map(str, found))}"
    properties, required = schema.get("properties"), schema.get("required")
    if schema.get("type") in ("object", ["object"]) and isinstance(properties, dict):
        for name in required if isinstance(required, list) else []:
            if isinstance(name, str) and name in properties:
                where = _pointer(_pointer(path, "properties"), name)
                found = _empty_schema_part(properties[name], where)
                if found:
                    return f"required property {name!r}: {found}"
    return None


def _takes_all(schema: Any) -> bool:
    """Is `schema` one that every value satisfies (`true`, or an object of annotations only)?"""
    if schema is True:
        return True
    return isinstance(schema, dict) and set(schema) <= _ANNOTATIONS


_ANNOTATIONS = {
    "$schema", "$id", "$comment", "$anchor", "title", "description", "default", "examples",
    "deprecated", "readOnly", "writeOnly", "$defs", "definitions",
}  # fmt: skip
