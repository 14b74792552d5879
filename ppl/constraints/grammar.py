"""Constraint objects: the shared base, and Lark grammars.

A constraint is a set of strings L. `ctx.next_token(constraint=c)` restricts the text a context
adds after its prompt to prefixes of strings in L, and lets the sequence end (EOS) exactly when
its text is in L. Every kind compiles to an llguidance grammar, which computes the token masks;
`parse(text)` gives users the structure of a completed output.

This module holds what every kind shares (`Constraint`, `ConstraintError`, the checks of an
engine grammar) and `Grammar`; `Regex` (`ppl.constraints.regex`) and `JSONSchema`
(`ppl.constraints.json_schema`) each have a module of their own.
"""

from __future__ import annotations

import re
import weakref
from typing import Any

import lark
import llguidance

from ppl.constraints.masks import GrammarStates, model_masks
from ppl.constraints.reference import GrammarReference, Reference, Verdict, report_leak


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
            message = llg_message(messages[0])
            if message.startswith("Unsatisfiable schema"):
                found = self._empty_part() or message.removeprefix("Unsatisfiable schema: ")
                raise ConstraintError(f"{type(self).__name__}: {EMPTY_SCHEMA}: {found}")
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
                f"{type(self).__name__}: {EMPTY_SCHEMA}: {found}"
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


# what an unsatisfiable schema is called (`JSONSchema`'s checks, and `_check` on the engine's word)
EMPTY_SCHEMA = "its language is empty (the schema is unsatisfiable)"


# -- checks ------------------------------------------------------------------------------------


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else message


# names of constructs in the mask engine's messages, as Lark's documentation calls them
_CONSTRUCTS = {"params not supported": "rule templates (parameters) not supported"}


def _lark_message(e: Exception) -> str:
    first = _first_line(str(e))
    return re.sub(r",? at line \d+,? column \d+\.?", "", first).strip()


def llg_message(message: str) -> str:
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
