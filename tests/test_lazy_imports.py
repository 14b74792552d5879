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


def test_threads_that_touch_a_deferred_module_at_once_load_it_once(tmp_path, monkeypatch):
    import threading

    (tmp_path / "slow_to_load.py").write_text(
        "import time\nLOADS = __import__('builtins').__dict__.setdefault('_ppl_loads', [])\n"
        "LOADS.append(1)\ntime.sleep(0.2)\nVALUE = 42\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    deferred = lazy_import("slow_to_load")
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(deferred.VALUE)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    import builtins

    assert seen == [42] * 8 and builtins._ppl_loads == [1]
    del builtins._ppl_loads
    sys.modules.pop("slow_to_load", None)
