"""Constraint objects: construction errors before any model call, parsing, languages."""

import pytest

import ppl
from ppl import ConstraintError
from ppl.models import FunctionLM


def never_called(prefix):
    raise AssertionError("the model was called")


LM = FunctionLM(["a", "b", "<eos>"], never_called, eos="<eos>")


@pytest.mark.parametrize(
    "text, line, column",
    [
        ('start "a"', 1, 7),  # missing colon
        ('start: ("a"\nB: "b"', 1, 12),  # unclosed group
        ('start: a\nfoo: bar\na: "x"', 2, 6),  # undefined rule
        ('start: "a"\nstart: /b', 2, 8),  # unterminated regex
    ],
)
def test_invalid_lark_syntax_reports_line_and_column(text, line, column):
    with pytest.raises(ConstraintError, match=f"line {line}, column {column}") as info:
        ppl.Grammar(text)
    assert (info.value.line, info.value.column) == (line, column)


@pytest.mark.parametrize(
    "text, construct",
    [
        ('start: A\nA.2: "a"', "priority"),
        ('start.3: "a"', "priority"),
        ("start: /(?=a)b/", "look-around"),
        ("start: x\n%declare x", "declare"),
        ('_sep{x, sep}: x (sep x)*\nstart: _sep{"a", ","}', "templates"),
    ],
)
def test_unsupported_construct_is_named(text, construct):
    with pytest.raises(ConstraintError, match="not supported") as info:
        ppl.Grammar(text)
    assert construct in str(info.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ppl.Grammar('start: "a" start'),  # no base case
        lambda: ppl.Grammar('start: x | "(" start\nx: "b" x'),
        lambda: ppl.Grammar("start: A\nA: /[^\\s\\S]/"),  # a terminal that matches nothing
        lambda: ppl.Regex("[^\\s\\S]"),
    ],
)
def test_empty_language_is_an_error(make):
    with pytest.raises(ConstraintError, match="empty"):
        make()


def test_unsatisfiable_schema_and_bad_regex():
    with pytest.raises(ConstraintError, match="minimum"):
        ppl.JSONSchema({"type": "integer", "minimum": 5, "maximum": 3})
    with pytest.raises(ConstraintError, match=r"invalid regular expression 'a\(b' at position 1"):
        ppl.Regex("a(b")
    with pytest.raises(ConstraintError, match="line 1, column 10"):
        ppl.JSONSchema('{"type": }')
    with pytest.raises(TypeError):
        ppl.Grammar(42)


def test_errors_come_before_any_model_call():
    @ppl.program
    def uses(g):
        ctx = LM.context("a")
        return ppl.sample(ctx.next_token(g))

    with pytest.raises(ConstraintError):
        ppl.smc(uses, ppl.Grammar('start: "a" start'), particles=2, seed=0)
    assert LM.forward_calls == 0


def test_grammar_parse_and_matches():
    g = ppl.Grammar('start: NUMBER ("+" NUMBER)*\n%import common.NUMBER')
    tree = g.parse("1+23")
    assert [str(t) for t in tree.children] == ["1", "23"]
    assert g.matches("1+23") and not g.matches("1+") and not g.matches("x")
    with pytest.raises(Exception, match="Unexpected"):
        g.parse("1+")


def test_other_start_rule():
    g = ppl.Grammar('expr: NUMBER | "(" expr ")"\nNUMBER: /[0-9]+/', start="expr")
    assert g.matches("((7))") and not g.matches("(7")
    assert g.parse("(7)").data == "expr"


def test_regex_and_schema_parse():
    r = ppl.Regex(r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})")
    assert r.parse("2024-05")["month"] == "05"
    assert r.matches("2024-05") and not r.matches("2024-5")
    with pytest.raises(ValueError):
        r.parse("24-05")
    s = ppl.JSONSchema(
        {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    )
    assert s.parse('{"n":3}') == {"n": 3}
    assert s.matches('{"n":3}') and not s.matches('{"n":"3"}') and not s.matches('{"n": 3}')
    loose = ppl.JSONSchema(s.schema, whitespace=True)
    assert loose.matches('{"n": 3}') and loose.parse('{ "n" : 3 }') == {"n": 3}


# -- regular expressions: the language is the one Python's re defines -------------------------


@pytest.mark.parametrize(
    "pattern, position, reason",
    [
        ("ab\\", 2, "bad escape (end of pattern)"),  # was read as "ab"
        ("a**", 2, "multiple repeat"),  # was accepted, and .parse raised
        ("x{2}{3}", 4, "multiple repeat"),
        ("\\p{L}", 0, "bad escape \\p"),
        ("(?<n>a)", 1, "unknown extension ?<n"),
    ],
)
def test_regex_rejects_what_re_rejects(pattern, position, reason):
    with pytest.raises(ValueError) as info:
        ppl.Regex(pattern)
    assert isinstance(info.value, ConstraintError)
    assert str(info.value) == (
        f"Regex: invalid regular expression {pattern!r} at position {position}: {reason}"
    )


@pytest.mark.parametrize(
    "pattern, construct",
    [
        ("(?=a)a", "look-around"),
        ("b(?<!a)", "look-around"),
        ("(a)\\1", "back-references"),
        ("(?P<x>a)(?P=x)", "back-references"),
        ("\\ba", "word boundaries"),
        ("(?>a)", "atomic groups"),
        ("a*+a", "possessive quantifiers"),  # the engine would read it as (a*)+a
        ("(a)?(?(1)b|c)", "conditional groups"),
        ("a\\Z", "\\Z"),
        ("(?m)^a", "multi-line mode"),
        ("\\0", "octal escapes"),
        ("a^b", "^, \\A and $"),
        ("a{,3}", "position 2"),
    ],
)
def test_regex_engine_unsupported_is_named(pattern, construct):
    with pytest.raises(ConstraintError, match="not supported by the token-mask engine") as info:
        ppl.Regex(pattern)
    assert construct in str(info.value)


@pytest.mark.parametrize(
    "pattern, where",
    [
        ("[[:alpha:]]", "nested set at position 1"),  # a POSIX class for the engine
        ("[a-z&&b]", "set intersection at position 4"),
        ("(?x)[a b]", "at position 6"),  # the engine drops the space
    ],
)
def test_regex_read_differently_is_rejected(pattern, where):
    for _ in range(2):  # also once re has cached the pattern
        with pytest.raises(ConstraintError, match="ambiguous regular expression") as info:
            ppl.Regex(pattern)
        assert where in str(info.value)


def test_regex_languages_agree_with_re():
    for pattern, texts in [
        ("(?i)ab|c*?", ["AB", "aB", "", "ccc", "ca"]),
        ("(?x) a b  # a comment", ["ab", "a b"]),
        ("[]a]+\\{", ["]a{", "a{", "{"]),
        ("^a$", ["a", "a\n"]),
    ]:
        r = ppl.Regex(pattern)
        for text in texts:
            assert r.matches(text) == _parses(r, text), (pattern, text)


def _parses(r, text):
    try:
        r.parse(text)
    except ValueError:
        return False
    return True


# -- JSON schemas ------------------------------------------------------------------------------


def test_json_boolean_schemas():
    anything = ppl.JSONSchema(True)
    for text in ["1", '"a"', "null", "true", '[1,{"a":[]}]', "-2.5e3"]:
        assert anything.matches(text)
    assert not anything.matches("[1,") and not anything.matches("nul")
    assert ppl.JSONSchema("true").matches("{}")
    with pytest.raises(ConstraintError) as info:
        ppl.JSONSchema(False)
    assert str(info.value) == (
        "JSONSchema: its language is empty (the schema is unsatisfiable): the schema is false"
    )


@pytest.mark.parametrize(
    "schema, part",
    [
        ({"enum": []}, "enum at /enum is empty"),
        ({"allOf": [True, False]}, "the schema at /allOf/1 is false"),
        ({"type": []}, "type at /type is empty"),
        (
            {"type": "object", "properties": {"a/b": {"enum": []}}, "required": ["a/b"]},
            "required property 'a/b': enum at /properties/a~1b/enum is empty",
        ),
        ({"type": "array", "minItems": 3, "maxItems": 2}, "minItems (3) is greater than maxItems"),
    ],
)
def test_json_unsatisfiable_schema_names_the_part(schema, part):
    with pytest.raises(ConstraintError) as info:
        ppl.JSONSchema(schema)
    message = str(info.value)
    assert message.startswith("JSONSchema: its language is empty (the schema is unsatisfiable): ")
    assert part in message and "not supported" not in message


def test_json_integral_counts_and_unique_items_false():
    two = ppl.JSONSchema({"type": "array", "maxItems": 2.0})
    assert two.matches("[1,2]") and not two.matches("[1,2,3]")
    assert two.grammar == ppl.JSONSchema({"type": "array", "maxItems": 2}).grammar
    assert two.schema == {"type": "array", "maxItems": 2.0}  # the user's schema, unchanged
    nested = ppl.JSONSchema({"properties": {"s": {"type": "string", "minLength": 2.0}}})
    assert nested.matches('{"s":"ab"}') and not nested.matches('{"s":"a"}')
    with pytest.raises(ConstraintError, match="maxItems at /maxItems must be a non-negative"):
        ppl.JSONSchema({"type": "array", "maxItems": 2.5})
    free = ppl.JSONSchema({"type": "array", "uniqueItems": False})
    assert free.matches("[1,1]")
    assert free.grammar == ppl.JSONSchema({"type": "array"}).grammar
    assert ppl.JSONSchema({"const": {"uniqueItems": False}}).matches('{"uniqueItems":false}')


def test_json_unique_items_true_is_enforced_unless_lenient():
    schema = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}
    c = ppl.JSONSchema(schema)  # masked without it, checked by the reference
    assert c.relaxed == ["uniqueItems"]
    assert not c.matches('{"tags":[1,1]}') and c.matches('{"tags":[1,2]}')
    assert ppl.JSONSchema(schema, lenient=True).matches('{"tags":[1,1]}')  # ignored


def test_json_coerce_one_of_reads_one_of_as_any_of():
    schema = {"oneOf": [{"type": "integer"}, {"type": "number"}]}
    exact = ppl.JSONSchema(schema)
    assert exact.matches("1.5") and not exact.matches("1")  # 1 matches both branches
    as_any = ppl.JSONSchema(schema, coerce_one_of=True)
    assert as_any.matches("1.5") and as_any.matches("1")
    assert ppl.JSONSchema({**schema, "x-guidance": {"coerce_one_of": True}}).matches("1")


def test_json_lenient_ignores_what_the_mask_cannot_enforce():
    with pytest.warns(UserWarning, match="format 'colour' is not checked"):
        assert ppl.JSONSchema({"type": "string", "format": "colour"}).matches('"x"')
    assert not ppl.JSONSchema({"not": {"type": "string"}}).matches('"x"')
    assert ppl.JSONSchema({"not": {"type": "string"}}, lenient=True).matches('"x"')
    assert ppl.JSONSchema({"not": {"type": "string"}, "x-guidance": {"lenient": True}}).matches(
        '"x"'
    )


def test_json_language_as_documented():
    """The valid documents outside the language that docs/constraints.md lists."""
    ordered = ppl.JSONSchema({"properties": {"bar": {}, "foo": {}}})
    assert ordered.matches('{"bar":2,"foo":"baz"}') and not ordered.matches('{"foo":"baz","bar":2}')
    integer = ppl.JSONSchema({"type": "integer"})
    assert integer.matches("1") and not integer.matches("1.0") and not integer.matches("1e0")
    date = ppl.JSONSchema({"type": "string", "format": "date"})
    assert date.matches('"2024-05-01"') and not date.matches('"soon"')
    string = ppl.JSONSchema({"type": "string"})
    assert string.matches('"\\n\\u0001"') and not string.matches('"\\u0041"')
    assert not string.matches('"\\/"')
    ranged = ppl.JSONSchema({"type": "number", "minimum": 0})
    assert ranged.matches("2.5") and not ranged.matches("25e-1")
