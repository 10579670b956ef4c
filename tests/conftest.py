"""Shared fixtures: the shipped model, small random models, the --runslow switch."""

from __future__ import annotations

import pytest
import torch

from circuitry.model import HookedTransformer, ModelConfig


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shipped():
    """The embedded default model, builtin:attn-only-2l."""
    from circuitry.sources import load_model

    return load_model("builtin:attn-only-2l")


def small_config(**overrides) -> ModelConfig:
    base = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_vocab=50, n_ctx=32, bos_token_id=49)
    base.update(overrides)
    return ModelConfig(**base)


def random_model(seed: int = 0, randomize_all: bool = True, **overrides) -> HookedTransformer:
    """A random model; with randomize_all, norm weights and biases are random too."""
    model = HookedTransformer(small_config(**overrides), seed=seed)
    if randomize_all:
        gen = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not name.rsplit(".", 1)[-1].startswith("W_"):
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if name.endswith(".w") else 0.0))
    return model.eval()


@pytest.fixture(autouse=True)
def _no_grad_leak():
    torch.set_grad_enabled(True)
    yield


@pytest.fixture
def circuitry_plugin():
    """Register throw-away plugins: `circuitry_plugin(obj, "name")`; all are removed after the test."""
    from contextlib import ExitStack

    from circuitry.testing import registered_plugin

    with ExitStack() as stack:
        yield lambda plugin, name: stack.enter_context(registered_plugin(plugin, name))
