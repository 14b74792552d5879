"""The documentation site builds: `mkdocs build --strict` on mkdocs.yml, as `make docs` runs it.

Strict mode turns every warning into a failure: a broken link between pages, a nav entry or an
API directive (`::: ppl.smc`) that names nothing, a docstring that griffe cannot parse (an
`Args:` entry for a parameter the function does not have, say). The API pages must hold the
docstrings themselves, rendered.
"""

from __future__ import annotations

import html
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ppl

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None,
    reason="mkdocs is not installed (the `docs` or `dev` extra installs it)",
)


def _text(page: Path) -> str:
    """The visible text of an HTML page without its tags and without any whitespace."""
    source = page.read_text(encoding="utf-8")
    source = re.sub(r"<(script|style)\b.*?</\1>", "", source, flags=re.S)
    return "".join(html.unescape(re.sub(r"<[^>]+>", "", source)).split())


def _summary(obj) -> str:
    """The first paragraph of a docstring as a page shows it: no backticks, no whitespace."""
    first = inspect.getdoc(obj).split("\n\n")[0]
    return "".join(first.replace("`", "").split())


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def test_site_has_home_and_guides(site: Path):
    assert (site / "index.html").is_file()
    for page in ["language", "constraints", "inference", "models", "workloads", "tutorials"]:
        assert (site / page / "index.html").is_file(), page


@pytest.mark.parametrize(
    "page, obj",
    [
        ("inference", ppl.smc),
        ("inference", ppl.Posterior),
        ("language", ppl.program),
        ("constraints", ppl.Grammar),
        ("models", ppl.models.FunctionLM),
        ("workloads", ppl.map),
    ],
    ids=["smc", "Posterior", "program", "Grammar", "FunctionLM", "map"],
)
def test_api_pages_render_docstrings(site: Path, page: str, obj):
    text = _text(site / "api" / page / "index.html")
    assert _summary(obj) in text
