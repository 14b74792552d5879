"""`lazy_import`: a module that loads on first use, for dependencies that are slow to import.

`jsonschema` takes 0.7-1.5 s to import (its optional format checkers build a parser when they
load), and every `import ppl` paid for it although only a JSON Schema constraint uses it. The
stand-in `lazy_import` returns imports the module the first time one of its attributes is read,
so the cost moves to the first schema.

The stand-in imports with `importlib.import_module`, under Python's import lock, so threads
that first touch it at once load the module once (`importlib.util.LazyLoader` does not promise
that before Python 3.12: a server's request threads could execute the module twice). It is not
put in `sys.modules`: a plain `import jsonschema` elsewhere is unaffected.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any


class _Deferred(ModuleType):
    """Stands for the module of its name; each attribute read is the real module's."""

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self.__name__), attr)


def lazy_import(name: str) -> ModuleType:
    """The module `name`, imported when an attribute of it is first read (or the module itself
    if it is imported already). One that is not installed raises ModuleNotFoundError here, as
    `import` would."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    if importlib.util.find_spec(name) is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    return _Deferred(name)
