"""Constraint objects: Lark grammars, regular expressions and JSON schemas.

A constraint is a set of strings L. `ctx.next_token(constraint=c)` restricts the text a context
adds after its prompt to prefixes of strings in L, and lets the sequence end (EOS) exactly when
its text is in L. All three kinds compile to an llguidance grammar, which computes the token
masks; `parse(text)` gives users the structure of a completed output.
"""

from __future__ import annotations

import json
import re
import weakref
from typing import Any

import lark
import llguidance

from ppl.constraints.masks import GrammarStates, model_masks


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

    def _check(self) -> None:
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(self.grammar)
        if is_error:
            line, column = _llg_location(messages[0]) if isinstance(self, Grammar) else (None, None)
            message = _llg_message(messages[0])
            if "regex parse error" in message and "not supported" not in message:
                what = "invalid regular expression"
            else:
                what = "not supported by the token-mask engine"
            for word, construct in _CONSTRUCTS.items():
                message = message.replace(word, construct)
            raise ConstraintError(f"{type(self).__name__}: {what}: {message}", line, column)
        self._states: weakref.WeakKeyDictionary[Any, GrammarStates] = weakref.WeakKeyDictionary()
        if _language_is_empty(self.grammar):
            raise ConstraintError(
                f"{type(self).__name__}: its language is empty: no string matches"
            )

    def states(self, lm: Any) -> GrammarStates:
        """The grammar states of this constraint on `lm` (made once per model)."""
        found = self._states.get(lm)
        if found is None:
            found = self._states[lm] = GrammarStates(model_masks(lm), self.grammar)
        return found

    def matches(self, text: str) -> bool:
        """Is `text` a complete string of the language (by the mask engine)?"""
        m = llguidance.LLMatcher(_byte_tokenizer(), self.grammar, log_level=0)
        ok = m.consume_tokens(list(text.encode()))
        return ok and not m.is_error() and m.is_accepting()

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
        if not _productive(self._lark, start):
            raise ConstraintError(
                f"Grammar: its language is empty: rule {start!r} derives no finite string"
            )
        self._check()

    def parse(self, text: str) -> lark.Tree:
        """The Lark parse tree of `text`; raises `lark.exceptions.LarkError` if it is not in L."""
        return self._lark.parse(text)


class Regex(Constraint):
    """Strings that fully match a regular expression (Rust `regex` syntax: no look-around or
    back-references; ASCII `\\d`, `\\w`, `\\s` are safest). `parse` returns the `re.Match`.
    """

    def __init__(self, pattern: str) -> None:
        if not isinstance(pattern, str):
            raise TypeError(f"Regex takes a pattern str, got {type(pattern).__name__}")
        self.source = pattern
        try:
            self._re: re.Pattern | None = re.compile(pattern)
        except re.error:
            self._re = None  # valid for the mask engine maybe; it reports below
        self.grammar = llguidance.LLMatcher.grammar_from_regex(pattern)
        self._check()

    def parse(self, text: str) -> re.Match:
        """The match of the whole of `text`; raises `ValueError` if it does not match."""
        if self._re is None:
            raise ValueError(f"Python's re cannot compile {self.source!r}")
        m = self._re.fullmatch(text)
        if m is None:
            raise ValueError(f"{text!r} does not match /{self.source}/")
        return m


class JSONSchema(Constraint):
    """JSON documents valid under a JSON schema (a dict or its JSON text).

    Without `whitespace=True` the documents are compact (no whitespace between tokens), which
    is what most uses want and keeps masks small. `parse` returns the decoded Python value.
    """

    def __init__(self, schema: dict | str, *, whitespace: bool = False) -> None:
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                raise ConstraintError(
                    f"JSONSchema: invalid JSON: {e.msg}", e.lineno, e.colno
                ) from None
        if not isinstance(schema, dict):
            raise TypeError(f"JSONSchema takes a dict or JSON text, got {type(schema).__name__}")
        self.schema = schema
        self.source = json.dumps(schema)
        try:
            self.grammar = llguidance.LLMatcher.grammar_from_json_schema(
                schema, overrides={"whitespace_flexible": whitespace}
            )
        except ValueError as e:
            raise ConstraintError(f"JSONSchema: {e}") from None
        self._check()

    def parse(self, text: str) -> Any:
        """The decoded JSON value; raises `json.JSONDecodeError` if `text` is not JSON."""
        return json.loads(text)


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
