"""Docs that run: every ```python block of README.md and docs/*.md runs as written.

The blocks of one file run in order in one fresh namespace, like a tutorial: a later block may
use the names an earlier one defined. Each block is compiled under the name `PATH:LINE` (LINE:
the line of its opening fence) with its lines numbered as in the Markdown file, so a traceback
names the block and the line of the page. The working directory is a temporary folder, so
blocks that write files leave nothing behind. Files whose blocks load the embedded model are
marked `slow`.
"""

from __future__ import annotations

import linecache
import re
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """The ```python blocks of a Markdown file, in order: (line of the fence, source)."""
    blocks = []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    fence = None  # (indent, marker, language, first line) of the open block
    body: list[str] = []
    for number, line in enumerate(lines, start=1):
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence = (len(match[1]), match[2], match[3].lower(), number)
                body = []
        elif match and match[2].startswith(fence[1]) and not match[3]:
            indent, _, language, start = fence
            if language in ("python", "py"):
                blocks.append((start, "".join(text[indent:] for text in body)))
            fence = None
        else:
            body.append(line)
    assert fence is None, f"{path}:{fence[3]}: unclosed code fence"
    return blocks


def _param(path: Path):
    slow = any("models.load" in source for _, source in python_blocks(path))
    name = path.relative_to(ROOT).as_posix()
    return pytest.param(path, id=name, marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("path", [_param(p) for p in PAGES])
def test_python_blocks_run(path: Path, tmp_path, monkeypatch):
    blocks = python_blocks(path)
    if not blocks:
        pytest.skip("no python blocks")
    monkeypatch.chdir(tmp_path)
    name = path.relative_to(ROOT).as_posix()
    namespace = {"__name__": f"docs_{path.stem}"}
    for start, source in blocks:
        filename = f"{name}:{start}"
        # The linecache entry (kept: pytest reads it when it reports a failure) shows the lines
        # in tracebacks and gives @ppl.program the source of the functions a block defines.
        lines = ["\n"] * start + source.splitlines(True)
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
        exec(_shifted(compile(source, filename, "exec"), start), namespace)


def _shifted(code: types.CodeType, lines: int) -> types.CodeType:
    """`code` with every line number moved down by `lines` (nested functions included)."""
    consts = tuple(
        _shifted(c, lines) if isinstance(c, types.CodeType) else c for c in code.co_consts
    )
    return code.replace(co_firstlineno=code.co_firstlineno + lines, co_consts=consts)
