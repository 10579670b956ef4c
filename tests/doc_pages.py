"""Running a documentation page in a test: its fenced blocks, and every python block in order in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def blocks(doc: Path, kind: str) -> list[str]:
    """The bodies of the page's ```KIND fenced blocks, in order."""
    return re.findall(rf"^```{kind}\n(.*?)^```", doc.read_text(), flags=re.S | re.M)


def run_python_blocks(doc: Path, name: str) -> dict:
    """Execute every python block of the page, in order, in one namespace (from the repository's root: the
    caller chdirs there); the namespace afterwards."""
    namespace: dict = {"__name__": name}
    for i, block in enumerate(blocks(doc, "python")):
        exec(compile(block, f"{doc.name}[block {i}]", "exec"), namespace)  # noqa: S102 - the docs' own examples
    return namespace
