"""Helpers for testing plugins: register a throw-away plugin for the duration of a test.

    from circuitry.testing import registered_plugin

    class MyPlugin:
        @hookimpl
        def circuitry_detectors(self):
            return [Detector("mine", "...", score_fn)]

    with registered_plugin(MyPlugin(), "mine"):
        ...  # circuitry.plugins.get_manager() now includes it

The pytest fixture `circuitry_plugin` (`circuitry.pytest_plugin`, installed with circuitry) wraps this.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from circuitry.plugins import PluginError, get_manager


@contextmanager
def registered_plugin(plugin: Any, name: str, check: bool = True) -> Iterator[Any]:
    """Register `plugin` under `name` in the process-wide manager, unregister on exit.

    With `check`, a plugin whose registration hooks fail (raise, or return
    something other than a list of records) raises PluginError with the reason
    at once, instead of being skipped with a warning as in normal use.
    """
    manager = get_manager()
    manager.register(plugin, name)
    try:
        if check:
            _raise_if_failed(name)
        yield plugin
    finally:
        manager.unregister(name)


def _raise_if_failed(name: str) -> None:
    manager = get_manager()
    manager.summary()  # runs every registration hook
    info = manager.infos.get(name)
    if info is not None and info.status == "failed":
        raise PluginError(f"plugin {name!r} was skipped: {info.error}")
