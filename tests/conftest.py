"""Shared fixtures: the shipped model, small random models, the --runslow switch, optional
dependencies (tests that need one skip with a reason when it is missing), float32 tolerances,
and a guard that fails the run when a test leaves files in the repository."""

from __future__ import annotations

import copy
import importlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from circuitry.model import HookedTransformer, ModelConfig

REPO = Path(__file__).resolve().parents[1]

# Hypothesis keeps its example database and caches in ./.hypothesis (the repository root) unless told
# otherwise: keep them in the temporary directory (still shared between runs, so failures replay)
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "circuitry-tests-hypothesis"))


@pytest.fixture
def two_threads():
    """At most two torch threads for the test (tiny models: more threads only add scheduling noise)."""
    n = torch.get_num_threads()
    torch.set_num_threads(min(n, 2))
    yield
    torch.set_num_threads(n)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if not (torch.cuda.is_available() or os.environ.get("CIRCUITRY_TEST_DEVICE")):
        no_cuda = pytest.mark.skip(reason="cuda: no CUDA device here")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(no_cuda)
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# ------------------------------------------------------------------ optional dependencies
INSTALL_HINTS = {
    "matplotlib": "pip install 'circuitry[plot]'",
    "transformers": "pip install 'circuitry[hf]'",
    "numpy": "pip install numpy",
}


def has_module(name: str) -> bool:
    """Whether `import name` works (a module set to None in sys.modules, as tests do to hide it, does not)."""
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def requires(name: str):
    """A skipif marker for a test that needs the optional package `name`."""
    return pytest.mark.skipif(not has_module(name),
                              reason=f"{name} is not installed ({INSTALL_HINTS.get(name, 'pip install ' + name)})")


def needs(name: str):
    """Inside a test or fixture: the module `name`, or skip the test with a reason when it is missing."""
    return pytest.importorskip(name, reason=f"{name} is not installed "
                                            f"({INSTALL_HINTS.get(name, 'pip install ' + name)})")


@pytest.fixture
def mpl():
    """matplotlib, or skip: for every test that draws a PNG."""
    return needs("matplotlib")


@pytest.fixture
def no_matplotlib(monkeypatch):
    """matplotlib made unimportable for one test (`import matplotlib` raises ImportError)."""
    import sys

    for name in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)


# ------------------------------------------------------------------ models
@pytest.fixture(scope="session")
def full_run(tmp_path_factory):
    """The real run: 1500 steps of the default recipe (seed 0), a checkpoint every 100; trained once per
    session for the slow tests that read it (track, verify --checkpoints, the loss bump).
    CIRCUITRY_TEST_FULL_RUN=DIR reuses a run that `circuitry train --steps 1500 --checkpoint-every 100` wrote."""
    from circuitry.cli import main

    given = os.environ.get("CIRCUITRY_TEST_FULL_RUN")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("full-run")
    # the shipped model's command with checkpoints (test_train checks that it makes the shipped weights)
    assert main(["train", "--steps", "1500", "--seed", "0", "--checkpoint-every", "100", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def shipped():
    """The embedded default model, builtin:attn-only-2l."""
    from circuitry.sources import load_model

    return load_model("builtin:attn-only-2l")


@pytest.fixture(scope="session")
def shipped64(shipped):
    """A float64 copy of the shipped model, for identities checked to float64 rounding."""
    return copy.deepcopy(shipped).double()


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


# ------------------------------------------------------------------ float32 tolerances
F32_EPS = torch.finfo(torch.float32).eps  # 1.19e-7


def f32_atol(reference: torch.Tensor, ulps: float = 32) -> float:
    """Absolute tolerance for two float32 computations of the same values in another order of
    summation (another kernel, batch shape or CPU): `ulps` float32 epsilons of the largest
    magnitude in `reference`. A float32 dot product of n terms is off by at most about
    n * eps * sum|terms|; a few layers of d_model = 32..64 long sums, with partial cancellation,
    stay well inside 32 eps of the largest value (measured: under 3 eps)."""
    return ulps * F32_EPS * float(reference.detach().abs().max())


@pytest.fixture(autouse=True)
def _no_grad_leak():
    torch.set_grad_enabled(True)
    yield


# ------------------------------------------------------------------ tests write nothing into the repository
def _untracked_files() -> set[str] | None:
    """Untracked files of the repository that git does not ignore; None without git or a work tree."""
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        return None
    try:
        out = subprocess.run([git, "status", "--porcelain", "--untracked-files=all", "-z"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return {entry[3:] for entry in out.stdout.split("\0") if entry.startswith("?? ")}


_GUARD_KEY = pytest.StashKey[set]()
_LEFT_KEY = pytest.StashKey[list]()


def pytest_sessionstart(session):
    files = _untracked_files()
    if files is not None:
        session.config.stash[_GUARD_KEY] = files


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    before = session.config.stash.get(_GUARD_KEY, None)
    if before is None:
        return
    after = _untracked_files()
    new = sorted((after or set()) - before)
    if new:
        session.config.stash[_LEFT_KEY] = new
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    new = config.stash.get(_LEFT_KEY, None)
    if new:
        terminalreporter.section("files left in the repository", sep="=", red=True, bold=True)
        terminalreporter.line("tests must write to tmp_path (or the git-ignored test-artifacts/); "
                              "these untracked files appeared during the run:", red=True)
        for name in new:
            terminalreporter.line(f"  {name}")
