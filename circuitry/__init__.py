"""circuitry: find and verify circuits in transformer language models.

`import circuitry as cy` is the one Python surface for notebooks (docs/python-api.md):

- models: `cy.load_model(ref)`, `cy.from_hf(model)`, `cy.from_transformer_lens(model)`,
  `cy.HookedTransformer`, `cy.ModelConfig`
- data: `cy.make_batch(model, data)`, `cy.task_batch(model, task)`
- analyses: `cy.scan`, `cy.verify`, `cy.Spec` (`Spec.from_yaml`, `Spec.from_dict`), `cy.discover`,
  `cy.patch`, `cy.attribute`, `cy.ResidualGraph`, `cy.decompose`
- pictures: `cy.attention(model, tokens, heads)`, `cy.html(result)`; reports, scan results and graphs show
  themselves inline in Jupyter (`_repr_html_`)
- errors: `cy.CircuitryError`, `cy.UsageError`, `cy.SpecError`, `cy.ModelLoadError`, `cy.InputError`

Every name is imported on first use (PEP 562 `__getattr__`), so `import circuitry` does not import torch
and `circuitry.__version__` is a plain string. `cy.scan` and `cy.verify` share their names with the modules
`circuitry.scan` and `circuitry.verify`: those modules are callable, and calling them calls the notebook
entry points `circuitry.api.scan` and `circuitry.api.verify` (attribute access reaches the modules as
usual, so `circuitry.scan.ScanResult` and `from circuitry.verify import verify` are unchanged).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "HookedTransformer": "circuitry.model", "ModelConfig": "circuitry.model",
    "SpecError": "circuitry.spec.loader", "Spec": "circuitry.spec.pyspec",
    "hookimpl": "circuitry.plugins",
    "load_model": "circuitry.api", "make_batch": "circuitry.api", "task_batch": "circuitry.api",
    "patch": "circuitry.api", "attribute": "circuitry.api", "discover": "circuitry.api",
    "attention": "circuitry.api", "html": "circuitry.api",
    "from_hf": "circuitry.inmemory", "from_transformer_lens": "circuitry.inmemory",
    "ResidualGraph": "circuitry.graph", "decompose": "circuitry.graph",
}
_CALLABLE_MODULES = ("scan", "verify")  # submodules that are also entry points of circuitry.api

if TYPE_CHECKING:
    from circuitry.api import attention, attribute, discover, html, load_model, make_batch, patch, task_batch
    from circuitry.graph import ResidualGraph, decompose
    from circuitry.inmemory import from_hf, from_transformer_lens
    from circuitry.model import HookedTransformer, ModelConfig
    from circuitry.plugins import hookimpl
    from circuitry.spec.loader import SpecError
    from circuitry.spec.pyspec import Spec


class _EntryModule(types.ModuleType):
    """A submodule that, called, runs the notebook entry point of its name in `circuitry.api`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._entry()(*args, **kwargs)

    def _entry(self) -> Any:
        from circuitry import api

        return getattr(api, self.__name__.rsplit(".", 1)[1])

    @property
    def __signature__(self) -> Any:  # what inspect.signature and Jupyter's `cy.scan?` show
        import inspect

        return inspect.signature(self._entry())


class _Package(types.ModuleType):
    """The `circuitry` package: binding `circuitry.scan` / `circuitry.verify` makes those modules callable."""

    def __setattr__(self, name: str, value: Any) -> None:
        if (name in _CALLABLE_MODULES and isinstance(value, types.ModuleType)
                and value.__name__ == f"{__name__}.{name}"):
            value.__class__ = _EntryModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

from circuitry.errors import CircuitryError, InputError, ModelLoadError, UsageError  # noqa: E402 - torch-free


def __getattr__(name: str) -> Any:
    if name in _CALLABLE_MODULES:
        return importlib.import_module(f"{__name__}.{name}")  # bound (and made callable) by the import
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "__version__", "CircuitryError", "UsageError", "ModelLoadError", "InputError", "SpecError",
    "HookedTransformer", "ModelConfig", "Spec", "ResidualGraph", "decompose",
    "load_model", "from_hf", "from_transformer_lens", "make_batch", "task_batch",
    "scan", "verify", "discover", "patch", "attribute", "attention", "html", "hookimpl",
]
