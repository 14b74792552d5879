"""Every finished text is checked by a reference that is not the mask engine.

`jsonschema` for JSON schemas (also the keywords the engine cannot mask, which are conditioned
on), `re.fullmatch` for regular expressions, Lark for grammars. Outputs are held to the
`jsonschema` library itself, and exactness to enumeration on a toy model.
"""

import decimal
import json
import math
import warnings

import jsonschema
import numpy as np
import pytest

import ppl
from ppl import program
from ppl.constraints.grammar import ConstraintError
from ppl.constraints.reference import MaskLeakWarning
from ppl.models import FunctionLM

# -- the reproducer: an escaped quote through a negated class ----------------------------------

NO_QUOTE = {"type": "string", "pattern": '^[^,"]+$'}


def test_an_escaped_quote_through_a_negated_class_is_caught():
    c = ppl.JSONSchema(NO_QUOTE)
    verdict = c.matches('"a\\"b"')  # the string a"b holds the '"' the pattern forbids
    assert not verdict
    assert verdict.language and not verdict.reference  # the engine's hole, the reference's no
    assert "pattern" in verdict.reason
    assert c.matches('"ab"') and c.matches('"ab"') == True  # noqa: E712 - compares as a bool


QUOTES = FunctionLM(
    ["<s>", '"', "a", '\\"', "\\", ",", "b", "<eos>"],
    lambda prefix: [0.0, 0.3, 0.2, 0.25, 0.05, 0.05, 0.05, 0.1],
    eos="<eos>",
    bos="<s>",
)


def test_a_mask_leak_gets_weight_zero_is_counted_and_warned_once():
    c = ppl.JSONSchema(NO_QUOTE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        post = ppl.smc(
            ppl.generate, QUOTES.context(""), constraint=c, max_tokens=8, particles=64, seed=0
        )
    leaks = [w for w in caught if issubclass(w.category, MaskLeakWarning)]
    assert len(leaks) == 1 and "pattern" in str(leaks[0].message)
    assert post.mask_leaks > 0 and post.diagnostics["mask_leaks"] == post.mask_leaks
    assert "mask leaks" in post.summary()
    finished = [v for v, w in zip(post.values, post.weights) if w > 0]
    assert finished
    for text in finished:
        jsonschema.validate(json.loads(text), NO_QUOTE)


# -- keywords the engine cannot mask: relaxed in the mask, enforced by the reference -----------

JSON_CHARS = list('{}[]",:012ab') + ["true", "false", "null", '"a"', '"b"', '"c"']
JSON_LM = FunctionLM(
    ["<s>", *JSON_CHARS, "<eos>"],
    lambda prefix: [0.0] + [1.0] * len(JSON_CHARS) + [0.5],
    eos="<eos>",
    bos="<s>",
)

KEYWORDS = {
    "not": {"type": "integer", "not": {"enum": [0, 1]}},
    "uniqueItems": {"type": "array", "items": {"enum": [0, 1, 2]}, "uniqueItems": True},
    "dependentRequired": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "additionalProperties": False,
        "dependentRequired": {"a": ["b"]},
    },
    "dependentSchemas": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "additionalProperties": False,
        "dependentSchemas": {"a": {"properties": {"b": {"const": 2}}, "required": ["b"]}},
    },
    "dependencies (draft 7)": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "additionalProperties": False,
        "dependencies": {"a": ["b"]},
    },
    "if/then/else": {
        "type": "integer",
        "if": {"minimum": 10},
        "then": {"multipleOf": 2},
        "else": {"maximum": 1},
    },
    "contains": {
        "type": "array",
        "items": {"type": "integer", "maximum": 2},
        "contains": {"const": 1},
        "minContains": 1,
        "maxContains": 2,
    },
    "propertyNames": {
        "type": "object",
        "additionalProperties": {"type": "integer"},
        "propertyNames": {"maxLength": 1},
    },
    "unevaluatedProperties": {
        "type": "object",
        "allOf": [{"properties": {"a": {"type": "integer"}}}],
        "unevaluatedProperties": False,
    },
    "unevaluatedItems": {
        "type": "array",
        "prefixItems": [{"type": "integer"}],
        "unevaluatedItems": False,
    },
    "minProperties over optional properties": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "minProperties": 1,
    },
    "oneOf, not exclusive": {"oneOf": [{"type": "integer"}, {"minimum": 1}]},
    "format unknown to the engine": {"type": "string", "format": "uri-reference"},
}


def _validator(schema):
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@pytest.mark.parametrize("keyword", KEYWORDS)
def test_each_keyword_is_accepted_and_every_output_is_valid(keyword):
    schema = KEYWORDS[keyword]
    c = ppl.JSONSchema(schema)
    assert c.relaxed, "the engine masks this keyword: it no longer tests the relaxation"
    post = ppl.smc(
        ppl.generate, JSON_LM.context(""), constraint=c, max_tokens=20, particles=64, seed=1
    )
    finished = [v for v, w in zip(post.values, post.weights) if w > 0]
    assert finished, post.summary()
    validator = _validator(schema)
    for text in finished:
        value = json.loads(text, parse_float=decimal.Decimal)
        assert validator.is_valid(value), (text, keyword)
    assert post.mask_leaks == 0  # what the mask lets through here is conditioned, not leaked


def test_a_relaxed_keyword_is_not_a_leak_but_an_engine_hole_is():
    c = ppl.JSONSchema(KEYWORDS["uniqueItems"])
    assert c.relaxed == ["uniqueItems"]
    assert not c.reference.leak("[1,1]")  # the mask was not meant to refuse it
    assert c.check("[1,1]") is not None and c.check("[1,2]") is None


def test_lenient_and_coerce_one_of_keep_the_larger_language():
    lenient = ppl.JSONSchema(KEYWORDS["uniqueItems"], lenient=True)
    assert lenient.matches("[1,1]")
    coerced = ppl.JSONSchema(KEYWORDS["oneOf, not exclusive"], coerce_one_of=True)
    assert coerced.matches("2")  # both branches: anyOf takes it, oneOf would not
    assert not ppl.JSONSchema(KEYWORDS["oneOf, not exclusive"]).matches("2")


def test_numbers_are_read_as_decimals():
    c = ppl.JSONSchema({"type": "number", "multipleOf": 0.01})
    assert c.matches("0.07") and c.matches("1.1")  # 0.07 / 0.01 is 7.000000000000001 in floats
    assert not c.matches("0.071")
    huge = ppl.JSONSchema({"type": "number"})
    assert huge.check("4e06164789704840565162") is None  # beyond Decimal's exponents: no crash


def test_unreferenced_defs_are_not_checked():
    c = ppl.JSONSchema({"$defs": {"u": {"type": "array", "uniqueItems": True}}, "type": "integer"})
    assert c.matches("3")


def test_an_unknown_format_is_an_annotation_with_a_warning():
    with pytest.warns(UserWarning, match="format 'x-colour' is not checked"):
        c = ppl.JSONSchema({"type": "string", "format": "x-colour"})
    assert c.matches('"anything"')


def test_a_format_the_engine_lacks_is_enforced_by_the_reference():
    c = ppl.JSONSchema({"type": "string", "format": "uri-reference"})
    assert c.relaxed == ["format uri-reference"]
    assert c.matches('"a/b"') and not c.matches('"a b"')


@pytest.mark.parametrize(
    "schema, words",
    [
        ({"type": "strin"}, "invalid schema: at /type"),
        ({"type": "array", "minItems": -1}, "minItems at /minItems must be a non-negative"),
        (
            {"$ref": "http://example.com/x.json"},
            "a schema named by $ref or $schema that is not given",
        ),
        ({"not": {}}, "not at /not excludes every value"),
        ({"not": True}, "its language is empty"),
        ({"oneOf": [True, True, False]}, "two branches that take every value"),
    ],
)
def test_what_stays_refused_says_why(schema, words):
    with pytest.raises(ConstraintError, match="JSONSchema: ") as info:
        ppl.JSONSchema(schema)
    assert words in str(info.value)


def test_a_pattern_only_the_engine_reads_is_left_to_the_mask_with_a_warning():
    with pytest.warns(UserWarning, match="enforced by the mask engine alone"):
        c = ppl.JSONSchema({"type": "string", "pattern": "^\\p{Letter}+$"})
    assert c.matches('"abc"') and not c.matches('"a1"')


def test_regex_and_grammar_references():
    r = ppl.Regex("[0-9]+")
    assert r.matches("2025") and not r.matches("20x")
    assert r.check("20x") == "re.fullmatch of /[0-9]+/ fails"
    g = ppl.Grammar('start: "(" start ")" | "x"')
    assert g.matches("((x))") and g.check("((x)") is not None


# -- exactness: the posterior is the model conditioned on the whole schema ---------------------

ARRAY_VOCAB = ["<s>", "[", "]", "0", "1", ",", "<eos>"]
ARRAY_TABLE = {
    "<s>": [0.0, 0.9, 0.02, 0.02, 0.02, 0.02, 0.02],
    "[": [0.0, 0.05, 0.2, 0.35, 0.3, 0.05, 0.05],
    "]": [0.0, 0.05, 0.05, 0.05, 0.05, 0.1, 0.7],
    "0": [0.0, 0.05, 0.3, 0.1, 0.1, 0.4, 0.05],
    "1": [0.0, 0.05, 0.3, 0.1, 0.1, 0.4, 0.05],
    ",": [0.0, 0.1, 0.05, 0.4, 0.4, 0.03, 0.02],
}
ARRAY_LM = FunctionLM(
    ARRAY_VOCAB,
    lambda prefix: ARRAY_TABLE[ARRAY_VOCAB[prefix[-1]]],
    eos="<eos>",
    bos="<s>",
)
ARRAY_MAX = 7
EXACT_SCHEMAS = {
    "uniqueItems": {"type": "array", "items": {"enum": [0, 1]}, "uniqueItems": True},
    "not contains": {"type": "array", "items": {"enum": [0, 1]}, "not": {"contains": {"const": 0}}},
}


def _exact(schema):
    """Normalised probability of each finished text of at most ARRAY_MAX draws that the schema
    accepts, by enumeration of the toy model."""
    validator = _validator(schema)
    mass = {}

    def walk(last, text, prob, depth):
        if depth == ARRAY_MAX:
            return
        for tid, p in enumerate(ARRAY_TABLE[last]):
            if p == 0:
                continue
            tok = ARRAY_VOCAB[tid]
            if tok == "<eos>":
                try:
                    ok = validator.is_valid(json.loads(text))
                except ValueError:
                    ok = False
                if ok:
                    mass[text] = mass.get(text, 0.0) + prob * p
            else:
                walk(tok, text + tok, prob * p, depth + 1)

    walk("<s>", "", 1.0, 0)
    z = math.fsum(mass.values())
    return {t: m / z for t, m in mass.items()}


@pytest.mark.statistical
@pytest.mark.parametrize("name", EXACT_SCHEMAS)
def test_a_conditioned_keyword_gives_the_exact_conditional(name):
    schema = EXACT_SCHEMAS[name]
    c = ppl.JSONSchema(schema)
    assert c.relaxed

    @program
    def arrays():
        return ppl.generate(ARRAY_LM.context(""), constraint=c, max_tokens=ARRAY_MAX)

    p_exact = _exact(schema)
    assert len(p_exact) >= 3
    post = ppl.smc(arrays, particles=4000, ess_threshold=0.5, seed=3)
    dist = post.distribution()
    assert set(dist) <= set(p_exact)
    tv = 0.5 * sum(abs(dist.get(x, 0.0) - p) for x, p in p_exact.items())
    # per-outcome standard error from the run's ESS; TV below its mean plus 4 sd of the sum
    se = np.array([math.sqrt(p * (1 - p) / post.final_ess) for p in p_exact.values()])
    bound = 0.5 * (
        math.sqrt(2 / math.pi) * se.sum() + 4 * math.sqrt((1 - 2 / math.pi) * (se**2).sum())
    )
    assert tv < bound, (tv, bound, dist, p_exact)


def test_a_broken_rule_kills_the_particle_as_the_value_closes():
    c = ppl.JSONSchema(EXACT_SCHEMAS["uniqueItems"])
    assert c.prefix_violation("[1,0,1,") is not None  # the repeated item is complete
    assert c.prefix_violation("[1,0,") is None and c.prefix_violation("[1,0,1") is None
    post = ppl.smc(
        ppl.generate,
        ARRAY_LM.context(""),
        constraint=c,
        max_tokens=ARRAY_MAX,
        particles=200,
        seed=0,
        record=True,
    )
    checked = 0
    for step in post.history:
        for text, lw in zip(step["texts"], step["log_weights"]):
            if lw is not None:  # living: none has broken the rule (a duplicate is complete)
                assert c.prefix_violation(text) is None, (step["step"], text)
                checked += text.count(",") >= 2  # three items or more: a duplicate was possible
    assert checked > 50


def test_a_repeated_key_is_outside_the_language_and_not_a_leak():
    c = ppl.JSONSchema({"type": "object", "additionalProperties": {"type": "integer"}})
    assert "repeated" in c.check('{"a":1,"a":2}')
    assert not c.reference.leak('{"a":1,"a":2}')  # the engine may repeat such a name
    assert ppl.MaskLeakWarning is MaskLeakWarning


@pytest.mark.parametrize(
    "schema, relaxed, valid, invalid",
    [
        (  # the engine cannot read the metaschema ($dynamicAnchor); the reference can
            {"$ref": "https://json-schema.org/draft/2020-12/schema"},
            ["$ref to a metaschema"],
            '{"type":"string"}',
            '{"type":12}',
        ),
        (  # a $ref to a $dynamicAnchor in the same resource, as to an $anchor
            {
                "$id": "https://example.com/root",
                "type": "array",
                "items": {"$ref": "#items"},
                "$defs": {"foo": {"$dynamicAnchor": "items", "type": "string"}},
            },
            ["$dynamicAnchor", "$ref to #items"],
            '["a"]',
            "[1]",
        ),
        ({"type": "integer", "multipleOf": 0.123456789}, ["multipleOf"], "0", "1"),
    ],
)
def test_what_the_engine_cannot_read_is_left_to_the_reference(schema, relaxed, valid, invalid):
    c = ppl.JSONSchema(schema)
    assert c.relaxed == relaxed
    assert c.matches(valid)
    verdict = c.matches(invalid)
    assert verdict.language and not verdict.reference


def test_multiple_of_is_exact_for_numbers_of_any_size():
    assert ppl.JSONSchema({"multipleOf": 0.123456789}).check("1e308") is not None  # no crash
    sevens = ppl.JSONSchema({"multipleOf": 7})
    assert sevens.check("7e999999999") is None and sevens.check("3e999999999") is not None
    assert ppl.JSONSchema({"multipleOf": 0.25}).check("1e99999") is None
