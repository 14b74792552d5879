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
    with pytest.raises(ConstraintError, match="invalid regular expression.*unclosed"):
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
