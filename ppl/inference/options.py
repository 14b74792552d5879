"""Keyword options of the public entry points: a misspelt one is named, with the close names.

`ppl.smc(program, *args, particles=..., **kwargs)` passes the keywords that are not its own
options on to the program. A misspelt option (`particle=4`) therefore used to reach the program
and fail there as "p(): got an unexpected keyword argument 'particle'". `checks_options` wraps
an entry point so that a keyword that is neither one of its options nor a keyword parameter of
the program raises, before anything runs:

    TypeError: ppl.smc() has no option 'particle'; did you mean 'particles'?

A keyword the program takes (by name or through its own `**kwargs`) still goes to the program,
as before. The wrapper keeps the entry point's name, docstring and signature
(`inspect.signature(ppl.smc)` shows the real parameters, which `ppl.map` reads).
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_BY_NAME = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def suggestion(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to `name` (a misspelling of it), or None if none is close."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return close[0] if close else None


def keyword_names(signature: inspect.Signature) -> list[str]:
    """The parameters of `signature` that a call may name as keywords, in order."""
    return [n for n, p in signature.parameters.items() if p.kind in _BY_NAME]


def takes_any_keyword(signature: inspect.Signature) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())


def program_signature(program: Any) -> inspect.Signature | None:
    """The call signature of a program (a compiled `Program` or a plain callable), or None."""
    code = getattr(program, "code", None)
    signature = getattr(code, "signature", None)
    if isinstance(signature, inspect.Signature):
        return signature
    if not callable(program):
        return None
    try:
        return inspect.signature(program)
    except (TypeError, ValueError):
        return None


def unknown_option(
    who: str,
    name: str,
    options: Sequence[str],
    program: str | None = None,
    program_keywords: Sequence[str] = (),
) -> TypeError:
    """The error for keyword `name` given to `who` (e.g. "ppl.smc"), whose options are
    `options`; when other keywords go to a program, `program` names it and `program_keywords`
    are the keywords it takes.

    "ppl.smc() has no option 'particle'; did you mean 'particles'?", or with no close name, the
    options (and the program's keywords) listed.
    """
    close = suggestion(name, [*options, *program_keywords])
    if close is not None and close in options:
        return TypeError(f"{who}() has no option {name!r}; did you mean {close!r}?")
    message = f"{who}() has no option {name!r}"
    if program is not None:
        message += f" and {program}() no parameter of that name"
    if close is not None:
        return TypeError(f"{message}; did you mean {close!r}?")
    message += f"; its options are {', '.join(options)}"
    if program is not None and program_keywords:
        message += f"; {program}() takes {', '.join(program_keywords)}"
    return TypeError(message)


def checks_options(fn: F) -> F:
    """`fn` that raises `unknown_option`'s TypeError for a keyword it cannot take.

    `fn` is an entry point `(program, *args, <options>, **kwargs)`, whose `**kwargs` go to the
    program, or a function without `**kwargs`. A keyword that is not a parameter of `fn` is
    an error unless `fn` passes it on to a program that takes it.
    """
    signature = inspect.signature(fn)
    params = signature.parameters
    options = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    if not options:
        options = keyword_names(signature)
    passes_on = takes_any_keyword(signature)
    first = next(iter(params), None)  # the program, for entry points that pass keywords on
    who = f"ppl.{fn.__name__}"

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        for name in kwargs:
            if name in params:
                continue
            if not passes_on:
                raise unknown_option(who, name, options) from None
            program = args[0] if args else kwargs.get(first) if first is not None else None
            sig = program_signature(program)
            if sig is None or takes_any_keyword(sig):
                continue  # the program may take it: its own call says if not
            program_keywords = keyword_names(sig)
            if name in program_keywords:
                continue
            label = getattr(program, "__qualname__", None) or type(program).__name__
            raise unknown_option(who, name, options, label, program_keywords) from None
        return fn(*args, **kwargs)

    return checked  # type: ignore[return-value]
