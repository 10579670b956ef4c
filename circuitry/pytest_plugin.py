"""The pytest plugin of circuitry (entry point `pytest11`): circuit specs as tests, and the `circuitry_plugin` fixture.

`pytest specs/` collects every YAML file whose top level says `apiVersion: circuitry/v1` and makes one
test item per check, named by its id (`specs/induction.yaml::k-composition`), so `-k` selects checks.
When the first item of a spec runs, the spec is verified once (`circuitry.verify.verify`: one model, one
batch, one clean run) for the checks selected; its items then read their results. Models are loaded once
per reference, device and dtype in the session, and released after the last spec that uses them.

A failing check reports its `spec:line`, the claim, the measured value and the expectation, without a
Python traceback. A spec that does not load is one failing item (`SPEC::spec`) with every problem at
file:line:col. A spec whose `metadata.xfail` gives a reason states a hypothesis known to be wrong: its
failing checks are expected failures (xfail), and its checks fail if every one of them holds.

Options: --circuitry-model REF, --circuitry-device DEVICE, --circuitry-dtype DTYPE.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from circuitry.errors import CircuitryError, UsageError

SPEC_SUFFIXES = (".yaml", ".yml")
SPEC_ERROR_ITEM = "spec"  # the name of the one item of a spec that does not load
MAX_VALUES = 12  # per-node values shown under a failing check
NOT_SPECS = ("Task",)  # the other kinds of circuitry/v1 documents (task files: circuitry.tasks.format)
# `apiVersion: circuitry/v1` and `kind: NAME` at the start of a line (top-level keys), quoted or not
_API_LINE = re.compile(r"^apiVersion[ \t]*:[ \t]*(['\"]?)circuitry/v1\1[ \t]*(#.*)?\r?$", re.M)
_KIND_LINE = re.compile(r"^kind[ \t]*:[ \t]*(['\"]?)([A-Za-z]+)\1[ \t]*(#.*)?\r?$", re.M)

ModelKey = tuple[str, "str | None", "str | None"]  # (model reference, device, dtype)


# ------------------------------------------------------------------ what is a spec
def is_spec_file(path: Path) -> bool:
    """Whether `path` is a YAML file whose top level has `apiVersion: circuitry/v1` and is not another kind of
    circuitry document (a task file, `kind: Task`). Read safely: a cheap look at the text, then
    `yaml.safe_load` only for a file that names circuitry/v1 in another form."""
    if path.suffix not in SPEC_SUFFIXES:
        return False
    try:
        raw = path.read_bytes()
    except OSError:
        return False
    if b"circuitry/v1" not in raw:
        return False
    text = raw.decode("utf-8", errors="replace")
    if _API_LINE.search(text):
        kind = _KIND_LINE.search(text)
        return kind is None or kind.group(2) not in NOT_SPECS
    import yaml

    try:
        data = yaml.safe_load(text)  # a flow mapping: {apiVersion: circuitry/v1, ...}
    except Exception:  # noqa: BLE001 - any YAML that cannot be read is not a spec
        return False
    return isinstance(data, dict) and data.get("apiVersion") == "circuitry/v1" and data.get("kind") not in NOT_SPECS


def _shown(path: Path, config: pytest.Config) -> str:
    """The path as the user sees it: relative to the directory pytest was started in, when under it."""
    try:
        return str(path.relative_to(config.invocation_params.dir))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------ the session's models
class ModelCache:
    """Models by (reference, device, dtype): each loaded once, released after the last spec that uses it."""

    def __init__(self) -> None:
        self.models: dict[ModelKey, tuple[Any, str]] = {}
        self.users: Counter[ModelKey] = Counter()  # specs still to run, per model

    def get(self, key: ModelKey, load: Callable[[], tuple[Any, str]]) -> tuple[Any, str]:
        """(the model, the reference it was loaded from), loaded by `load()` the first time."""
        if key not in self.models:
            self.models[key] = load()
        return self.models[key]

    def release(self, key: ModelKey) -> None:
        """One spec of the model is done: the model is dropped after the last one."""
        self.users[key] -= 1
        if self.users[key] <= 0:
            self.models.pop(key, None)


_CACHE = pytest.StashKey[ModelCache]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("circuitry", "circuit specs (circuitry/v1 YAML files as tests)")
    group.addoption("--circuitry-model", metavar="REF", default=None,
                    help="verify every spec against this model instead of its own")
    group.addoption("--circuitry-device", metavar="DEVICE", default=None,
                    help="load the models of specs on this device (cpu, cuda, cuda:1, mps)")
    group.addoption("--circuitry-dtype", metavar="DTYPE", default=None,
                    help="load the models of specs in this dtype (float32, bfloat16, float16)")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_CACHE] = ModelCache()
    model, device, dtype = _options(config)
    if model is not None and not model.strip():
        raise pytest.UsageError("--circuitry-model: give a model reference (builtin:NAME, a path, hf:NAME ...)")
    if device is None and dtype is None:
        return
    from circuitry.sources import check_device, check_dtype

    for option, check, value in (("--circuitry-device", check_device, device), ("--circuitry-dtype", check_dtype,
                                                                                dtype)):
        try:
            check(value)
        except UsageError as exc:
            raise pytest.UsageError(f"{option}: {exc}") from None


def _options(config: pytest.Config) -> tuple[str | None, str | None, str | None]:
    return (config.getoption("circuitry_model"), config.getoption("circuitry_device"),
            config.getoption("circuitry_dtype"))


# ------------------------------------------------------------------ collection
def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> SpecFile | None:
    if is_spec_file(file_path):
        return SpecFile.from_parent(parent, path=file_path)
    return None


def pytest_collection_finish(session: pytest.Session) -> None:
    """Count the specs that will run per model, so each model is dropped after its last spec."""
    cache = session.config.stash[_CACHE]
    files = {id(item.parent): item.parent for item in session.items if isinstance(item, CheckItem)}
    for spec_file in files.values():
        assert isinstance(spec_file, SpecFile)
        cache.users[spec_file.model_key()] += 1


class SpecFile(pytest.File):
    """One circuit spec: one item per check (or one failing item when the spec does not load)."""

    spec: Any = None
    _outcome: Any = None  # the VerificationReport, or the exception verifying raised
    _model_key: ModelKey | None = None  # the model this spec holds in the session's cache

    def collect(self) -> Iterator[pytest.Item]:
        from circuitry.spec import load_spec

        try:
            self.spec = load_spec(_shown(self.path, self.config))
        except CircuitryError as exc:  # SpecError(s) at file:line:col, or a plugin's failure
            yield SpecErrorItem.from_parent(self, name=SPEC_ERROR_ITEM, error=exc)
            return
        for check in self.spec.checks:
            yield CheckItem.from_parent(self, name=check.id, check=check)

    @property
    def xfail(self) -> str | None:
        """The reason the spec is expected to fail (`metadata.xfail`), or None."""
        return self.spec.document.data["metadata"].get("xfail")

    def model_key(self) -> ModelKey:
        from circuitry.verify import spec_model_ref

        model, device, dtype = _options(self.config)
        return model or spec_model_ref(self.spec), device, dtype or self.spec.dtype

    def report(self) -> Any:
        """The spec's VerificationReport (verified the first time, for the checks selected in this session)."""
        if self._outcome is None:
            try:
                self._outcome = self._verify()
            except Exception as exc:  # noqa: BLE001 - every item of the spec reports it
                self._outcome = exc
        if isinstance(self._outcome, Exception):
            raise self._outcome
        return self._outcome

    def _verify(self) -> Any:
        from circuitry import verify as verifying

        selected = {item.name for item in self.session.items if isinstance(item, CheckItem) and item.parent is self}
        spec = self.spec
        if selected and len(selected) < len(spec.checks):  # -k or --deselect: only those checks run
            spec = replace(spec, checks=tuple(c for c in spec.checks if c.id in selected))
        cache = self.config.stash[_CACHE]
        model_ref, device, dtype = _options(self.config)
        key = self.model_key()
        model, ref = cache.get(key, lambda: verifying.load_spec_model(spec, model_ref, device, dtype))
        self._model_key = key
        return verifying.verify(spec, model=model, model_ref=ref)

    def teardown(self) -> None:
        """The spec's items have run: drop its run, and its model after the last spec that uses it."""
        self._outcome = None
        if self._model_key is not None:
            self.config.stash[_CACHE].release(self._model_key)
            self._model_key = None


# ------------------------------------------------------------------ items
class CheckFailed(Exception):
    """A check of a spec that does not hold (or, in a spec marked xfail, every check holds)."""


class CheckItem(pytest.Item):
    """One check of a spec; its result is read from the spec's one verification."""

    def __init__(self, *, check: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check

    @property
    def spec_file(self) -> SpecFile:
        assert isinstance(self.parent, SpecFile)
        return self.parent

    @property
    def line(self) -> int:
        """The check's line in the spec (1-based)."""
        mark = self.spec_file.spec.document.mark(self.check.path)
        return mark.line if mark is not None else 1

    def runtest(self) -> None:
        report = self.spec_file.report()
        result = next(c for c in report.checks if c.id == self.check.id)
        reason = self.spec_file.xfail
        if reason is None:
            if not result.passed:
                raise CheckFailed(self._message(result, report))
            return
        if not result.passed:
            pytest.xfail(f"{reason} (measured {_fmt(result.value)}, expected {result.expect})")
        if report.passed:
            raise CheckFailed(f"{self._where()}: {self.check.id}: the spec is marked xfail ({reason}), but every "
                              f"check holds (this one measured {_fmt(result.value)}, expected {result.expect})")

    def _where(self) -> str:
        return f"{self.spec_file.spec.file}:{self.line}"

    def _message(self, result: Any, report: Any) -> str:
        from circuitry.spec.loader import one_line

        lines = [f"{self._where()}: {result.id}: measured {_fmt(result.value)}, expected {one_line(result.expect)}",
                 f"  claim:  {one_line(result.claim)}"]
        values = result.details.get("values") or {}
        if values:
            shown = ", ".join(f"{one_line(str(k))} {_fmt(v)}" for k, v in list(values.items())[:MAX_VALUES])
            more = f" (and {len(values) - MAX_VALUES} more)" if len(values) > MAX_VALUES else ""
            lines.append(f"  values: {shown}{more}")
        lines.append(f"  model:  {report.model}; data: {report.data}")
        return "\n".join(lines)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        exc = excinfo.value
        if isinstance(exc, CheckFailed):
            return str(exc)
        if isinstance(exc, UsageError):  # the spec's model, data or names (located), or a bad option
            return _usage_message(exc, self.spec_file.spec.file)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        # not the end of the node id: pytest would show the dots of such a suffix as '::'
        return self.path, self.line - 1, f"{self.name} ({self._where()})"


class SpecErrorItem(pytest.Item):
    """The one item of a spec that does not load: it fails with every problem, at file:line:col."""

    def __init__(self, *, error: Exception, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error = error

    def runtest(self) -> None:
        raise self.error

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, UsageError):
            return _usage_message(excinfo.value, _shown(self.path, self.config))
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        mark = getattr(self.error, "mark", None)
        line = mark.line - 1 if mark is not None else None
        return self.path, line, f"{_shown(self.path, self.config)} (invalid spec)"


def _usage_message(exc: UsageError, file: str) -> str:
    """A spec's error as it is written (file:line:col first), other errors after the spec's file."""
    from circuitry.spec.loader import SpecError

    located = isinstance(exc, SpecError) and exc.mark is not None
    return str(exc) if located else f"{file}: {exc}"


def _fmt(value: float | None) -> str:
    from circuitry.report.console import _fmt as fmt

    return fmt(value)


# ------------------------------------------------------------------ fixtures for plugin authors
@pytest.fixture
def circuitry_plugin() -> Iterator[Callable[[Any, str], Any]]:
    """Register throw-away plugins: `circuitry_plugin(obj, "name")`; all are removed after the test."""
    from contextlib import ExitStack

    from circuitry.testing import registered_plugin

    with ExitStack() as stack:
        yield lambda plugin, name: stack.enter_context(registered_plugin(plugin, name))
