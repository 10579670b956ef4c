"""Helpers for testing plugins: register a throw-away plugin for the duration of a test.

    from circuitry.testing import registered_plugin

    class MyPlugin:
        @hookimpl
        def circuitry_detectors(self):
            return [Detector("mine", "...", score_fn)]

    with registered_plugin(MyPlugin(), "mine"):
        ...  # circuitry.plugins.get_manager() now includes it

The pytest fixture `circuitry_plugin` (tests/conftest.py) wraps this.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from circuitry.plugins import get_manager


@contextmanager
def registered_plugin(plugin: Any, name: str) -> Iterator[Any]:
    """Register `plugin` under `name` in the process-wide manager, unregister on exit."""
    manager = get_manager()
    manager.register(plugin, name)
    try:
        yield plugin
    finally:
        manager.unregister(name)
