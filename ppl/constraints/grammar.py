"""Constraint objects: Lark grammars, regular expressions and JSON schemas.

A constraint is a set of strings L. `ctx.next_token(constraint=c)` restricts the text a context
adds after its prompt to prefixes of strings in L, and lets the sequence end (EOS) exactly when
its text is in L. All three kinds compile to an llguidance grammar, which computes the token
masks; `parse(text)` gives users the structure of a completed output.
"""

from __future__ import annotations

import json
import re
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import jsonschema
import jsonschema.validators
import lark
import llguidance
from jsonschema.exceptions import best_match

from ppl.constraints.json_prefix import PrefixChecker
from ppl.constraints.masks import GrammarStates, model_masks
from ppl.constraints.reference import (
    GrammarReference,
    JSONReference,
    Reference,
    RegexReference,
    Verdict,
    report_leak,
)


class ConstraintError(ValueError):
    """A constraint that cannot be used; `line` and `column` (1-based) locate it when known."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        where = f"line {line}, column {column}: " if line is not None else ""
        super().__init__(where + message)
        self.line = line
        self.column = column


class Constraint:
    """A set of strings the generated text must belong to; see `Grammar`, `Regex`, `JSONSchema`.

    Subclasses set `self.grammar` (llguidance's grammar text) in `__init__` and call `_check()`.
    """

    grammar: str
    source: str  # what the user wrote, for messages
    reference: Reference  # reads finished texts independently of the mask engine
    checks_prefixes = False  # does `prefix_violation` ever find anything? (skips it per token)

    def _check(self) -> None:
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(self.grammar)
        if is_error:
            line, column = _llg_location(messages[0]) if isinstance(self, Grammar) else (None, None)
            message = _llg_message(messages[0])
            if message.startswith("Unsatisfiable schema"):
                found = self._empty_part() or message.removeprefix("Unsatisfiable schema: ")
                raise ConstraintError(f"{type(self).__name__}: {_EMPTY_SCHEMA}: {found}")
            if "regex parse error" in message and "not supported" not in message:
                what = "invalid regular expression"
            else:
                what = "not supported by the token-mask engine"
            for word, construct in _CONSTRUCTS.items():
                message = message.replace(word, construct)
            raise ConstraintError(f"{type(self).__name__}: {what}: {message}", line, column)
        self._states: weakref.WeakKeyDictionary[Any, GrammarStates] = weakref.WeakKeyDictionary()
        if _language_is_empty(self.grammar):
            found = self._empty_part()
            raise ConstraintError(
                f"{type(self).__name__}: {_EMPTY_SCHEMA}: {found}"
                if found
                else f"{type(self).__name__}: its language is empty: no string matches"
            )

    def _empty_part(self) -> str | None:
        """The part of the constraint that makes its language empty, when one is known."""
        return None

    def states(self, lm: Any) -> GrammarStates:
        """The grammar states of this constraint on `lm` (made once per model)."""
        found = self._states.get(lm)
        if found is None:
            found = self._states[lm] = GrammarStates(
                model_masks(lm), self.grammar, self.accepts_end
            )
        return found

    def matches(self, text: str) -> Verdict:
        """Is `text` a complete string of the constraint? Asks both the mask engine and the
        reference (`check`): the answer is true when both accept, and says which did not."""
        m = llguidance.LLMatcher(_byte_tokenizer(), self.grammar, log_level=0)
        ok = m.consume_tokens(list(text.encode()))
        language = bool(ok and not m.is_error() and m.is_accepting())
        reason = self.check(text)
        return Verdict(language, reason is None, reason)

    def check(self, text: str) -> str | None:
        """The reference's reading of a finished `text`: None if it is in the language, else
        what is wrong (see `ppl.constraints.reference`)."""
        return self.reference.check(text)

    def may_close(self, token_text: str) -> bool:
        """Is `prefix_violation` worth asking after a token with this text?"""
        return False

    def prefix_violation(self, text: str) -> str | None:
        """Has `text`, not yet finished, already broken a rule the mask leaves to the reference
        (so that no completion can be in the language)? What, or None. Only `JSONSchema` has
        such rules."""
        return None

    def accepts_end(self, text: str) -> bool:
        """May a generation end with `text`, which the mask engine accepts? Asks the reference;
        a rejection the mask was meant to prevent is reported as a leak."""
        reason = self.reference.check(text)
        if reason is None:
            return True
        if self.reference.leak(text):
            report_leak(self, text, reason)
        return False

    def parse(self, text: str) -> Any:
        raise NotImplementedError

    def __deepcopy__(self, memo: dict) -> Constraint:
        return self  # immutable; particles share it

    def __repr__(self) -> str:
        shown = self.source if len(self.source) <= 40 else self.source[:37] + "..."
        return f"{type(self).__name__}({shown!r})"


class Grammar(Constraint):
    """A context-free grammar in Lark syntax; its `start` rule defines the language.

    >>> g = Grammar('start: NUMBER ("+" NUMBER)*\\nNUMBER: /[0-9]+/')
    >>> g.parse("1+23").children[1]
    Token('NUMBER', '23')

    Raises `ConstraintError` for invalid Lark syntax (with line and column), for constructs the
    token-mask engine does not support (terminal or rule priorities, templates, `%declare`,
    look-around in regular expressions, ...: the error names it), and for a grammar whose
    language is empty. All of this happens here, before any model call.
    """

    def __init__(self, lark_text: str, *, start: str = "start") -> None:
        if not isinstance(lark_text, str):
            raise TypeError(f"Grammar takes Lark grammar text, got {type(lark_text).__name__}")
        self.source = lark_text
        self.start = start
        text = lark_text if start == "start" else f"start: {start}\n{lark_text}"
        self.grammar = llguidance.LLMatcher.grammar_from_lark(text)
        try:
            self._lark = _lark_parser(lark_text, start)
        except lark.exceptions.LarkError as e:
            raise ConstraintError(
                f"invalid Lark grammar: {_lark_message(e)}", *_lark_location(e, lark_text)
            ) from None
        except Exception as e:  # lark fails on some constructs it parses (e.g. %declare)
            self._check()
            raise ConstraintError(f"Lark cannot load this grammar: {e}") from None
        self.reference = GrammarReference(self._lark.parse)
        if not _productive(self._lark, start):
            raise ConstraintError(
                f"Grammar: its language is empty: rule {start!r} derives no finite string"
            )
        self._check()

    def parse(self, text: str) -> lark.Tree:
        """The Lark parse tree of `text`; raises `lark.exceptions.LarkError` if it is not in L."""
        return self._lark.parse(text)


class Regex(Constraint):
    """Strings that fully match a regular expression, in Python `re` syntax; `parse` returns the
    `re.Match`.

    Raises `ConstraintError` for a pattern Python's `re` rejects (with the position), for
    constructs the token-mask engine cannot do (look-around, back-references, `\\b`, `\\Z`,
    atomic groups, possessive quantifiers, ...: the error names them) and for patterns the two
    would read differently, so the language is the one `re.fullmatch` defines. `\\d`, `\\w`,
    `\\s` follow the engine's Unicode tables, which differ from `re`'s on a few characters: ASCII
    classes (`[0-9]`) are exact.
    """

    def __init__(self, pattern: str) -> None:
        if not isinstance(pattern, str):
            raise TypeError(f"Regex takes a pattern str, got {type(pattern).__name__}")
        self.source = pattern
        self._re: re.Pattern = _python_regex(pattern)
        self.reference = RegexReference(self._re)
        self.grammar = llguidance.LLMatcher.grammar_from_regex(pattern)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(self.grammar)
        if is_error:
            detail = _regex_engine_message(pattern, messages[0])
            raise ConstraintError(f"Regex: not supported by the token-mask engine: {detail}")
        self._check()

    def parse(self, text: str) -> re.Match:
        """The match of the whole of `text`; raises `ValueError` if it does not match."""
        m = self._re.fullmatch(text)
        if m is None:
            raise ValueError(f"{text!r} does not match /{self.source}/")
        return m


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
            raise ConstraintError(f"JSONSchema: {_EMPTY_SCHEMA}: the schema is false")
        own = schema.get("x-guidance") if isinstance(schema, dict) else None
        own = own if isinstance(own, dict) else {}
        lenient = lenient or own.get("lenient") is True
        coerce_one_of = coerce_one_of or own.get("coerce_one_of") is True
        normal = _normal_schema(schema, "")
        empty = _empty_schema_part(normal, "")
        if empty:
            raise ConstraintError(f"JSONSchema: {_EMPTY_SCHEMA}: {empty}")
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


_EMPTY_SCHEMA = "its language is empty (the schema is unsatisfiable)"

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
    error = best_match(cls(cls.META_SCHEMA).iter_errors(schema))
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
        message = _llg_message(messages[0])
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


# -- checks ------------------------------------------------------------------------------------


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else message


# names of constructs in the mask engine's messages, as Lark's documentation calls them
_CONSTRUCTS = {"params not supported": "rule templates (parameters) not supported"}


def _lark_message(e: Exception) -> str:
    first = _first_line(str(e))
    return re.sub(r",? at line \d+,? column \d+\.?", "", first).strip()


def _llg_message(message: str) -> str:
    """llguidance's message without its location prefix, with its `error:` detail lines."""
    lines = message.strip().splitlines()
    head = re.sub(r"^(?:at )?\d+\(\d+\):\s*", "", lines[0]) if lines else message
    details = [ln.strip() for ln in lines[1:] if ln.strip().startswith("error:")]
    return " ".join([head.rstrip(":"), *(d.removeprefix("error:").strip() for d in details)])


def _llg_location(message: str) -> tuple[int | None, int | None]:
    m = re.search(r"(?:^|at )(\d+)\((\d+)\)", message)
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


# Python's own regex parser: the tree shows the constructs `re` reads differently from the
# mask engine (Python >= 3.11 names it re._parser; 3.10 has sre_parse)
try:
    from re import _parser as _re_parser
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as _re_parser

# constructs of `re` that the engine rejects or reads differently, by parser opcode
_RE_UNSUPPORTED = {
    "GROUPREF": "back-references (\\1, (?P=name))",
    "GROUPREF_EXISTS": "conditional groups (?(id)yes|no)",
    "ASSERT": "look-around (?=...), (?<=...)",
    "ASSERT_NOT": "look-around (?!...), (?<!...)",
    "ATOMIC_GROUP": "atomic groups (?>...)",
    "POSSESSIVE_REPEAT": "possessive quantifiers (*+, ++, ?+, {m,n}+)",
    "AT_BOUNDARY": "word boundaries \\b",
    "AT_NON_BOUNDARY": "word boundaries \\B",
    "AT_END_STRING": "\\Z (leave it out: the whole text must match anyway)",
}


def _python_regex(pattern: str) -> re.Pattern:
    """`re.compile(pattern)`, or a `ConstraintError` if `re` rejects it, if it uses a construct
    the mask engine cannot do, or if the engine would read it differently."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            compiled = re.compile(pattern)
            tree = _re_parser.parse(pattern)  # not cached: warns every time
        except re.error as e:
            at = f" at position {e.pos}" if e.pos is not None else ""
            raise ConstraintError(
                f"Regex: invalid regular expression {pattern!r}{at}: {e.msg}"
            ) from None
    if caught:  # e.g. "Possible nested set": [[:alpha:]] is a POSIX class for the engine
        raise ConstraintError(
            f"Regex: ambiguous regular expression {pattern!r}: {caught[0].message} (Python's re "
            "and the token-mask engine read it differently; escape the character)"
        )
    ops, flags = _re_ops(tree, tree.state.flags)
    for op in ops:
        if op in _RE_UNSUPPORTED:
            what = _RE_UNSUPPORTED[op]
            raise ConstraintError(
                f"Regex: not supported by the token-mask engine: {what} in {pattern!r}"
            )
    if flags & re.MULTILINE and ops & {"AT_BEGINNING", "AT_END"}:
        raise ConstraintError(
            f"Regex: not supported by the token-mask engine: ^ and $ in multi-line mode (?m) in "
            f"{pattern!r}"
        )
    if flags & (re.ASCII | re.LOCALE):
        raise ConstraintError(
            f"Regex: not supported by the token-mask engine: ASCII mode (?a) in {pattern!r} "
            "(write ASCII classes out: [0-9], [A-Za-z0-9_], [ \\t\\n\\r\\f\\v])"
        )
    if flags & re.VERBOSE:
        position = _verbose_class_space(pattern)
        if position is not None:
            raise ConstraintError(
                f"Regex: ambiguous regular expression {pattern!r} at position {position}: in "
                "verbose mode (?x), re keeps spaces and '#' inside [...] but the token-mask "
                "engine drops them; escape them (\\  or \\#)"
            )
    return compiled


def _re_ops(tree: Any, flags: int) -> tuple[set[str], int]:
    """The names of the opcodes and AT codes in a parsed pattern, and the union of its flags."""
    ops: set[str] = set()
    for op, av in tree:
        ops.add(op.name)
        if op.name == "AT":
            ops.add(av.name)
        if op.name == "SUBPATTERN":
            flags |= av[1]
        for item in av if isinstance(av, (tuple, list)) else (av,):
            for sub in item if isinstance(item, list) else (item,):
                if isinstance(sub, _re_parser.SubPattern):
                    sub_ops, flags = _re_ops(sub, flags)
                    ops |= sub_ops
    return ops, flags


def _verbose_class_space(pattern: str) -> int | None:
    """Where a character class holds an unescaped space or '#', read in verbose mode."""
    i, n, in_class = 0, len(pattern), False
    while i < n:
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            elif c.isspace() or c == "#":
                return i
        elif c == "#":  # a comment, to the end of the line
            while i < n and pattern[i] != "\n":
                i += 1
        elif c == "[":
            in_class = True
            if pattern[i + 1 : i + 2] == "^":
                i += 1
            if pattern[i + 1 : i + 2] == "]":  # a leading ] is a literal
                i += 1
        i += 1
    return None


def _regex_engine_message(pattern: str, message: str) -> str:
    """The engine's reason for refusing a pattern `re` accepts, with its position."""
    lines = message.splitlines()
    errors = [ln.strip().removeprefix("error:").strip() for ln in lines if "error:" in ln[:12]]
    detail = errors[0] if errors else _llg_message(message)
    position = None
    for above, line in zip(lines[1:], lines[2:]):  # the pattern, indented 4, and a caret line
        if above == "    " + pattern and line.strip().startswith("^"):
            position = len(line) - len(line.lstrip()) - 4
            break
    rest = pattern[position:] if position is not None else ""
    if position is not None and pattern[:position].endswith("(?") and rest.startswith("#"):
        detail = "comment groups (?#...) are not supported"
    elif re.match(r"\\(0|[0-7]{3})", rest):
        detail = "octal escapes are not supported (write \\xNN)"
    elif rest.startswith("\\N"):
        detail = "named characters \\N{...} are not supported (write the character)"
    elif "repetition" in detail:
        detail += " (re reads a '{' that starts no repetition literally: write \\{; {,n} is {0,n})"
    elif rest.startswith("\\b"):
        detail += " (re reads [\\b] as a backspace: write \\x08)"
    elif re.search(r"lookarounds not supported yet; (Start|End) ", detail):
        detail = "^, \\A and $ are supported only where they begin or end the whole text"
    elif re.search(r"lookarounds not supported yet; Word(Start|End)", detail):
        detail = "\\< and \\> are word boundaries for the engine (re reads them as < and >)"
    at = f" at position {position}" if position is not None else ""
    return f"{pattern!r}{at}: {detail}"


def _lark_location(e: Exception, text: str) -> tuple[int | None, int | None]:
    line, column = getattr(e, "line", None), getattr(e, "column", None)
    if isinstance(line, int) and line > 0:
        return line, column
    m = re.search(r"line (\d+),? column (\d+)", str(e))
    if m:
        return int(m.group(1)), int(m.group(2))
    # errors that name a symbol ("Rule 'x' used but not defined"): its first use
    m = re.search(r"'([A-Za-z_][A-Za-z_0-9]*)'", str(e))
    if m:
        for i, source_line in enumerate(text.splitlines(), 1):
            col = re.search(rf"\b{re.escape(m.group(1))}\b", source_line.split(":", 1)[-1])
            if col and ":" in source_line:
                return i, source_line.index(":") + 2 + col.start()
    return None, None


def _lark_parser(text: str, start: str) -> lark.Lark:
    """An Earley parser; with a basic lexer for grammars whose terminals may match "" (which
    Earley's dynamic lexer refuses)."""
    try:
        return lark.Lark(text, start=start, parser="earley")
    except lark.exceptions.GrammarError as e:
        if "zero-width" not in str(e):
            raise
        return lark.Lark(text, start=start, parser="earley", lexer="basic")


def _productive(parser: lark.Lark, start: str) -> bool:
    """Does `start` derive some string? (Least fixpoint: a rule is productive when one of its
    expansions holds only terminals and productive rules.)"""
    productive: set[str] = set()
    rules = [(r.origin.name, r.expansion) for r in parser.rules]
    changed = True
    while changed:
        changed = False
        for origin, expansion in rules:
            if origin not in productive and all(
                s.is_term or s.name in productive for s in expansion
            ):
                productive.add(origin)
                changed = True
    return start in productive


_BYTES: list[llguidance.LLTokenizer] = []


def _byte_tokenizer() -> llguidance.LLTokenizer:
    """A vocabulary of the 256 single bytes and EOS: masks over it show which bytes may follow."""
    if not _BYTES:

        class _Bytes:
            tokens = [bytes([i]) for i in range(256)] + [b"\xff[eos]"]
            eos_token_id = 256
            bos_token_id = None
            special_token_ids = [256]

            def __call__(self, text: str) -> list[int]:
                return list(text.encode())

        _BYTES.append(llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Bytes())))
    return _BYTES[0]


def _language_is_empty(grammar: str) -> bool:
    """No first byte can start a string of the language and the empty string is not in it."""
    m = llguidance.LLMatcher(_byte_tokenizer(), grammar, log_level=0)
    if m.is_error():
        return False  # reported by validation
    if m.is_accepting():
        return False
    mask = m.compute_bitmask()
    return not any(mask[:32])  # bytes 0..255
