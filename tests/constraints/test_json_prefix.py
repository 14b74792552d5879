"""Early JSON-schema checks on prefixes of JSON texts (`ppl.constraints.json_prefix`).

The checker may report a violation only when no completion of the prefix is valid (soundness,
checked against `jsonschema` on every prefix of random documents), and it should report every
violation at a location the schema certainly reaches as soon as the offending value is complete.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppl.constraints.json_prefix import PrefixChecker, decimal_validator

D7 = "http://json-schema.org/draft-07/schema#"


def checker(schema, **options) -> PrefixChecker:
    root = decimal_validator(schema)
    return PrefixChecker(schema, lambda sub: root.evolve(schema=sub), **options)


def is_valid(schema, text: str) -> bool:
    return decimal_validator(schema).is_valid(json.loads(text, parse_float=Decimal))


TAGS_UNIQUE = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}

# (schema, prefix, what the message must contain, or None for no violation)
CASES = [
    # uniqueItems on an open array: only complete items count
    (TAGS_UNIQUE, '{"tags": [1, 2, 1,', "/tags: items 0 and 2 are equal: 1 (uniqueItems)"),
    (TAGS_UNIQUE, '{"tags": [1, 2, 1', None),  # 1 may become 10
    (TAGS_UNIQUE, '{"tags": [1, 2, 1]', "/tags: [1, 2, 1] has non-unique elements (uniqueItems)"),
    (TAGS_UNIQUE, '{"tags": ["a", "b", "a"', "(uniqueItems)"),
    (TAGS_UNIQUE, '{"tags": ["a", "b", "a', None),
    (TAGS_UNIQUE, '{"tags": [{"x": [1.0]}, {"x": [1]}', "(uniqueItems)"),
    (TAGS_UNIQUE, '{"tags": [true, 1, false, 0,', None),  # booleans are not numbers
    (TAGS_UNIQUE, '{"tags": [1, 2, 3, 4,', None),
    (TAGS_UNIQUE, '{\n  "tags" :\t[ 1 ,\r\n 1 ', "/tags: items 0 and 1 are equal"),
    # maxItems: an item exists as soon as it starts (or after a comma)
    ({"items": {"type": "integer"}, "maxItems": 2}, "[1, 2, 3", "(root): more than 2 items"),
    ({"items": {"type": "integer"}, "maxItems": 2}, "[1, 2,", "more than 2 items (maxItems)"),
    ({"items": {"type": "integer"}, "maxItems": 2}, "[1, 2", None),
    # propertyNames, maxProperties, additionalProperties on open objects
    ({"propertyNames": {"pattern": "^[a-z]+$"}}, '{"ab1"', "property name 'ab1'"),
    ({"propertyNames": {"pattern": "^[a-z]+$"}}, '{"ab1', None),
    ({"propertyNames": {"pattern": "^[a-z]+$"}}, '{"ab": 1, "cd"', None),
    ({"maxProperties": 2}, '{"a": 1, "b": 2, "c"', "(root): more than 2 properties"),
    ({"maxProperties": 2}, '{"a": 1, "b": 2, "c', None),
    ({"maxProperties": 2}, '{"a": 1, "b": 2, "a"', None),  # a repeated key counts once
    ({"properties": {"a": {}}, "additionalProperties": False}, '{"a": 1, "b"', "/b: property"),
    (
        {"patternProperties": {"^x": {}}, "additionalProperties": False},
        '{"x1": 1, "xy"',
        None,
    ),
    ({"properties": {"a": False}}, '{"a"', "/a: property not allowed (properties)"),
    # keywords the mask engine cannot express, on complete values at certain locations
    ({"properties": {"a": {"not": {"type": "string"}}}}, '{"a": "s"', "/a: "),
    ({"properties": {"a": {"not": {"type": "string"}}}}, '{"a": 5', None),
    ({"properties": {"a": {"not": {"type": "integer"}}}}, '{"a": 5.0 ', "(not)"),
    (
        {"properties": {"o": {"dependentRequired": {"a": ["b"]}}}},
        '{"o": {"a": 1}',
        "/o: 'b' is a dependency of 'a' (dependentRequired)",
    ),
    (
        {"properties": {"o": {"if": {"required": ["a"]}, "then": {"required": ["b"]}}}},
        '{"o": {"a": 1}, ',
        "(required)",
    ),
    (
        {"properties": {"o": {"if": {"required": ["a"]}, "then": {"required": ["b"]}}}},
        '{"o": {"c": 1}, ',
        None,
    ),
    ({"properties": {"l": {"contains": {"type": "string"}}}}, '{"l": [1, 2]', "(contains)"),
    ({"properties": {"l": {"contains": {"type": "string"}}}}, '{"l": [1, 2', None),
    ({"contains": {"type": "string"}, "maxContains": 1}, '["a", 1, "b"', "(maxContains)"),
    ({"contains": {"type": "string"}, "maxContains": 1}, '["a", 1, "b', None),
    (
        {"properties": {"v": {"oneOf": [{"type": "integer"}, {"minimum": 0}]}}},
        '{"v": 3,',
        "(oneOf)",
    ),
    ({"properties": {"v": {"oneOf": [{"type": "integer"}, {"minimum": 0}]}}}, '{"v": -3,', None),
    ({"properties": {"o": {"minProperties": 2}}}, '{"o": {"a": 1}', "(minProperties)"),
    (
        {"properties": {"o": {"properties": {"a": {}}, "unevaluatedProperties": False}}},
        '{"o": {"a": 1, "b": 2}',
        "(unevaluatedProperties)",
    ),
    ({"properties": {"ip": {"format": "ipv4"}}}, '{"ip": "1.2.3"', "/ip: '1.2.3' is not a 'ipv4'"),
    ({"properties": {"ip": {"format": "ipv4"}}}, '{"ip": "1.2.3.4"', None),
    ({"properties": {"n": {"multipleOf": 0.01}}}, '{"n": 0.07,', None),  # exact in Decimal
    ({"properties": {"n": {"multipleOf": 0.01}}}, '{"n": 0.071,', "(multipleOf)"),
    ({"properties": {"n": {"type": "integer"}}}, '{"n": 2.0}', None),
    # numbers are complete only once a character after them arrived
    ({"properties": {"n": {"maximum": 5}}}, '{"n": 12', None),
    ({"properties": {"n": {"maximum": 5}}}, '{"n": 12 ', "/n: 12 is greater than the maximum"),
    ({"properties": {"n": {"maximum": 5}}}, '{"n": 12}', "(maximum)"),
    ({"properties": {"n": {"maximum": 5}}}, '{"n": 1.', None),
    ({"properties": {"n": {"maximum": 5}}}, '{"n": 1e', None),
    ({"properties": {"n": {"maximum": 5}}}, '{"n": -', None),
    ({"maximum": 5}, "12", None),
    ({"maximum": 5}, "12\n", "(root): 12 is greater than the maximum of 5 (maximum)"),
    # strings are complete at their closing quote, escapes included
    ({"properties": {"s": {"maxLength": 1}}}, r'{"s": "a\"', None),
    ({"properties": {"s": {"maxLength": 1}}}, r'{"s": "a\\"', "(maxLength)"),
    ({"properties": {"s": {"maxLength": 1}}}, r'{"s": "a\u00', None),
    ({"properties": {"s": {"maxLength": 1}}}, r'{"s": "a\u00e9"', "(maxLength)"),
    ({"properties": {"s": {"const": None}}}, '{"s": nul', None),
    ({"properties": {"s": {"const": None}}}, '{"s": true', "(const)"),
    # propagation: $ref, $defs, definitions, $anchor, allOf, patternProperties, items
    (
        {"$defs": {"u": {"uniqueItems": True}}, "properties": {"a": {"$ref": "#/$defs/u"}}},
        '{"a": [2, 2,',
        "/a: items 0 and 1 are equal",
    ),
    (
        {"$defs": {"u": {"$anchor": "uu", "maxItems": 1}}, "properties": {"a": {"$ref": "#uu"}}},
        '{"a": [2, 3',
        "/a: more than 1 items (maxItems)",
    ),
    (
        {"allOf": [{"properties": {"a": {"items": {"maxLength": 1}}}}]},
        '{"a": ["x", "yy"',
        "/a/1: 'yy' is too long (maxLength)",
    ),
    ({"patternProperties": {"^x": {"type": "string"}}}, '{"x1": 3,', "/x1: 3 is not of type"),
    ({"additionalProperties": {"type": "string"}}, '{"q": 3,', "/q: 3 is not of type"),
    ({"prefixItems": [{"type": "string"}], "items": {"type": "integer"}}, '["a", "b"', "/1: "),
    ({"prefixItems": [{"type": "string"}], "items": False}, '["a", ', "/1: item not allowed"),
    ({"prefixItems": [{"type": "string"}], "items": False}, '["a" ', None),
    (
        {"properties": {"r": {"$ref": "#"}, "n": {"type": "integer"}}},
        '{"r": {"r": {"n": 1.5}',
        "/r/r/n: Decimal('1.5') is not of type 'integer' (type)",
    ),
    # draft 7: items as a list, additionalItems, definitions, $ref ignores its siblings
    (
        {"$schema": D7, "items": [{"type": "string"}], "additionalItems": False},
        '["a", 1',
        "/1: item not allowed (additionalItems)",
    ),
    (
        {
            "$schema": D7,
            "definitions": {"i": {"type": "integer"}},
            "items": {"$ref": "#/definitions/i"},
        },
        "[1, 1.5,",
        "/1: Decimal('1.5') is not of type 'integer'",
    ),
    (
        {
            "$schema": D7,
            "definitions": {"i": {}},
            "properties": {"a": {"$ref": "#/definitions/i", "maximum": 0}},
        },
        '{"a": 5,',
        None,
    ),
    (
        {"$schema": D7, "dependencies": {"k": {"properties": {"a": {"maximum": 0}}}}},
        '{"a": 5, "k"',
        "/a: 5 is greater than the maximum of 0",
    ),
    # dependentSchemas: from the moment the key is present, also for members before it
    (
        {"dependentSchemas": {"k": {"properties": {"a": {"uniqueItems": True}}}}},
        '{"a": [1, 1], "k"',
        "/a: [1, 1] has non-unique elements",
    ),
    (
        {"dependentSchemas": {"k": {"properties": {"a": {"uniqueItems": True}}}}},
        '{"k": 0, "a": [1, 1,',
        "/a: items 0 and 1 are equal",
    ),
    (
        {"dependentSchemas": {"k": {"properties": {"a": {"uniqueItems": True}}}}},
        '{"a": [1, 1], "k',
        None,
    ),
    ({"dependentSchemas": {"k": False}}, '{"k"', "not allowed with key 'k'"),
    # no propagation under anyOf, oneOf, not, if/then/else, contains, unevaluated...
    (
        {"anyOf": [{"properties": {"a": {"uniqueItems": True}}}, {"required": ["b"]}]},
        '{"a": [1, 1], ',
        None,
    ),
    (
        {"oneOf": [{"properties": {"a": {"uniqueItems": True}}}, {"required": ["b"]}]},
        '{"a": [1, 1], ',
        None,
    ),
    ({"not": {"properties": {"a": {"type": "integer"}}}}, '{"a": 1, ', None),
    (
        {"if": {"required": ["z"]}, "then": {"properties": {"a": {"uniqueItems": True}}}},
        '{"a": [1, 1], ',
        None,
    ),
    (
        {"if": {"required": ["z"]}, "else": {"properties": {"a": {"maxItems": 0}}}},
        '{"a": [1], ',
        None,
    ),
    ({"contains": {"uniqueItems": True}}, "[[1, 1], ", None),
    ({"unevaluatedProperties": {"type": "string"}}, '{"a": 1, ', None),
    (
        {"properties": {"a": {"anyOf": [{"uniqueItems": True}, {"type": "string"}]}}},
        '{"a": [1, 1',
        None,
    ),
    # ... but a complete value at a certain location is checked against its whole subschema
    (
        {"properties": {"a": {"anyOf": [{"uniqueItems": True}, {"type": "string"}]}}},
        '{"a": [1, 1]',
        "(anyOf)",
    ),
    (
        {
            "$defs": {"t": {"$dynamicAnchor": "t"}},
            "properties": {"a": {"$dynamicRef": "#t", "maxItems": 0}},
        },
        '{"a": [1], ',
        None,
    ),
    # the schema false, invalid JSON
    (False, " [", "(root): no value is allowed"),
    (False, "  ", None),
    (TAGS_UNIQUE, '{"tags": [1, 1]]', None),
    (TAGS_UNIQUE, '{"tags": [1, 1] x', None),
    (TAGS_UNIQUE, '{"tags": [01, 1, 1,', None),
    (TAGS_UNIQUE, '{"tags": [NaN, NaN,', None),
    (TAGS_UNIQUE, '{"tags": [1, 1,], ', None),
    (TAGS_UNIQUE, '{"tags": [1, 1, "\x01"', None),
    ({"maximum": 5}, "12 3", None),
]


@pytest.mark.parametrize("schema, prefix, expected", CASES)
def test_violation(schema, prefix, expected):
    found = checker(schema).violation(prefix)
    if expected is None:
        assert found is None
    else:
        assert found is not None and expected in found, found


def test_repeated_keys_can_be_trusted_or_not():
    schema = {"properties": {"a": {"uniqueItems": True}}, "additionalProperties": False}
    trusting = checker(schema)
    assert trusting.violation('{"a": [1, 1], ') is not None
    # json.loads keeps the last "a": with unique_keys=False, wait for the object to close
    careful = checker(schema, unique_keys=False)
    assert careful.violation('{"a": [1, 1], ') is None
    assert careful.violation('{"a": [1, 1, ') is None
    assert is_valid(schema, '{"a": [1, 1], "a": [1]}')
    assert careful.violation('{"a": [1, 1]}') is not None
    # keys present stay present: checked at once
    assert careful.violation('{"a": [1, 1], "b"') is not None
    nested = {"items": {"properties": {"a": {"uniqueItems": True}}}}
    assert checker(nested, unique_keys=False).violation('[{"a": [1, 1]}, ') is not None


def test_any_validator_will_do():
    schema = {"properties": {"n": {"multipleOf": 0.01}, "i": {"type": "integer"}}}
    plain = jsonschema.Draft202012Validator(schema)
    c = PrefixChecker(schema, lambda sub: plain.evolve(schema=sub))
    assert c.violation('{"n": 0.07, ') is None
    assert c.violation('{"i": "x", ') == "/i: 'x' is not of type 'integer' (type)"

    def broken(sub):
        raise RuntimeError("no validator")

    assert PrefixChecker(schema, broken).violation('{"i": "x", ') is None


def test_worth_checking():
    worth = PrefixChecker.worth_checking
    for token in ['"', '",', "]", "}", ",", " ", "\n", "true", "fals", "e", "nul", "null", "1,"]:
        assert worth(token), token
    for token in ["", "12", "[", "{", ":", "tr", "nu", "abc", "-"]:
        assert not worth(token), token


def test_decimal_validator():
    v = decimal_validator({"type": "integer", "multipleOf": 0.01})
    assert v.is_valid(Decimal("2.0")) and v.is_valid(3)
    assert not v.is_valid(Decimal("2.5"))
    assert decimal_validator({"multipleOf": 0.01}).is_valid(Decimal("0.07"))
    assert decimal_validator({"type": "number"}).is_valid(Decimal("0.5"))
    assert not decimal_validator({"type": "number"}).is_valid(True)
    assert not decimal_validator({"format": "date"}).is_valid("2020-13-45")
    d7 = decimal_validator({"$schema": D7, "items": {"$ref": "#"}, "type": ["array", "integer"]})
    assert d7.is_valid([Decimal("1.0"), [2]]) and not d7.is_valid([Decimal("1.5")])


def test_speed():
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "scores": {"type": "array", "items": {"type": "number", "multipleOf": 0.01}},
            "meta": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    }
    doc = {
        "name": "a fairly long name " * 3,
        "tags": [f"t{i}" for i in range(25)],
        "scores": [i * 0.25 for i in range(30)],
        "meta": {f"k{i}": i for i in range(20)},
    }
    prefix = json.dumps(doc)[:500]
    c = checker(schema)
    assert c.violation(prefix) is None
    start = time.perf_counter()
    for _ in range(200):
        c.violation(prefix)
    assert (time.perf_counter() - start) / 200 < 0.005  # typically ~0.05 ms


# -- soundness and completeness on random documents ----------------------------------------------

KEYS = ["a", "b", "k", "n", "o", "s", "tags", "x1", "xy"]
SMALL = st.integers(0, 3) | st.sampled_from(
    ["a", "", "ab", 'a"', "\\", "1.2.3.4", None, True, False, 0.5, 1.0, 0.07, 0.25, -1.5, 1e-7]
)
LIST = st.lists(SMALL, max_size=4)
DICT = st.dictionaries(st.sampled_from(["a", "b", "k"]), SMALL, max_size=3)
ANY = st.recursive(
    SMALL,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)
    ),
    max_leaves=8,
)


def obj(**fields):
    """Objects with some of these members, in any order."""
    members = st.fixed_dictionaries({}, optional=fields)
    return members.flatmap(lambda d: st.permutations(list(d.items())).map(dict))


# schemas with the keywords the checker handles, nested in properties, items, allOf, anyOf,
# $ref..., each with documents of the shapes it talks about (and of any shape)
SCHEMAS = [
    (TAGS_UNIQUE, obj(tags=LIST | SMALL, a=SMALL)),
    (
        {"properties": {"tags": {"items": {"type": "integer"}, "maxItems": 3}}, "maxProperties": 3},
        obj(tags=LIST, a=SMALL, b=SMALL, k=SMALL),
    ),
    (
        {"propertyNames": {"maxLength": 1}, "additionalProperties": {"type": ["integer", "array"]}},
        st.dictionaries(st.sampled_from(KEYS), SMALL | LIST, max_size=4),
    ),
    (
        {
            "properties": {"a": {"type": "integer"}, "o": {"additionalProperties": False}},
            "patternProperties": {"^x": {"type": "string"}},
            "additionalProperties": {"not": {"type": "object"}},
        },
        obj(a=SMALL, o=DICT | SMALL, x1=SMALL, xy=SMALL | DICT, b=SMALL | DICT),
    ),
    (
        {"$defs": {"u": {"type": "array", "uniqueItems": True}}, "items": {"$ref": "#/$defs/u"}},
        st.lists(LIST | SMALL, max_size=4),
    ),
    (
        {
            "allOf": [
                {"properties": {"a": {"maxItems": 2}}},
                {"properties": {"a": {"uniqueItems": True}}},
            ]
        },
        obj(a=LIST, b=SMALL),
    ),
    (
        {"anyOf": [{"properties": {"a": {"uniqueItems": True}}}, {"required": ["k"]}]},
        obj(a=LIST, k=SMALL),
    ),
    (
        {
            "oneOf": [
                {"properties": {"n": {"type": "integer"}}},
                {"properties": {"n": {"minimum": 0}}},
            ]
        },
        obj(n=SMALL, a=SMALL),
    ),
    (
        {
            "items": {
                "if": {"type": "integer"},
                "then": {"minimum": 2},
                "else": {"not": {"type": "null"}},
            }
        },
        LIST,
    ),
    (
        {
            "items": {"contains": {"type": "string"}, "maxContains": 1},
            "prefixItems": [{"type": "array"}],
        },
        st.lists(LIST, max_size=3),
    ),
    (
        {"properties": {"k": {"dependentRequired": {"a": ["b"]}, "minProperties": 2}}},
        obj(k=DICT | SMALL, a=SMALL),
    ),
    (
        {"dependentSchemas": {"k": {"properties": {"a": {"uniqueItems": True}, "b": False}}}},
        obj(k=SMALL, a=LIST, b=SMALL, n=SMALL),
    ),
    (
        {
            "properties": {"o": {"$ref": "#"}, "n": {"multipleOf": 0.25}},
            "unevaluatedProperties": False,
        },
        obj(n=SMALL, o=obj(n=SMALL, o=obj(n=SMALL, b=SMALL)), b=SMALL),
    ),
    (
        {"properties": {"s": {"format": "ipv4"}, "b": {"enum": [[1, {"a": None}], "ab", 0.5]}}},
        obj(s=SMALL, b=st.sampled_from([[1, {"a": None}], [1, {"a": 0}], "ab", 0.5, 0.25, []])),
    ),
    (
        {
            "$schema": D7,
            "definitions": {"s": {"type": "string"}},
            "items": [{"$ref": "#/definitions/s"}, {"uniqueItems": True}],
            "additionalItems": {"$ref": "#/definitions/s", "maxLength": 0},
        },
        st.lists(st.sampled_from(["", "a"]) | LIST, max_size=4),
    ),
    (
        {"$schema": D7, "dependencies": {"k": {"propertyNames": {"enum": ["k", "a"]}}, "b": ["a"]}},
        st.dictionaries(st.sampled_from(["a", "b", "k", "n"]), SMALL, max_size=3),
    ),
]
CHECKERS = [checker(schema) for schema, _ in SCHEMAS]
VALIDATORS = [decimal_validator(schema) for schema, _ in SCHEMAS]
PROPAGATING = {"properties", "patternProperties", "dependentSchemas", "dependencies", "prefixItems"}


def certain(schema_path) -> bool:
    """Does a jsonschema error's schema path reach its keyword only through keywords that
    certainly apply (`$ref` leaves no trace in it)?"""
    path = list(schema_path)
    i = 0
    while i < len(path) - 1:
        keyword = path[i]
        if keyword in PROPAGATING or keyword == "allOf":
            i += 2
        elif keyword in ("items", "additionalItems", "additionalProperties"):
            i += 2 if i + 1 < len(path) - 1 and isinstance(path[i + 1], int) else 1
        else:
            return False
    return True


@settings(
    derandomize=True,
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@pytest.mark.parametrize("which", range(len(SCHEMAS)))
@given(data=st.data())
def test_sound_and_complete_on_every_prefix(which, data):
    value = data.draw(SCHEMAS[which][1] | ANY)
    check, validator = CHECKERS[which], VALIDATORS[which]
    texts = [
        json.dumps(value, separators=(",", ":")),
        json.dumps(value, indent=2, ensure_ascii=False),
        json.dumps(value, separators=("\t,\r\n", " : ")),
    ]
    instance = json.loads(texts[0], parse_float=Decimal)
    valid = validator.is_valid(instance)
    for text in texts:
        reported = False
        for end in range(len(text) + 1):
            found = check.violation(text[:end])
            if found is not None:
                assert not valid, (SCHEMAS[which][0], text[:end], found)  # sound
                reported = True
            else:
                assert not reported, (SCHEMAS[which][0], text[:end])  # never withdrawn
        # the whole document is checked once it is complete (a number needs a character after)
        assert (check.violation(text + " ") is not None) == (not valid)
    # a sub-value that breaks a subschema certainly applying to it is reported by the time it
    # is complete: in the indented text all of them are, before the root closes
    early = [
        e for e in validator.iter_errors(instance) if e.absolute_path and certain(e.schema_path)
    ]
    if early and isinstance(instance, (dict, list)):
        assert check.violation(texts[1][:-1]) is not None, (SCHEMAS[which][0], texts[1], early)
