"""Hostile and malformed model and token files: refused before anything runs or is allocated.

Every case goes through the real CLI (`circuitry info` and `circuitry scan`) and
through `load_model`: exit code 2, exactly one line on stderr that names the file
and the problem, no traceback. Pickles whose unpickling would create a marker
file must leave no marker; absurd configs must be refused by the memory budget
(set small here) before a model is built, which the tests prove by making any
model construction fail.
"""

from __future__ import annotations

import builtins
import json
import math
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from circuitry.cli import main
from circuitry.errors import UsageError
from circuitry.model import HookedTransformer, ModelConfig, save_model
from circuitry.sources import check_device, load_model
from circuitry.tokenfiles import token_file

BUDGET = "256MB"
BASE = {"n_layers": 1, "d_model": 8, "n_heads": 2, "d_head": 4, "d_vocab": 16, "n_ctx": 8}
TL_BASE = {**BASE, "d_mlp": 16, "act_fn": "gelu", "normalization_type": "LN"}


class Exploit:
    """Unpickling this calls `fn(*args)`: open(marker, "w") or os.system("touch marker")."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.fixture(autouse=True)
def small_budget(monkeypatch):
    monkeypatch.setenv("CIRCUITRY_MEMORY_BUDGET", BUDGET)


@pytest.fixture
def no_build(monkeypatch):
    """Call it once the files are written: from then on, building a model (canonical or
    transformers) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the file was refused")

    def forbid() -> None:
        monkeypatch.setattr(HookedTransformer, "_build", refuse)
        try:
            import transformers
        except ImportError:
            return
        monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)

    return forbid


def assert_refused(ref: str, words: list[str], capsys, commands=("info", "scan")) -> None:
    """Exit 2 and one line naming `words` from every command, a one-line UsageError from load_model."""
    capsys.readouterr()  # output of fixtures (transformers' progress bars)
    for command in commands:
        rc = main([command, ref])
        cap = capsys.readouterr()
        lines = cap.err.strip().splitlines()
        assert rc == 2, (command, cap.err)
        assert len(lines) == 1 and lines[0].startswith("error:"), (command, cap.err)
        assert "Traceback" not in cap.err and cap.out == ""
        for w in words:
            assert w in lines[0], (w, lines[0])
    with pytest.raises(UsageError) as info:
        load_model(ref)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ building blocks
def _native_model(**overrides) -> HookedTransformer:
    return HookedTransformer(ModelConfig(**{**BASE, **overrides}), seed=0)


def native_dir(tmp_path: Path) -> Path:
    """A valid circuitry checkpoint directory."""
    return save_model(_native_model(), tmp_path / "native")


def tl_dir(tmp_path: Path) -> Path:
    """A valid TransformerLens checkpoint directory (config.json + model.pt)."""
    d = tmp_path / "tl"
    d.mkdir()
    model = _native_model(d_mlp=16, normalization="LN", attn_bias=True, mlp_bias=True)
    torch.save(model.state_dict(), d / "model.pt")
    (d / "config.json").write_text(json.dumps(TL_BASE))
    return d


@pytest.fixture(scope="module")
def hf_template(tmp_path_factory) -> Path:
    """A valid tiny GPT-2 save_pretrained directory."""
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("hf") / "gpt2"
    config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, n_positions=8, vocab_size=16,
                                     bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(d)
    return d


def hf_dir(tmp_path: Path, template: Path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "hf"))


def make(source: str, tmp_path: Path, request) -> tuple[Path, str]:
    """(directory, reference) of a valid checkpoint of `source`."""
    if source == "native":
        d = native_dir(tmp_path)
        return d, str(d)
    if source == "tl":
        d = tl_dir(tmp_path)
        return d, f"tl:{d}"
    d = hf_dir(tmp_path, request.getfixturevalue("hf_template"))
    return d, f"hf:{d}"


def edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("source", ["native", "tl", "hf"])
def test_the_valid_checkpoints_load(source, tmp_path, request):
    """The baselines that every hostile case below spoils in one way."""
    _, ref = make(source, tmp_path, request)
    assert load_model(ref).cfg.n_layers == 1


def test_a_plain_pytorch_model_bin_still_loads(tmp_path, hf_template):
    """Refusing pickles that import code does not refuse plain tensor state dicts."""
    from safetensors.torch import load_file

    d = hf_dir(tmp_path, hf_template)
    torch.save(load_file(str(d / "model.safetensors")), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    assert load_model(f"hf:{d}").cfg.d_model == 8


# ------------------------------------------------------------------ lying safetensors headers
def _safetensors(header: dict, data: bytes = b"", length: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def _tensor(shape, start, end, dtype="F32") -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


HEADERS = {
    "0 bytes": b"",
    "garbage": b"\xff" * 64,
    "header length beyond the file": _safetensors({"a": _tensor([2], 0, 8)}, b"\0" * 8, length=10**9),
    "offsets beyond the file": _safetensors({"a": _tensor([2], 0, 8000)}, b"\0" * 8),
    "negative offsets": _safetensors({"a": _tensor([2], -8, 0)}, b"\0" * 8),
    "overlapping offsets": _safetensors({"a": _tensor([2], 0, 8), "b": _tensor([2], 4, 12)}, b"\0" * 12),
    "shape does not match the bytes": _safetensors({"a": _tensor([3], 0, 8)}, b"\0" * 8),
    "a 10**12-element tensor": _safetensors({"a": _tensor([10**6, 10**6], 0, 4 * 10**12)}, b"\0" * 8),
    "metadata that is not strings": _safetensors({"__metadata__": {"x": 5}, "a": _tensor([2], 0, 8)}, b"\0" * 8),
}


@pytest.mark.parametrize("source", ["native", "tl", "hf"])
@pytest.mark.parametrize("header", list(HEADERS))
def test_lying_safetensors_headers(source, header, tmp_path, request, capsys, no_build):
    d, ref = make(source, tmp_path, request)
    for old in [*d.glob("*.pt"), *d.glob("*.safetensors")]:
        old.unlink()
    (d / "model.safetensors").write_bytes(HEADERS[header])
    no_build()
    assert_refused(ref, ["model.safetensors", "not a readable safetensors file"], capsys)


@pytest.mark.parametrize("source", ["native", "tl", "hf"])
def test_a_directory_named_like_the_weights(source, tmp_path, request, capsys, no_build):
    d, ref = make(source, tmp_path, request)
    for old in [*d.glob("*.pt"), *d.glob("*.safetensors")]:
        old.unlink()
    (d / "model.safetensors").mkdir()
    no_build()
    assert_refused(ref, ["model.safetensors", "is a directory"], capsys)


# ------------------------------------------------------------------ pickles that would run code
def _exploits(marker: Path) -> dict[str, Exploit]:
    return {"open": Exploit(builtins.open, str(marker), "w"),
            "os.system": Exploit(os.system, f"touch {marker}")}


@pytest.mark.parametrize("how", ["torch.save", "plain pickle"])
@pytest.mark.parametrize("exploit", ["open", "os.system"])
@pytest.mark.parametrize("source", ["tl", "hf"])
def test_pickles_that_would_run_code_are_refused(source, exploit, how, tmp_path, request, capsys, no_build):
    import pickle

    d, ref = make(source, tmp_path, request)
    marker = tmp_path / "PWNED"
    payload = {"embed.W_E": torch.zeros(2), "evil": _exploits(marker)[exploit]}
    for old in [*d.glob("*.pt"), *d.glob("*.safetensors")]:
        old.unlink()
    target = d / ("model.pt" if source == "tl" else "pytorch_model.bin")
    if how == "torch.save":
        torch.save(payload, target)
    else:
        target.write_bytes(pickle.dumps(payload))
    fn = _exploits(marker)[exploit].fn
    no_build()
    assert_refused(ref, [target.name, f"refused: the pickle would import {fn.__module__}.{fn.__name__}"], capsys)
    assert not marker.exists()
    err = str(pytest.raises(UsageError, load_model, ref).value)
    assert "weights_only=True" in err and "Re-running" not in err  # no torch advice text


def test_a_pickle_passed_as_a_native_checkpoint_is_never_unpickled(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    path = tmp_path / "model.bin"
    torch.save({"x": _exploits(marker)["open"]}, path)
    assert_refused(str(path), ["model.bin", "only safetensors checkpoints are loaded"], capsys)
    assert not marker.exists()


# ------------------------------------------------------------------ absurd configs
BUDGET_WORDS = ["over the memory budget of 244.1 MiB"]
NATIVE_CONFIGS = {
    "n_layers 10**9": ({"n_layers": 10**9}, BUDGET_WORDS),
    "d_vocab 10**8": ({"d_vocab": 10**8}, BUDGET_WORDS),
    "n_ctx 10**9": ({"n_ctx": 10**9}, BUDGET_WORDS),
    "d_head 10**7": ({"d_head": 10**7}, BUDGET_WORDS),
    "0 heads": ({"n_heads": 0}, ["n_heads must be a positive integer, got 0"]),
    "d_head 0": ({"d_head": 0}, ["d_head must be a positive integer, got 0"]),
    "n_layers beyond int64": ({"n_layers": 10**30}, ["n_layers must be a positive integer"]),
    "a string": ({"n_layers": "2"}, ["n_layers must be a positive integer, got '2'"]),
    "a list": ({"d_model": [8]}, ["d_model must be a positive integer, got [8]"]),
    "a bool": ({"n_heads": True}, ["n_heads must be a positive integer, got True"]),
    "a float": ({"n_ctx": 8.0}, ["n_ctx must be a positive integer, got 8.0"]),
    "NaN epsilon": ({"norm_eps": math.nan}, ["norm_eps must be a finite number > 0, got nan"]),
    "infinite rotary base": ({"rotary_base": math.inf}, ["rotary_base must be a finite number > 0, got inf"]),
    "a 400-digit rotary base": ({"rotary_base": 10**400}, ["rotary_base must be a finite number > 0"]),
    "attn_scale 0": ({"attn_scale": 0}, ["attn_scale must be a finite number > 0 or null, got 0"]),
    "n_kv_heads not dividing": ({"n_kv_heads": 3}, ["n_heads (2) must be a multiple of n_kv_heads (3)"]),
    "odd rotary_dim": ({"positional": "rotary", "rotary_dim": 3}, ["rotary_dim must be even"]),
    "a string flag": ({"attn_bias": "false"}, ["attn_bias must be true or false, got 'false'"]),
    "a dict as a choice": ({"act_fn": {"x": 1}}, ["act_fn must be one of"]),
    "bos beyond the vocabulary": ({"bos_token_id": 16}, ["bos_token_id 16 is outside the vocabulary"]),
    "a huge string": ({"name": None, "n_layers": "x" * 10**5}, ["(100002 characters)"]),
}


@pytest.mark.parametrize("case", list(NATIVE_CONFIGS))
def test_absurd_native_configs(case, tmp_path, capsys, no_build):
    d = native_dir(tmp_path)
    changes, words = NATIVE_CONFIGS[case]
    edit_config(d, **changes)
    no_build()
    assert_refused(str(d), ["config.json", *words], capsys)


TL_CONFIGS = {
    "n_layers 10**9": ({"n_layers": 10**9}, BUDGET_WORDS),
    "d_vocab 10**8": ({"d_vocab": 10**8}, BUDGET_WORDS),
    "n_ctx 10**9": ({"n_ctx": 10**9}, BUDGET_WORDS),
    "d_head 10**7": ({"d_head": 10**7, "n_heads": 1}, BUDGET_WORDS),
    "0 heads": ({"n_heads": 0}, ["n_heads must be a positive integer (or null), got 0"]),
    "d_head 0": ({"d_head": 0}, ["d_head must be a positive integer, got 0"]),
    "d_head not dividing d_model": ({"d_head": 3, "n_heads": None}, ["d_model 8 is not a multiple of d_head 3"]),
    "a string": ({"d_model": "8"}, ["d_model must be a positive integer, got '8'"]),
    "a list": ({"n_ctx": [8]}, ["n_ctx must be a positive integer, got [8]"]),
    "a bool": ({"n_layers": True}, ["n_layers must be a positive integer, got True"]),
    "NaN eps": ({"eps": math.nan}, ["eps must be a finite number, got nan"]),
    "eps 0": ({"eps": 0}, ["norm_eps must be a finite number > 0, got 0"]),
    "a 400-digit eps": ({"eps": 10**400}, ["eps must be a finite number"]),
    "attn_scale 0": ({"attn_scale": 0}, ["attn_scale must be a finite number > 0 or null, got 0"]),
    "a string flag": ({"attn_only": "no"}, ["attn_only must be true or false, got 'no'"]),
    "a refused feature of the wrong type": ({"attn_types": 5}, ["attn_types=5 is not supported"]),
    "an unhashable activation": ({"act_fn": ["gelu"]}, ["act_fn ['gelu'] is not supported"]),
    "a key with a line break": ({"bad\nkey": 1}, ["bad\\nkey=1"]),
}


@pytest.mark.parametrize("case", list(TL_CONFIGS))
def test_absurd_tl_configs(case, tmp_path, capsys, no_build):
    d = tl_dir(tmp_path)
    changes, words = TL_CONFIGS[case]
    edit_config(d, **changes)
    no_build()
    assert_refused(f"tl:{d}", ["config.json", *words], capsys)


HF_CONFIGS = {
    "n_layer 10**9": ({"n_layer": 10**9}, BUDGET_WORDS),
    "vocab_size 10**8": ({"vocab_size": 10**8}, BUDGET_WORDS),
    "n_positions 10**9": ({"n_positions": 10**9}, BUDGET_WORDS),
    "d_head 10**7": ({"n_embd": 10**7, "n_head": 1}, BUDGET_WORDS),
    "0 heads": ({"n_head": 0}, ["n_head must be a positive integer, got 0"]),
    "heads not dividing": ({"n_embd": 7}, ["hidden size 7 is not a multiple of the number of heads 2"]),
    "a string": ({"n_layer": "1"}, ["n_layer must be a positive integer, got '1'"]),
    "a list": ({"vocab_size": [16]}, ["vocab_size must be a positive integer, got [16]"]),
    "a bool": ({"n_embd": True}, ["n_embd must be a positive integer, got True"]),
    "null": ({"n_layer": None}, ["n_layer must be a positive integer, got None"]),
    "NaN epsilon": ({"layer_norm_epsilon": math.nan}, ["layer_norm_epsilon must be a finite number > 0, got nan"]),
    "a 400-digit epsilon": ({"layer_norm_epsilon": 10**400}, ["layer_norm_epsilon must be a finite number > 0"]),
    "NaN rotary fraction": ({"model_type": "gpt_neox", "rotary_pct": math.nan},
                            ["rotary_pct must be a number in (0, 1]"]),
    "a string flag": ({"tie_word_embeddings": "yes"}, ["tie_word_embeddings must be true or false, got 'yes'"]),
    "custom code (auto_map)": ({"auto_map": {"AutoModelForCausalLM": "evil.EvilModel"}},
                               ["auto_map names custom model code", "never runs code"]),
    "no model_type": ({"model_type": None}, ["no model_type"]),
    "a list as model_type": ({"model_type": ["gpt2"]}, ["no model_type"]),
}


@pytest.mark.parametrize("case", list(HF_CONFIGS))
def test_absurd_hf_configs(case, tmp_path, hf_template, capsys, no_build):
    d = hf_dir(tmp_path, hf_template)
    changes, words = HF_CONFIGS[case]
    edit_config(d, **changes)
    no_build()
    assert_refused(f"hf:{d}", ["config.json", *words], capsys)


def test_auto_map_code_is_never_imported(tmp_path, hf_template, capsys, no_build):
    d = hf_dir(tmp_path, hf_template)
    marker = tmp_path / "PWNED"
    (d / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    edit_config(d, auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"})
    no_build()
    assert_refused(f"hf:{d}", ["auto_map"], capsys)
    assert not marker.exists()


# ------------------------------------------------------------------ unreadable config files
def _deep_json(d: Path) -> None:
    (d / "config.json").write_text("[" * 100_000 + "]" * 100_000)


def _not_utf8(d: Path) -> None:
    (d / "config.json").write_bytes(b'{"n_layers": 1, "name": "\xff\xfe"}')


def _config_directory(d: Path) -> None:
    (d / "config.json").unlink()
    (d / "config.json").mkdir()


def _json_list(d: Path) -> None:
    (d / "config.json").write_text("[1, 2]")


def _huge_number(d: Path) -> None:
    (d / "config.json").write_text('{"n_layers": ' + "9" * 5000 + "}")


CONFIG_FILES = {
    "100k-deep JSON": (_deep_json, ["nested too deeply"]),
    "invalid UTF-8": (_not_utf8, ["not UTF-8 text (byte 0xff"]),
    "a directory named config.json": (_config_directory, ["is a directory, expected a file"]),
    "not an object": (_json_list, ["expected a JSON object"]),
    "a 5000-digit number": (_huge_number, ["not a usable config"]),
}


@pytest.mark.parametrize("source", ["native", "tl", "hf"])
@pytest.mark.parametrize("case", list(CONFIG_FILES))
def test_unreadable_config_files(source, case, tmp_path, request, capsys, no_build):
    d, ref = make(source, tmp_path, request)
    spoil, words = CONFIG_FILES[case]
    spoil(d)
    no_build()
    assert_refused(ref, ["config.json", *words], capsys)


def test_deep_json_in_a_safetensors_index(tmp_path, hf_template, capsys, no_build):
    d = hf_dir(tmp_path, hf_template)
    (d / "model.safetensors.index.json").write_text("{" * 0 + "[" * 100_000 + "]" * 100_000)
    no_build()
    assert_refused(f"hf:{d}", ["model.safetensors.index.json", "nested too deeply"], capsys)


# ------------------------------------------------------------------ weights that are not numbers
def _spoil_native(d: Path, value) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(d / "model.safetensors"))
    state["embed.W_E"] = state["embed.W_E"].clone()
    state["embed.W_E"][3, 1] = value
    save_file(state, str(d / "model.safetensors"))


@pytest.mark.parametrize("value, word", [(math.nan, "NaN"), (math.inf, "infinite")])
def test_nan_or_inf_weights_are_refused(value, word, tmp_path, hf_template, capsys):
    from safetensors.torch import load_file, save_file

    d = native_dir(tmp_path)
    _spoil_native(d, value)
    assert_refused(str(d), ["model.safetensors", f"tensor embed.W_E holds {word} values"], capsys)

    t = tl_dir(tmp_path)
    state = torch.load(t / "model.pt", weights_only=True)
    state["blocks.0.attn.W_Q"][0, 0, 0] = value
    torch.save(state, t / "model.pt")
    assert_refused(f"tl:{t}", ["model.pt", f"tensor blocks.0.attn.W_Q holds {word} values"], capsys)

    h = hf_dir(tmp_path, hf_template)
    state = load_file(str(h / "model.safetensors"))
    key = next(k for k in state if k.endswith("c_attn.weight"))
    state[key][0, 0] = value
    save_file(state, str(h / "model.safetensors"), metadata={"format": "pt"})
    assert_refused(f"hf:{h}", ["model.safetensors", f"{key} holds {word} values"], capsys)


def test_complex_weights_are_refused(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    d = native_dir(tmp_path)
    state = load_file(str(d / "model.safetensors"))
    state["embed.W_E"] = state["embed.W_E"].to(torch.complex64)
    save_file(state, str(d / "model.safetensors"))
    assert_refused(str(d), ["model.safetensors", "tensor embed.W_E has dtype complex64"], capsys)


# ------------------------------------------------------------------ references and devices
def test_a_300_character_model_name(tmp_path, capsys):
    name = "m" * 300
    for ref in (name, f"tl:{name}", f"hf:{tmp_path / name}", str(tmp_path / name / "model.safetensors")):
        assert_refused(ref, ["File name too long"], capsys)


def test_a_nul_byte_in_a_reference():
    for ref in ("a\0b", "tl:a\0b", "hf:./a\0b"):
        with pytest.raises(UsageError, match="not a usable path"):
            load_model(ref)


@pytest.mark.parametrize("device, words", [("cuda", "CUDA is not available here"), ("cuda:3", "CUDA"),
                                           ("mps", "MPS is not available here"), ("nonsense", "not a torch device")])
def test_unavailable_devices_are_refused_by_load_model(device, words, monkeypatch, capsys, no_build):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    no_build()
    with pytest.raises(UsageError, match=words):
        check_device(device)
    with pytest.raises(UsageError, match=words):
        load_model("builtin:attn-only-2l", device=device)
    for command in ("scan", "show"):
        args = [command, "builtin:attn-only-2l", "--device", device]
        rc = main(args + (["--head", "L0H0"] if command == "show" else []))
        lines = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and words in lines[0], (command, lines)


# ------------------------------------------------------------------ the memory estimate
@pytest.mark.parametrize("overrides", [
    {},
    {"d_mlp": 12, "normalization": "LN", "attn_bias": True, "mlp_bias": True, "unembed_bias": True},
    {"d_mlp": 12, "gated_mlp": True, "normalization": "RMS", "positional": "rotary", "n_kv_heads": 1,
     "tied_embeddings": True},
    {"normalization": "LNPre", "attn_bias": True, "attn_out_bias": False, "parallel_attn_mlp": True, "d_mlp": 5},
    {"d_mlp": 12, "gated_mlp": True, "normalization": "RMS", "positional": "rotary", "n_kv_heads": 1,
     "qk_norm": "projection", "pre_norms": False, "post_norms": True, "attn_types": ("local", "global", "local"),
     "attn_window": 3, "rotary_base_local": 10.0, "embed_scale": 2.0, "attn_scores_soft_cap": 5.0,
     "output_logits_soft_cap": 10.0,
     "rope_scaling": {"kind": "llama3", "factor": 8.0, "original_context": 16, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0}},
    {"d_mlp": 7, "normalization": "LN", "positional": "rotary", "qk_norm": "head", "post_norms": True},
])
def test_the_parameter_estimate_is_exact(overrides):
    cfg = ModelConfig(**{**BASE, "n_layers": 3, **overrides})
    assert cfg.n_params_estimate() == HookedTransformer(cfg, seed=None).n_params()


def test_a_model_over_the_budget_is_refused_before_it_is_built(tmp_path, monkeypatch, capsys):
    d = native_dir(tmp_path)
    assert load_model(str(d)).cfg.d_model == 8
    monkeypatch.setenv("CIRCUITRY_MEMORY_BUDGET", "1KB")
    monkeypatch.setattr(HookedTransformer, "_build", lambda *a: pytest.fail("built"))
    assert_refused(str(d), ["a model of", "parameters would need", "over the memory budget of 1000 B"], capsys)


# ------------------------------------------------------------------ token files
def _write(path: Path, data) -> None:
    if isinstance(data, bytes):
        path.write_bytes(data)
    elif isinstance(data, str):
        path.write_text(data)
    elif isinstance(data, np.ndarray):
        with path.open("wb") as f:
            np.save(f, data, allow_pickle=data.dtype == object)
    else:
        torch.save(data, path)


def _lying_npy() -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<i8", "fortran_order": False, "shape": (10**6, 10**6)})
    return buf.getvalue() + b"\0" * 16


TOKEN_FILES = {
    "directory x.txt": ("x.txt", None, "is a directory"),
    "0-byte .npy": ("t.npy", b"", "not a plain .npy array"),
    "empty .npy": ("t.npy", np.zeros((0,), np.int64), "got (1, 0)"),
    "empty rows .npy": ("t.npy", np.zeros((2, 0), np.int64), "got (2, 0)"),
    "ids beyond int64 (.txt)": ("t.txt", f"1 2 {2**63}\n", "t.txt:1: token id beyond the int64 range"),
    "ids beyond int64 (.npy)": ("t.npy", np.full((1, 3), 2**63 + 5, np.uint64), "beyond the int64 range"),
    "complex .npy": ("t.npy", np.zeros((2, 3), np.complex64), "expected integer token ids, got complex64"),
    "bool .npy": ("t.npy", np.zeros((2, 3), bool), "expected integer token ids, got bool"),
    "object .npy (a pickle)": ("t.npy", np.array([{}], dtype=object), "not a plain .npy array"),
    "lying .npy header": ("t.npy", _lying_npy(), "not a plain .npy array"),
    "complex .pt": ("t.pt", torch.zeros(2, 3, dtype=torch.complex64), "got complex64"),
    "sparse .pt": ("t.pt", torch.eye(3, dtype=torch.long).to_sparse(), "expected a dense tensor"),
    "invalid UTF-8 .txt": ("t.txt", b"1 2 \xff\n", "not UTF-8 text"),
    "a 5000-digit id": ("t.txt", "1 " + "9" * 5000 + "\n", "must be whitespace-separated integers"),
}


@pytest.mark.parametrize("case", list(TOKEN_FILES))
def test_hostile_token_files(case, tmp_path, capsys):
    name, data, words = TOKEN_FILES[case]
    path = tmp_path / name
    if data is None:
        path.mkdir()
    else:
        _write(path, data)
    with pytest.raises(UsageError) as info:
        token_file(path, 65)
    assert words in str(info.value) and "\n" not in str(info.value)
    rc = main(["scan", "builtin:attn-only-2l", "--data", str(path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and name in lines[0] and words in lines[0], lines


def test_a_pickled_token_file_never_runs(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    path = tmp_path / "t.pt"
    torch.save({"tokens": torch.zeros(2, 3, dtype=torch.long), "x": _exploits(marker)["os.system"]}, path)
    rc = main(["scan", "builtin:attn-only-2l", "--data", str(path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "refused: the pickle would import" in lines[0]
    assert not marker.exists()
