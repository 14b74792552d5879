"""`import ppl` leaves slow optional work for first use (see `ppl.lazy`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ppl.lazy import lazy_import


def test_import_ppl_loads_no_json_schema_validator_until_a_schema_is_used():
    code = (
        "import sys, ppl\n"
        "print('jsonschema._format' in sys.modules)\n"
        "ppl.JSONSchema({'type': 'object', 'properties': {'a': {'format': 'iri'}}})\n"
        "print('jsonschema._format' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    assert out == ["False", "True"]


def test_lazy_import_gives_the_module_and_refuses_a_missing_one():
    assert lazy_import("json").dumps([1]) == "[1]"  # already imported: the module itself
    with pytest.raises(ModuleNotFoundError, match="no_such_module_here"):
        lazy_import("no_such_module_here")
