"""The errors of `@program`: a construct it does not compile, and a source that changed.

Both name the user's file and line. They sit apart, below the rest of `ppl.compiler`, because
reading a function's source (`source`) raises them and lowering it (`lower`) does too.
"""

from __future__ import annotations

import linecache
import types


class CompileError(Exception):
    """A construct that `@program` does not support, reported with `file:line`."""

    def __init__(self, filename: str, lineno: int, message: str) -> None:
        self.filename = filename
        self.lineno = lineno
        source = linecache.getline(filename, lineno).strip()
        text = f"{filename}:{lineno}: {message}"
        if source:
            text += f"\n    {source}"
        super().__init__(text)


class SourceChangedError(CompileError):
    """The source at a function's file and line is no longer that function's.

    `@program` compiles a function from its source, read when the decorator runs. A file edited
    after its module was imported (by an editor, a notebook's auto-reload, during a long run)
    holds other code at that line: it is never compiled in the function's place.
    """

    def __init__(self, fn: types.FunctionType, lineno: int, what: str) -> None:
        filename = fn.__code__.co_filename
        Exception.__init__(
            self,
            f"the source of {fn.__qualname__} at {filename}:{lineno} changed since it was "
            f"imported: {what}. Reload the module (importlib.reload, or restart) so that "
            "@program compiles the function that runs",
        )
        self.filename = filename
        self.lineno = lineno
