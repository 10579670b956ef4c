"""The canonical hooked transformer: config, model, hook points, cache, I/O."""

from circuitry.model.config import ModelConfig
from circuitry.model.hooks import ActivationCache, HookPoint, act_name
from circuitry.model.io import load_model_file, save_model
from circuitry.model.transformer import HookedTransformer

__all__ = ["ModelConfig", "HookedTransformer", "HookPoint", "ActivationCache", "act_name",
           "load_model_file", "save_model"]
