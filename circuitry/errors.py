"""Error types of circuitry and the exit codes the CLI maps them to.

`UsageError` (exit 2) is anything the user can fix: a bad path, a malformed
file, an unknown name. `CircuitryError` itself (exit 3) is an internal or
plugin failure.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CircuitryError(Exception):
    """Base class; an internal or plugin error (exit code 3)."""

    exit_code = 3


class UsageError(CircuitryError):
    """Bad input from the user: arguments, files, names (exit code 2)."""

    exit_code = 2


class ModelLoadError(UsageError):
    """A model reference or file that cannot be loaded."""


class InputError(UsageError):
    """Tokens or other run inputs that do not fit the model."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix for a misspelled name, or ''."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> str:
    """Message for an unknown name: what was given, a suggestion, the valid choices."""
    choices = sorted(choices)
    return (
        f"unknown {kind} {name!r}{did_you_mean(name, choices)}; "
        f"valid choices: {', '.join(choices) if choices else '(none)'}"
    )
