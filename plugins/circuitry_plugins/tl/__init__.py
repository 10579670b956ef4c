"""TransformerLens plugin: the `tl:` model source (checkpoints saved from a HookedTransformer) and
`convert_tl_model` (a HookedTransformer in memory). transformer-lens itself is needed only for the latter."""

from __future__ import annotations

from circuitry import hookimpl
from circuitry.records import ModelSource
from circuitry_plugins.tl.convert import convert_tl_model
from circuitry_plugins.tl.source import load_tl, tl_config, tl_state

__all__ = ["convert_tl_model", "load_tl", "tl_config", "tl_state"]


@hookimpl
def circuitry_model_sources():
    return [ModelSource("tl", "TransformerLens HookedTransformer checkpoints: a directory with the state dict "
                              "(model.safetensors, *.pt or *.pth) and its config.json (tl:PATH)", load_tl)]
