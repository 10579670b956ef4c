"""Plugin hook specifications and the plugin manager.

Plugins are found through the `circuitry` entry-point group (the standard
plugins are registered there exactly like third-party ones), loaded one at a
time. `-p no:NAME` on the command line or CIRCUITRY_DISABLE_PLUGINS=NAME,NAME
disables plugins.

One plugin never breaks the others:

- A plugin that fails to import (any exception, `sys.exit` included) is
  reported and skipped.
- A plugin whose registration hook raises, or returns something other than a
  list of the right records, is reported and skipped as a whole.
- A name registered by two plugins is a clash: neither record is used, and
  asking for the name is a usage error (exit 2) that names both plugins and
  says how to disable one (`-p no:NAME`).
- Every function of a registered record (`Detector.score`, `Metric.compute`
  ...) runs behind a guard: an exception other than a `CircuitryError`, or a
  return value of the wrong type, becomes a `PluginError` (exit 3) that names
  the plugin and the record. `call_hook` does the same for lifecycle hooks.

CIRCUITRY_STRICT_PLUGINS=1 makes every failure and clash fatal (exit 3).

The core gets a record by name only through `PluginManager.get` (or by
indexing the mapping `records` returns, which goes through the same lookup): a
missing name is a usage error that says which disabled or failed plugin would
provide it, or suggests a close name and lists the valid ones.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pluggy

from circuitry.errors import CircuitryError, UsageError, unknown_name
from circuitry.records import (
    RECORD_HOOKS,
    RECORD_KINDS,
    CheckKind,
    Dataset,
    Detector,
    Intervention,
    Metric,
    ModelSource,
    Task,
    function_fields,
    record_key,
    record_kind,
    result_check,
)

GROUP = "circuitry"
hookspec = pluggy.HookspecMarker(GROUP)
hookimpl = pluggy.HookimplMarker(GROUP)


class PluginError(CircuitryError):
    """A plugin failed to load, registered something invalid, or failed while running (exit code 3)."""


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
    def circuitry_check_kinds(self) -> list[CheckKind]:
        """Kinds of claims a spec can make (`kind:` of a check)."""

    @hookspec
    def circuitry_report_header(self, spec: Any, model: Any) -> list[str] | str | None:
        """Lines to show above a verification report."""

    @hookspec
    def circuitry_verify_finished(self, report: Any) -> None:
        """Called with the finished VerificationReport."""


LIFECYCLE_HOOKS = ("circuitry_report_header", "circuitry_verify_finished")


@dataclass(frozen=True)
class Clash:
    """One name registered by more than one plugin: unusable until all but one are disabled."""

    kind: str  # "detector", "model source" ...
    name: str
    plugins: tuple[str, ...]
    hint: str = ""

    @classmethod
    def of(cls, kind: str, name: str, plugins: tuple[str, ...]) -> Clash:
        hint = "disable one of them with " + " or ".join(f"-p no:{p}" for p in plugins)
        return cls(kind, name, plugins, hint)

    @property
    def message(self) -> str:
        *rest, last = (repr(p) for p in self.plugins)
        who = f"both plugin {rest[0]} and plugin {last}" if len(rest) == 1 else f"plugins {', '.join(rest)} and {last}"
        return f"{self.kind} {self.name!r} is registered by {who}; {self.hint}"


@dataclass(frozen=True)
class PluginInfo:
    """One plugin as `circuitry plugins` shows it.

    status: "loaded", "failed" (error says why), "disabled", or "clash" (loaded,
    but a name it registers is registered by another plugin as well; see clashes).
    """

    name: str
    version: str
    module: str
    status: str
    error: str = ""
    registers: dict[str, list[str]] = field(default_factory=dict)
    clashes: tuple[Clash, ...] = ()


def _env_list(var: str) -> set[str]:
    return {x.strip() for x in os.environ.get(var, "").split(",") if x.strip()}


def _exc_text(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit (the plugin called sys.exit({exc.code!r}))"
    return f"{type(exc).__name__}: {exc}"


def hook_name(name: str) -> str:
    """The full hook name of `name` ("detectors" -> "circuitry_detectors"); ValueError if there is none."""
    full = name if name.startswith("circuitry_") else f"circuitry_{name}"
    if full not in RECORD_HOOKS and full not in LIFECYCLE_HOOKS:
        raise ValueError(f"no plugin hook named {name!r}")
    return full


# ------------------------------------------------------------------ the guard
def _guard(fn: Callable, plugin: str, record: Any, field_name: str) -> Callable:
    """`fn` (a function of `record`, registered by `plugin`) behind the guard described in the module doc."""
    what = f"plugin {plugin!r}: {record_kind(record)} {record_key(record)!r}"
    check = result_check(record, field_name)

    @functools.wraps(fn, updated=())
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except CircuitryError:
            raise
        except (Exception, SystemExit) as exc:
            raise PluginError(f"{what} raised {_exc_text(exc)} (in {field_name}())") from exc
        if check is not None:
            problem = check(result, args, kwargs)
            if problem is not None:
                raise PluginError(f"{what}: {field_name}() returned the wrong type: {problem}")
        return result

    return guarded


def guard_record(record: Any, plugin: str) -> Any:
    """A copy of `record` whose functions run behind the guard (the originals stay as `__wrapped__`)."""
    changes = {name: _guard(getattr(record, name), plugin, record, name) for name in function_fields(record)}
    return replace(record, **changes) if changes else record


class RecordMap(dict):
    """name -> record of one registration hook. Indexing a missing name raises the manager's
    UsageError (unknown, disabled, failed or clashing), never a bare KeyError."""

    def __init__(self, manager: PluginManager, hook: str) -> None:
        super().__init__()
        self._manager, self._hook = manager, hook

    def __missing__(self, name: str) -> Any:
        raise self._manager.missing(self._hook, name)


def _probe(source: Any) -> dict[str, set[str]]:
    """What a plugin that is not registered would register (hook -> names); {} when it cannot be told."""
    try:
        plugin = source.load() if isinstance(source, md.EntryPoint) else source
        pm = pluggy.PluginManager(GROUP)
        pm.add_hookspecs(HookSpecs)
        pm.register(plugin)
        return {hook: {record_key(r) for result in getattr(pm.hook, hook)() for r in result or ()
                       if isinstance(r, cls)} for hook, cls in RECORD_HOOKS.items()}
    except (Exception, SystemExit):  # noqa: BLE001 - only used to word an error message
        return {}


@dataclass
class _Collected:
    """The records of every registration hook, gathered from all plugins at once."""

    records: dict[str, RecordMap]
    owners: dict[str, dict[str, str]]
    clashes: dict[str, dict[str, Clash]]
    provided: dict[str, dict[str, list[str]]]  # plugin -> short hook name -> names


class PluginManager:
    """Loads plugins and collects their records, attributed to the plugin that made them."""

    def __init__(self, disabled: set[str] | None = None, strict: bool | None = None,
                 entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(HookSpecs)
        env = _env_list("CIRCUITRY_DISABLE_PLUGINS")
        self.disabled = set(disabled or ()) | env
        self._disabled_how = {n: f"-p no:{n}" if n in (disabled or ()) else f"CIRCUITRY_DISABLE_PLUGINS={n}"
                              for n in self.disabled}
        self.strict = os.environ.get("CIRCUITRY_STRICT_PLUGINS", "") not in ("", "0") if strict is None else strict
        self.infos: dict[str, PluginInfo] = {}
        self._disabled_sources: dict[str, Any] = {}  # disabled plugin -> entry point or object
        self._failed_provides: dict[str, dict[str, set[str]]] = {}
        self._probes: dict[str, dict[str, set[str]]] = {}
        self._collected: _Collected | None = None
        if entry_points:
            self._load_entry_points()

    # loading -------------------------------------------------------------
    def _load_entry_points(self) -> None:
        for ep in sorted(md.entry_points(group=GROUP), key=lambda e: e.name):
            if ep.name in self.infos:
                continue
            version = str(ep.dist.version or "?") if ep.dist is not None else "?"
            if ep.name in self.disabled:
                self.infos[ep.name] = PluginInfo(ep.name, version, ep.value, "disabled")
                self._disabled_sources[ep.name] = ep
                continue
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - any import failure is reported, not fatal
                self._fail_import(ep, version, exc)
                continue
            try:
                self.register(plugin, ep.name, version=version)
            except (pluggy.PluginValidationError, ValueError, PluginError) as exc:
                self._fail(ep.name, f"cannot be registered: {_exc_text(exc)}",
                           PluginInfo(ep.name, version, ep.value, "failed"))

    def _fail_import(self, ep: md.EntryPoint, version: str, exc: BaseException) -> None:
        if self.strict:
            raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to import: {_exc_text(exc)}") from exc
        self.infos[ep.name] = PluginInfo(ep.name, version, ep.value, "failed", f"import failed: {_exc_text(exc)}")

    def _fail(self, name: str, reason: str, info: PluginInfo | None = None) -> None:
        """Mark plugin `name` failed and unregister it (strict mode: raise PluginError)."""
        if self.strict:
            raise PluginError(f"plugin {name!r}: {reason}")
        info = info or self.infos.get(name) or PluginInfo(name, "", name, "failed")
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin, name=name)
        self.infos[name] = replace(info, status="failed", error=reason)

    def register(self, plugin: Any, name: str, version: str = "") -> None:
        """Register a plugin object (a module or an object with hookimpls)."""
        if name in self.disabled:
            module = getattr(plugin, "__name__", type(plugin).__name__)
            self.infos[name] = PluginInfo(name, version, str(module), "disabled")
            self._disabled_sources[name] = plugin
            return
        if self.pm.has_plugin(name):
            raise PluginError(f"a plugin named {name!r} is already registered")
        self.pm.register(plugin, name=name)
        self._failed_provides.pop(name, None)
        module = getattr(plugin, "__name__", type(plugin).__name__)
        version = version or getattr(plugin, "__version__", "") or ""
        self.infos[name] = PluginInfo(name, str(version), str(module), "loaded")
        self._collected = None

    def unregister(self, name: str) -> None:
        """Remove plugin `name` (registered, failed or disabled)."""
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin, name=name)
        for table in (self.infos, self._disabled_sources, self._failed_provides, self._probes):
            table.pop(name, None)
        self._collected = None

    @property
    def failed(self) -> list[PluginInfo]:
        """The plugins that failed to import or to register (known so far) and were skipped."""
        return [i for i in self.infos.values() if i.status == "failed"]

    @property
    def clashes(self) -> list[Clash]:
        """The names registered by more than one plugin (once records have been collected)."""
        if self._collected is None:
            return []
        return [c for by_name in self._collected.clashes.values() for c in by_name.values()]

    # records ---------------------------------------------------------------
    def _registered(self, hook: str, fn: Callable) -> list:
        """The records one plugin's registration hook returns; PluginError saying why they are unusable."""
        expected = RECORD_HOOKS[hook]
        try:
            result = fn()
        except (Exception, SystemExit) as exc:
            raise PluginError(f"{hook}() raised {_exc_text(exc)}") from exc
        if result is None:
            return []
        if not isinstance(result, (list, tuple)):
            raise PluginError(f"{hook}() returned {type(result).__name__}, expected a list of {expected.__name__}")
        seen: set[str] = set()
        for rec in result:
            if not isinstance(rec, expected):
                raise PluginError(f"{hook}() returned {type(rec).__name__}, expected {expected.__name__}")
            key = record_key(rec)
            if not isinstance(key, str) or not key or key in seen:
                raise PluginError(f"{hook}() returned {'a second' if key in seen else 'an invalid'} "
                                  f"{record_kind(rec)} name {key!r}")
            seen.add(key)
        return list(result)

    def _gather(self) -> dict[str, list[tuple[str, Any]]]:
        """hook -> [(plugin, record)] from every plugin; plugins whose hooks fail are marked failed."""
        ordered: dict[str, list[tuple[str, Any]]] = {hook: [] for hook in RECORD_HOOKS}
        failures: dict[str, str] = {}
        for hook in RECORD_HOOKS:
            for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
                try:
                    ordered[hook] += [(impl.plugin_name, r) for r in self._registered(hook, impl.function)]
                except PluginError as exc:
                    failures.setdefault(impl.plugin_name, str(exc))
        for plugin, reason in failures.items():
            self._failed_provides[plugin] = {h: {record_key(r) for p, r in recs if p == plugin}
                                             for h, recs in ordered.items()}
            self._fail(plugin, reason)
        return {h: [(p, r) for p, r in recs if p not in failures] for h, recs in ordered.items()}

    def _collect(self) -> _Collected:
        """Gather, guard and index the records of every registration hook (once until plugins change)."""
        if self._collected is not None:
            return self._collected
        c = _Collected({h: RecordMap(self, h) for h in RECORD_HOOKS}, {h: {} for h in RECORD_HOOKS},
                       {h: {} for h in RECORD_HOOKS}, {})
        for hook, entries in self._gather().items():
            by_key: dict[str, list[tuple[str, Any]]] = {}
            for plugin, rec in entries:
                by_key.setdefault(record_key(rec), []).append((plugin, rec))
                c.provided.setdefault(plugin, {}).setdefault(hook.removeprefix("circuitry_"), []).append(
                    record_key(rec))
            for key, owners in by_key.items():
                if len(owners) > 1:
                    c.clashes[hook][key] = Clash.of(RECORD_KINDS[RECORD_HOOKS[hook]], key,
                                                    tuple(sorted(p for p, _ in owners)))
                else:
                    plugin, rec = owners[0]
                    c.records[hook][key], c.owners[hook][key] = guard_record(rec, plugin), plugin
        if self.strict and (clashes := [x for by in c.clashes.values() for x in by.values()]):
            raise PluginError(clashes[0].message)
        self._collected = c
        return c

    def records(self, hook: str) -> RecordMap:
        """name -> record for one registration hook ("circuitry_detectors" or "detectors").

        Records are type-checked, free of clashes and guarded. Indexing a
        missing name raises the same UsageError as `get`."""
        return self._collect().records[hook_name(hook)]

    def owner(self, hook: str, name: str) -> str:
        """The name of the plugin that registered record `name` of `hook` ("?" if none did)."""
        return self._collect().owners[hook_name(hook)].get(name, "?")

    def get(self, hook: str, name: str, kind: str | None = None) -> Any:
        """The record `name` of registration hook `hook` ("circuitry_detectors" or "detectors").

        This is the one lookup of plugin-provided names. A missing name raises
        UsageError (exit 2): for a name that a disabled or failed plugin
        provides, "detector 'composition' is not available: plugin 'detectors'
        provides it and is disabled (-p no:detectors)"; for a name two plugins
        register, the clash with a `-p no:NAME` hint; otherwise the unknown
        name with a did-you-mean and the valid choices. `kind` overrides the
        word used for the record in messages ("detector", "model source" ...).
        """
        recs = self.records(hook)
        if name in recs:
            return recs[name]
        raise self.missing(hook, name, kind)

    def missing(self, hook: str, name: str, kind: str | None = None) -> UsageError:
        """The UsageError for a name `get` does not find (see `get`)."""
        hook = hook_name(hook)
        c = self._collect()
        kind = kind or RECORD_KINDS[RECORD_HOOKS[hook]]
        if name in c.clashes[hook]:
            return UsageError(c.clashes[hook][name].message)
        for plugin, provides in self._failed_provides.items():
            if name in provides.get(hook, ()):
                reason = self.infos[plugin].error if plugin in self.infos else "it failed"
                return UsageError(f"{kind} {name!r} is not available: plugin {plugin!r} provides it and failed "
                                  f"({reason})")
        for plugin in sorted(self._disabled_sources):
            if name in self._probe_disabled(plugin).get(hook, ()):
                return UsageError(f"{kind} {name!r} is not available: plugin {plugin!r} provides it and is "
                                  f"disabled ({self._disabled_how.get(plugin, f'-p no:{plugin}')})")
        message = unknown_name(kind, name, c.records[hook])
        failed = [i for i in self.failed if i.name not in self._failed_provides]
        if failed:
            message += "; " + "; ".join(f"plugin {i.name!r} was skipped ({i.error}) and may provide it"
                                        for i in failed)
        return UsageError(message)

    def _probe_disabled(self, plugin: str) -> dict[str, set[str]]:
        if plugin not in self._probes:
            self._probes[plugin] = _probe(self._disabled_sources[plugin])
        return self._probes[plugin]

    def detectors(self) -> RecordMap:
        return self.records("circuitry_detectors")

    def datasets(self) -> RecordMap:
        return self.records("circuitry_datasets")

    def model_sources(self) -> RecordMap:
        return self.records("circuitry_model_sources")

    def interventions(self) -> RecordMap:
        return self.records("circuitry_interventions")

    def metrics(self) -> RecordMap:
        return self.records("circuitry_metrics")

    def tasks(self) -> RecordMap:
        return self.records("circuitry_tasks")

    def check_kinds(self) -> RecordMap:
        return self.records("circuitry_check_kinds")

    # lifecycle hooks -------------------------------------------------------
    @property
    def hook(self) -> _GuardedRelay:
        """The hook relay: `manager.hook.circuitry_report_header(spec=..., model=...)` is
        `call_hook("circuitry_report_header", spec=..., model=...)`; other hooks are pluggy's callers."""
        return _GuardedRelay(self)

    def call_hook(self, name: str, **kwargs: Any) -> list:
        """Call lifecycle hook `name` ("circuitry_report_header" or "report_header") on every plugin.

        kwargs are the hook's arguments (`spec=..., model=...`; `report=...`).
        Plugins are called one at a time, in pluggy's order; the results that
        are not None come back in a list. An exception from a plugin (other than
        a CircuitryError, which passes unchanged) or a result of the wrong type
        (circuitry_report_header: a str or a list of str) raises PluginError
        naming the plugin and the hook.
        """
        hook = hook_name(name)
        if hook not in LIFECYCLE_HOOKS:
            raise ValueError(f"{hook} is a registration hook; use records() or get()")
        caller = getattr(self.pm.hook, hook)
        wanted = set(caller.spec.argnames) if caller.spec else set()
        if set(kwargs) != wanted:
            raise TypeError(f"{hook} takes the arguments {', '.join(sorted(wanted))}, got {', '.join(sorted(kwargs))}")
        results = []
        for impl in reversed(caller.get_hookimpls()):
            result = _call_impl(hook, impl, kwargs)
            if result is not None:
                results.append(result)
        return results

    # summary ---------------------------------------------------------------
    def summary(self) -> list[PluginInfo]:
        """Every plugin with its status, version, what it registers and its clashes.

        Never raises because of a plugin (except in strict mode): failures and
        clashes are part of the answer."""
        c = self._collect()
        clashes: dict[str, list[Clash]] = {}
        for clash in self.clashes:
            for plugin in clash.plugins:
                clashes.setdefault(plugin, []).append(clash)
        out = []
        for i in sorted(self.infos.values(), key=lambda i: i.name):
            mine = tuple(clashes.get(i.name, ()))
            status = "clash" if mine and i.status == "loaded" else i.status
            out.append(replace(i, status=status, registers=c.provided.get(i.name, {}), clashes=mine))
        return out


class _GuardedRelay:
    """pluggy's hook relay with every lifecycle hook called through `PluginManager.call_hook`."""

    def __init__(self, manager: PluginManager) -> None:
        self._manager = manager

    def __getattr__(self, name: str) -> Any:
        if name in LIFECYCLE_HOOKS:
            return functools.partial(self._manager.call_hook, name)
        return getattr(self._manager.pm.hook, name)


def _call_impl(hook: str, impl: Any, kwargs: dict[str, Any]) -> Any:
    """Call one plugin's implementation of a lifecycle hook behind the guard."""
    try:
        result = impl.function(**{a: kwargs[a] for a in impl.argnames})
    except CircuitryError:
        raise
    except (Exception, SystemExit) as exc:
        raise PluginError(f"plugin {impl.plugin_name!r}: {hook}() raised {_exc_text(exc)}") from exc
    if hook == "circuitry_report_header" and not (
            result is None or isinstance(result, str)
            or (isinstance(result, (list, tuple)) and all(isinstance(x, str) for x in result))):
        raise PluginError(f"plugin {impl.plugin_name!r}: {hook}() returned {type(result).__name__}, "
                          f"expected a str or a list of str")
    return result


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
