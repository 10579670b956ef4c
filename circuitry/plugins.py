"""Plugin hook specifications and the plugin manager.

Plugins are found through the `circuitry` entry-point group (the standard
plugins are registered there exactly like third-party ones), loaded one at a
time: a plugin that fails to import is reported and skipped unless
CIRCUITRY_STRICT_PLUGINS=1. `-p no:NAME` on the command line or
CIRCUITRY_DISABLE_PLUGINS=NAME,NAME disables plugins. Registration hooks
return lists of the frozen records in `circuitry.records`; two records of the
same kind and name are an error that names both plugins.
"""

from __future__ import annotations

import importlib.metadata as md
import os
from dataclasses import dataclass, field
from typing import Any

import pluggy

from circuitry.errors import CircuitryError, UsageError, unknown_name
from circuitry.records import (
    RECORD_HOOKS,
    Dataset,
    Detector,
    Intervention,
    Metric,
    ModelSource,
    Task,
    record_key,
)

GROUP = "circuitry"
hookspec = pluggy.HookspecMarker(GROUP)
hookimpl = pluggy.HookimplMarker(GROUP)


class PluginError(CircuitryError):
    """A plugin failed to load or registered something invalid (exit code 3)."""


class HookSpecs:
    """The hooks a plugin can implement (all optional)."""

    @hookspec
    def circuitry_detectors(self) -> list[Detector]:
        """Detectors that score heads or pairs of heads."""

    @hookspec
    def circuitry_datasets(self) -> list[Dataset]:
        """Data generators."""

    @hookspec
    def circuitry_model_sources(self) -> list[ModelSource]:
        """Model sources (reference schemes such as `builtin:`)."""

    @hookspec
    def circuitry_interventions(self) -> list[Intervention]:
        """Interventions (ablations, patching)."""

    @hookspec
    def circuitry_metrics(self) -> list[Metric]:
        """Metrics computed from a run."""

    @hookspec
    def circuitry_tasks(self) -> list[Task]:
        """Tasks for circuit discovery (data + metric)."""

    @hookspec
    def circuitry_report_header(self, spec: Any, model: Any) -> list[str] | str | None:
        """Lines to show above a verification report."""

    @hookspec
    def circuitry_verify_finished(self, report: Any) -> None:
        """Called with the finished VerificationReport."""


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str
    module: str
    status: str  # "loaded", "failed", "disabled"
    error: str = ""
    registers: dict[str, list[str]] = field(default_factory=dict)


def _env_list(var: str) -> set[str]:
    return {x.strip() for x in os.environ.get(var, "").split(",") if x.strip()}


class PluginManager:
    """Loads plugins and collects their records, attributed to the plugin that made them."""

    def __init__(self, disabled: set[str] | None = None, strict: bool | None = None,
                 entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(HookSpecs)
        self.disabled = set(disabled or ()) | _env_list("CIRCUITRY_DISABLE_PLUGINS")
        self.strict = os.environ.get("CIRCUITRY_STRICT_PLUGINS", "") not in ("", "0") if strict is None else strict
        self.infos: dict[str, PluginInfo] = {}
        self._records: dict[str, dict[str, Any]] = {}
        self._owners: dict[str, dict[str, str]] = {}
        if entry_points:
            self._load_entry_points()

    # loading -------------------------------------------------------------
    def _load_entry_points(self) -> None:
        for ep in sorted(md.entry_points(group=GROUP), key=lambda e: e.name):
            if ep.name in self.infos:
                continue
            version = ep.dist.version if ep.dist is not None else "?"
            if ep.name in self.disabled:
                self.infos[ep.name] = PluginInfo(ep.name, version, ep.value, "disabled")
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is reported, not fatal
                msg = f"{type(exc).__name__}: {exc}"
                if self.strict:
                    raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to import: {msg}") from exc
                self.infos[ep.name] = PluginInfo(ep.name, version, ep.value, "failed", msg)
                continue
            self.register(plugin, ep.name, version=version)

    def register(self, plugin: Any, name: str, version: str = "") -> None:
        """Register a plugin object (a module or an object with hookimpls)."""
        if name in self.disabled:
            self.infos[name] = PluginInfo(name, version, getattr(plugin, "__name__", repr(plugin)), "disabled")
            return
        if self.pm.has_plugin(name):
            raise PluginError(f"a plugin named {name!r} is already registered")
        self.pm.register(plugin, name=name)
        module = getattr(plugin, "__name__", type(plugin).__name__)
        self.infos[name] = PluginInfo(name, version or getattr(plugin, "__version__", ""), module, "loaded")
        self._records.clear()

    def unregister(self, name: str) -> None:
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin, name=name)
        self.infos.pop(name, None)
        self._records.clear()

    @property
    def failed(self) -> list[PluginInfo]:
        return [i for i in self.infos.values() if i.status == "failed"]

    # records ---------------------------------------------------------------
    def records(self, hook: str) -> dict[str, Any]:
        """name -> record for one registration hook, checked for type and clashes."""
        if hook in self._records:
            return self._records[hook]
        expected = RECORD_HOOKS[hook]
        found: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            plugin = impl.plugin_name
            try:
                result = impl.function() or []
            except Exception as exc:  # noqa: BLE001
                raise PluginError(f"plugin {plugin!r}: {hook}() raised {type(exc).__name__}: {exc}") from exc
            for rec in result:
                if not isinstance(rec, expected):
                    raise PluginError(f"plugin {plugin!r}: {hook}() returned {type(rec).__name__}, "
                                      f"expected {expected.__name__}")
                key = record_key(rec)
                if key in found:
                    raise PluginError(f"{expected.__name__.lower()} {key!r} is registered by both plugin "
                                      f"{owner[key]!r} and plugin {plugin!r}")
                found[key], owner[key] = rec, plugin
        self._records[hook], self._owners[hook] = found, owner
        return found

    def owner(self, hook: str, name: str) -> str:
        """The name of the plugin that registered record `name` of `hook`."""
        self.records(hook)
        return self._owners[hook].get(name, "?")

    def get(self, hook: str, name: str, kind: str) -> Any:
        recs = self.records(hook)
        if name not in recs:
            raise UsageError(unknown_name(kind, name, recs))
        return recs[name]

    def detectors(self) -> dict[str, Detector]:
        return self.records("circuitry_detectors")

    def datasets(self) -> dict[str, Dataset]:
        return self.records("circuitry_datasets")

    def model_sources(self) -> dict[str, ModelSource]:
        return self.records("circuitry_model_sources")

    def interventions(self) -> dict[str, Intervention]:
        return self.records("circuitry_interventions")

    def metrics(self) -> dict[str, Metric]:
        return self.records("circuitry_metrics")

    def tasks(self) -> dict[str, Task]:
        return self.records("circuitry_tasks")

    @property
    def hook(self):
        """The pluggy hook relay, for lifecycle hooks."""
        return self.pm.hook

    def summary(self) -> list[PluginInfo]:
        """Every plugin with its status, version and what it registers."""
        regs: dict[str, dict[str, list[str]]] = {}
        for hook in RECORD_HOOKS:
            try:
                recs = self.records(hook)
            except PluginError:
                continue
            for key in recs:
                regs.setdefault(self.owner(hook, key), {}).setdefault(
                    hook.removeprefix("circuitry_"), []).append(key)
        return [PluginInfo(i.name, i.version, i.module, i.status, i.error, regs.get(i.name, {}))
                for i in sorted(self.infos.values(), key=lambda i: i.name)]


_manager: PluginManager | None = None
_cli_disabled: set[str] = set()


def disable(names: set[str]) -> None:
    """Disable plugins by name before the manager is first used (`-p no:NAME`)."""
    global _manager
    _cli_disabled.update(names)
    _manager = None


def get_manager() -> PluginManager:
    """The process-wide plugin manager, created on first use."""
    global _manager
    if _manager is None:
        _manager = PluginManager(disabled=set(_cli_disabled))
    return _manager


def reset_manager() -> None:
    global _manager
    _manager = None
    _cli_disabled.clear()
