"""--device-map: blocks placed through accelerate's dispatch_model. On a machine without several accelerators
the placement runs with every module on the CPU behind accelerate's device hooks (the hooks are attached and
every input goes through them), which checks the machinery, not real transfers between devices."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import REPO, needs

from circuitry.cli import main
from circuitry.errors import UsageError
from circuitry.interventions import Ablation, run_interventions
from circuitry.model import HookedTransformer, ModelConfig
from circuitry.model.placement import device_map_of, layer_ranges, place
from circuitry.spec import load_spec
from circuitry.verify import verify

CFG = ModelConfig(n_layers=3, d_model=64, n_heads=4, d_head=16, d_vocab=200, n_ctx=64, d_mlp=128,
                  normalization="LN", positional="learned", act_fn="gelu")


def test_layer_ranges():
    plan = layer_ranges("cuda:0=0-1,cuda:1=2", 3)
    assert plan["blocks.0"] == plan["blocks.1"] == plan["embed"] == "cuda:0"
    assert plan["blocks.2"] == plan["unembed"] == plan["ln_final"] == "cuda:1"
    for bad, words in (("cuda:0=0-1", "layers [2] have no device"), ("cuda:0=0-2,cuda:1=2", "layer 2 is given"),
                       ("cuda:0=0-5", "not within 0-2"), ("cuda:0", "expected 'auto' or DEVICE=FIRST-LAST")):
        with pytest.raises(UsageError, match=re.escape(words)):
            layer_ranges(bad, 3)


def test_placed_model_runs_hooks_caches_and_interventions_like_the_unplaced_one():
    needs("accelerate")
    ref = HookedTransformer(CFG, seed=0)
    placed = place(HookedTransformer(CFG, seed=0), "cpu=0-2")
    assert all(hasattr(placed.blocks[l], "_hf_hook") for l in range(3))  # accelerate's device hooks
    tokens = torch.randint(0, 200, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(placed(tokens), ref(tokens), atol=0, rtol=0)
        _, got = placed.run_with_cache(tokens)
        _, want = ref.run_with_cache(tokens)
    assert sorted(got.keys()) == sorted(want.keys())
    for name in want.keys():
        torch.testing.assert_close(got[name], want[name], atol=0, rtol=0)
    items = [Ablation(f"L{l}H{h}", "mean") for l in range(3) for h in range(4)]

    def loss(logits, toks, clean_logits=None):
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), toks[:, 1:].flatten())
    a = run_interventions(placed, tokens, items, loss).values
    b = run_interventions(ref, tokens, items, loss).values
    assert [float(x) for x in a] == pytest.approx([float(x) for x in b], abs=1e-6)


def test_offloading_and_unknown_devices_are_refused():
    needs("accelerate")
    model = HookedTransformer(CFG, seed=0)
    with pytest.raises(UsageError, match="offloads weights"):
        device_map_of(model, {"embed": "cpu", "blocks.0": "disk"})
    with pytest.raises(UsageError, match="not a torch device|not available"):
        device_map_of(model, "tpu9=0-2")


def test_verify_with_a_device_map_from_the_cli(capsys):
    needs("accelerate")
    assert main(["verify", str(REPO / "specs/induction.yaml"), "--device-map", "cpu=0-1", "--json"]) == 0
    assert main(["scan", "builtin:attn-only-2l", "--device-map", "cpu=0-1", "--device", "cpu"]) == 2
    assert "not both" in capsys.readouterr().err
    spec = load_spec(REPO / "specs/induction.yaml")
    assert verify(spec).passed
