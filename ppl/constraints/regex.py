"""`Regex`: the strings that fully match a regular expression, as a constraint.

The pattern is read twice: by Python's `re` (the reference, and `parse`) and by the token-mask
engine (llguidance). A pattern the two would read differently is refused with a
`ConstraintError` that names the construct, so the language is the one `re.fullmatch` defines.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import llguidance

from ppl.constraints.grammar import Constraint, ConstraintError, llg_message
from ppl.constraints.reference import RegexReference


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
    detail = errors[0] if errors else llg_message(message)
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
