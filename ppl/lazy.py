"""`lazy_import`: a module that loads on first use, for dependencies that are slow to import.

`jsonschema` takes 0.7-1.5 s to import (its optional format checkers build a parser when they
load), and every `import ppl` paid for it although only a JSON Schema constraint uses it. A
module made by `lazy_import` is registered at once and executed the first time one of its
attributes is read (`importlib.util.LazyLoader`), so the cost moves to the first schema.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_import(name: str) -> ModuleType:
    """The module `name`, loaded when an attribute of it is first read (or at once if it already
    is). A module that is not installed raises ModuleNotFoundError here, as `import` would."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
