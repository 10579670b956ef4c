"""Where the CLI's output goes: rich tables on stdout, diagnostics on stderr, JSON documents."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

from circuitry.jsonable import strict_dumps


class Output:
    """stdout for results (a rich console, or exactly one JSON document), stderr for the rest."""

    def __init__(self, json_mode: bool = False, verbose: int = 0) -> None:
        self.json_mode = json_mode
        self.verbose = verbose
        # no emoji codes: ':smile:' in a user's file is shown as written
        self.console = Console(highlight=False, emoji=False)
        self.err = Console(stderr=True, highlight=False, emoji=False)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        self.console.print(*objects, **kwargs)

    def info(self, message: str) -> None:
        self.err.print(message, markup=False)

    def error(self, message: str) -> None:
        """One `error: ...` line on stderr per line of the message (several problems are several lines)."""
        for line in message.splitlines() or [""]:
            self.err.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)

    def warning(self, message: str) -> None:
        self.err.print(f"[bold yellow]warning:[/] {escape(message)}", soft_wrap=True)

    def json(self, document: Any) -> None:
        """Write one strict JSON document (no NaN or Infinity: `circuitry.jsonable.strict_dumps`).

        The whole text is made before anything is written, so a document with a
        non-finite number fails with an internal error (exit 3) naming its key path
        and leaves stdout empty. A mapping gets the command's warnings so far as its
        `warnings` list (`circuitry.diagnostics`)."""
        from circuitry.diagnostics import current

        if isinstance(document, dict):
            found = [*document.get("warnings", []), *current()]
            document = {**document, "warnings": list(dict.fromkeys(found))}
        sys.stdout.write(strict_dumps(document, indent=2) + "\n")
        sys.stdout.flush()
