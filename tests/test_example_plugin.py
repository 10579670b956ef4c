"""The example third-party plugin in examples/: installed into a scratch directory with pip,
it shows up in `circuitry plugins` and its detector and dataset work in `circuitry scan`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "circuitry-example-plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(EXAMPLE)],
        capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"pip install of the example plugin failed:\n{proc.stderr}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")]))
    return env


def _circuitry(env, *args):
    return subprocess.run([sys.executable, "-m", "circuitry", *args], capture_output=True, text=True, env=env)


def test_example_plugin_listed(installed):
    proc = _circuitry(installed, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    plugins = {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}
    ex = plugins["example"]
    assert ex["status"] == "loaded" and ex["version"] == "0.2.0"
    assert ex["registers"] == {"detectors": ["current_token"], "datasets": ["shuffled"]}


def test_example_detector_and_dataset_in_scan(installed, shipped):
    proc = _circuitry(installed, "scan", "builtin:attn-only-2l", "--data", "shuffled:batch=4,length=12,seed=2",
                      "--detectors", "current_token,induction", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    # independent: the diagonal of the patterns on the same data, built here
    gen = torch.Generator().manual_seed(2)
    block = torch.stack([torch.randperm(64, generator=gen)[:12] for _ in range(4)])
    tokens = block.repeat(1, 2)
    with torch.no_grad():
        _, cache = shipped.run_with_cache(tokens)
    for row in doc["heads"]:
        l, h = (int(x) for x in row["head"][1:].split("H"))
        ref = cache["pattern", l][:, h].diagonal(dim1=-2, dim2=-1).mean()
        assert abs(row["current_token"] - float(ref)) < 1e-5
    assert max(r["induction"] for r in doc["heads"]) > 0.5
