"""Hugging Face plugin: the `hf:` model source and the `text` dataset.

transformers is imported only when an `hf:` model is loaded, so this plugin
(and every other) works without it. Other plugins add architectures with
`register_conversion(model_type, fn)` (see docs/models.md).
"""

from __future__ import annotations

from circuitry import hookimpl
from circuitry.records import Dataset, ModelSource
from circuitry_plugins.hf import architectures  # noqa: F401 (registers Qwen3, GPT-J, Phi-3, OLMo-2, Gemma)
from circuitry_plugins.hf.conversions import register_conversion, supported
from circuitry_plugins.hf.text import text_batch

__all__ = ["register_conversion", "supported", "load_hf"]


def load_hf(rest: str, device=None, dtype=None):
    from circuitry_plugins.hf.source import load_hf as _load

    return _load(rest, device, dtype)


@hookimpl
def circuitry_model_sources():
    return [ModelSource("hf", "Hugging Face transformers models: a save_pretrained directory or a hub name "
                              f"(hf:PATH, hf:NAME[@REV]); architectures {', '.join(supported())}", load_hf)]


@hookimpl
def circuitry_datasets():
    return [Dataset("text", "prompts tokenized with the model's tokenizer: text=... (a list in specs) or "
                            "path=FILE (one per line); repeat=N tiles each prompt; seed>0 shuffles the prompts",
                    text_batch, {"text": None, "path": "", "separator": "", "prepend_bos": True,
                                 "repeat": 1, "truncate": False, "seed": 0},
                    limits={"repeat": (1, None)}, paths=("path",))]
