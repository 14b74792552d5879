"""Where a test's own lines are: error messages name the user's `file:line`, and tests check it."""

from __future__ import annotations


def line_of(path: str, marker: str) -> str:
    """`path:line` of the line of `path` that ends with the comment `# marker`."""
    with open(path) as f:
        for number, text in enumerate(f, 1):
            if text.rstrip().endswith(f"# {marker}"):
                return f"{path}:{number}"
    raise AssertionError(f"no line of {path} ends with # {marker}")
