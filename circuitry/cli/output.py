"""Where the CLI's output goes: rich tables on stdout, diagnostics on stderr, JSON documents.

In a terminal, rich fits tables to its width. Piped or redirected (a file, a log, `grep`), a stream gets a
width no table reaches, so no row of a table wraps and no title breaks inside a word: each row is one line.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

from circuitry.jsonable import strict_dumps

PIPE_WIDTH = 10_000  # columns of a stream that is not a terminal (COLUMNS, when set, wins)


def console(stderr: bool = False) -> Console:
    """A rich console for stdout or stderr: no highlighting, no emoji codes (':smile:' in a user's file is
    shown as written), and `PIPE_WIDTH` columns when the stream is not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    isatty = getattr(stream, "isatty", None)
    piped = not (callable(isatty) and isatty()) and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, highlight=False, emoji=False, width=PIPE_WIDTH if piped else None)


class Output:
    """stdout for results (a rich console, or exactly one JSON document), stderr for the rest."""

    def __init__(self, json_mode: bool = False, verbose: int = 0) -> None:
        self.json_mode = json_mode
        self.verbose = verbose
        self.console = console()
        self.err = console(stderr=True)

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
