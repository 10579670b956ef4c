"""Warnings for the user: silent footguns made visible (stderr, and the `warnings` list of --json).

Code anywhere calls `warn(message)`; the command that runs collects the
messages (`collecting()`), prints them on stderr and adds them to its JSON
document. Outside a command (a notebook, a library call) they go through
Python's `warnings` module as `CircuitryWarning`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_collected: ContextVar[list[str] | None] = ContextVar("circuitry_warnings", default=None)


class CircuitryWarning(UserWarning):
    """A result may not mean what it seems to (data, spec or model that is probably not what was meant)."""


def warn(message: str) -> None:
    """Report a warning once (the same text twice is shown once)."""
    collected = _collected.get()
    if collected is None:
        warnings.warn(message, CircuitryWarning, stacklevel=2)
    elif message not in collected:
        collected.append(message)


def current() -> list[str]:
    """The warnings collected so far by the enclosing `collecting()` (empty outside one)."""
    return list(_collected.get() or [])


@contextmanager
def collecting() -> Iterator[list[str]]:
    """Collect the warnings raised in the block into the list it yields."""
    found: list[str] = []
    token = _collected.set(found)
    try:
        yield found
    finally:
        _collected.reset(token)
