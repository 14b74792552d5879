"""docs/architecture.md stays true: every module of the package is listed, and every module it
lists exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAP = ROOT / "docs" / "architecture.md"


def listed() -> set[str]:
    """The module paths in the map's tables (first column)."""
    return set(re.findall(r"^\| `(ppl/[\w/]+\.py)` \|", MAP.read_text(), flags=re.M))


def modules() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / "ppl").rglob("*.py")}


def test_every_module_is_on_the_map():
    missing = sorted(modules() - listed())
    assert not missing, f"modules missing from docs/architecture.md: {missing}"


def test_every_module_on_the_map_exists():
    gone = sorted(listed() - modules())
    assert not gone, f"docs/architecture.md lists modules that do not exist: {gone}"


def test_the_map_is_in_the_site():
    assert "architecture.md" in (ROOT / "mkdocs.yml").read_text()
