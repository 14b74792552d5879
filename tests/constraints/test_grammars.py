"""Every finished output of a constrained run is in the language: it parses with lark.

Four grammars (JSON, arithmetic, a SQL subset, a small programming language) over a toy model
whose vocabulary has every printable ASCII character, common multi-character tokens (so masks
must reason about tokens that span several terminals) and EOS, with random next-token logits.
"""

import warnings

import pytest
import torch

import ppl
from ppl.models import FunctionLM

WORDS = [
    "SELECT",
    " FROM",
    " WHERE",
    " AND",
    " OR",
    "select",
    " *",
    ", ",
    "true",
    "false",
    "null",
    '": ',
    '{"',
    '"}',
    "while",
    "if",
    " = ",
    " < ",
    "print",
    "let ",
    ";\n",
    "  ",
    "12",
    "3.5",
    " + ",
    " * ",
    "((",
    "))",
    "id",
    "name",
    "users",
]
VOCAB = ["<s>"] + [chr(c) for c in range(32, 127)] + ["\n"] + WORDS + ["<eos>"]
EOS = len(VOCAB) - 1
_LOGITS = torch.randn(len(VOCAB), len(VOCAB), generator=torch.Generator().manual_seed(0))
_LOGITS[:, 0] = -torch.inf  # BOS only starts
_LOGITS[:, EOS] += 1.0  # likely enough to end where the grammar lets it


def logits(prefix):
    return _LOGITS[prefix[-1]]


random_lm = FunctionLM(VOCAB, logits, eos="<eos>", bos="<s>", logits=True)

JSON = r"""
start: object | array
?value: object | array | STRING | NUMBER | "true" | "false" | "null"
object: "{" [pair ("," pair)*] "}"
pair: STRING ":" value
array: "[" [value ("," value)*] "]"
STRING: /"[a-z ]{0,8}"/
NUMBER: /-?(0|[1-9][0-9]{0,3})(\.[0-9]{1,2})?/
%ignore " "
"""

ARITHMETIC = r"""
start: sum
?sum: product | sum ("+" | "-") product
?product: atom | product ("*" | "/") atom
?atom: NUMBER | "x" | "(" sum ")" | "-" atom
NUMBER: /[0-9]{1,3}(\.[0-9])?/
%ignore " "
"""

SQL = r"""
start: "SELECT " columns " FROM " NAME where?
columns: "*" | NAME (", " NAME)*
where: " WHERE " cond ((" AND " | " OR ") cond)*
cond: NAME OP value
OP: " = " | " < " | " > "
value: NAME | NUMBER | "'" /[a-z]{1,6}/ "'"
NAME: /[a-z_]{1,8}/
NUMBER: /[0-9]{1,4}/
"""

PROGRAM = r"""
start: stmt+
?stmt: "let " NAME " = " expr ";\n"
     | "print " expr ";\n"
     | "while " expr " {\n" stmt+ "}\n"
     | "if " expr " {\n" stmt+ "}\n"
?expr: term | expr (" + " | " < ") term
?term: NAME | NUMBER | "(" expr ")"
NAME: /[a-z]{1,4}/
NUMBER: /[0-9]{1,3}/
"""

GRAMMARS = {"json": JSON, "arithmetic": ARITHMETIC, "sql": SQL, "program": PROGRAM}


@ppl.program
def constrained(grammar, max_tokens):
    return ppl.generate(random_lm.context(""), constraint=grammar, max_tokens=max_tokens)


@pytest.mark.parametrize("name", GRAMMARS)
def test_every_finished_output_parses(name):
    grammar = ppl.Grammar(GRAMMARS[name])
    finished = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ppl.InferenceWarning)  # a run may finish no particle
        for seed in range(4):
            post = ppl.smc(constrained, grammar, 40, particles=12, seed=seed)
            finished += [v for v, w in zip(post.values, post.weights) if w > 0]
    assert len(finished) >= 8, finished
    for text in finished:
        grammar.parse(text)  # raises if the text is not in the language
    assert len(set(finished)) >= 3  # the runs explore the language, not one string
