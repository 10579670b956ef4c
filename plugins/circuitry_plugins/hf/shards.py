"""The weights of a Hugging Face directory, read tensor by tensor without building the transformers model.

`CheckpointTensors` is a read-only mapping from the parameter names a
transformers model would have (`model.layers.0.self_attn.q_proj.weight`) to
tensors read from the directory's files when asked for: single or sharded
safetensors (with or without `model.safetensors.index.json`), or
`pytorch_model*.bin` files read with `weights_only` and memory-mapped.
A safetensors tensor is read with one `readinto` from its offsets in the file
into a tensor of its own, not memory-mapped (mapped pages of the files would
stay resident beside the converted model): the memory held while loading is
what the conversion keeps plus the tensor being read.

Names are normalised to the model's: checkpoints written by the base model
class (`h.0.attn.c_attn.weight`, no `transformer.` prefix) get the prefix of
their architecture, and non-parameter buffers some checkpoints carry (GPT-2's
`attn.bias` masks, rotary `inv_freq`) are left out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from circuitry.errors import ModelLoadError
from circuitry.model.io import check_weights, read_json, read_torch_file

# the attribute that holds the base model in the causal-LM class of each architecture
BASE_PREFIX = {"gpt2": "transformer.", "gptj": "transformer.", "gpt_neox": "gpt_neox."}
HEAD_PREFIXES = ("lm_head.", "embed_out.")
_BUFFERS = (".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq")


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}


def safetensors_header(file: Path) -> tuple[dict[str, Any], int]:
    """(tensor name -> {dtype, shape, data_offsets}, offset of the data) of a safetensors file, from its
    header (8-byte little-endian length, then JSON). The header was checked by `safetensors_metadata`."""
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def read_tensor(file: Path, key: str, headers: dict[Path, tuple[dict[str, Any], int]]) -> torch.Tensor:
    """One tensor of a safetensors file, read into memory of its own (no mapping of the file)."""
    if file not in headers:
        headers[file] = safetensors_header(file)
    header, data_start = headers[file]
    entry = header[key]
    dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
    if dtype is None:
        raise ModelLoadError(f"{file}: tensor {key} has dtype {entry['dtype']}, which circuitry does not read")
    begin, end = entry["data_offsets"]
    out = torch.empty(entry["shape"], dtype=dtype)
    if end - begin != out.numel() * out.element_size():
        raise ModelLoadError(f"{file}: tensor {key} has {end - begin} bytes for shape {entry['shape']}")
    with open(file, "rb") as f:
        f.seek(data_start + begin)
        if out.numel() and f.readinto(out.view(-1).view(torch.uint8).numpy().data) != end - begin:
            raise ModelLoadError(f"{file}: tensor {key} is cut short (the file is truncated)")
    return out


def base_prefix(model_type: str) -> str:
    return BASE_PREFIX.get(model_type, "model.")


def is_buffer(key: str) -> bool:
    """Whether a checkpoint key names a buffer a transformers model recomputes (a causal mask, rotary
    frequencies), not a parameter."""
    return key.endswith(_BUFFERS) or key in ("attn.bias", "attn.masked_bias")


class CheckpointTensors(Mapping[str, torch.Tensor]):
    """Parameter name -> tensor of a save_pretrained directory, read on access (see the module docstring)."""

    def __init__(self, directory: Path, model_type: str, dtype: torch.dtype | None = None) -> None:
        self.directory = directory
        self.dtype = dtype  # what the conversion receives each tensor as (None: float32)
        prefix = base_prefix(model_type)
        self._headers: dict[Path, tuple[dict[str, Any], int]] = {}
        self._torch_files: dict[Path, dict[str, torch.Tensor]] = {}
        self._where: dict[str, tuple[Path, str]] = {}  # parameter name -> (file, key in that file)
        for file, keys in self._files():
            for key in keys:
                if is_buffer(key):
                    continue
                name = key if key.startswith((prefix, *HEAD_PREFIXES)) else prefix + key
                if name in self._where:
                    raise ModelLoadError(f"{file}: tensor {key!r} is also in {self._where[name][0]}")
                self._where[name] = (file, key)

    def _files(self) -> list[tuple[Path, list[str]]]:
        files = sorted(self.directory.glob("*.safetensors"))
        if files:
            return [(f, self._safetensors_keys(f)) for f in files if self._indexed(f, files)]
        files = sorted(self.directory.glob("pytorch_model*.bin"))
        if not files:
            raise ModelLoadError(f"{self.directory}: no weights (*.safetensors or pytorch_model*.bin)")
        return [(f, list(self._torch_file(f))) for f in files]

    def _indexed(self, file: Path, files: list[Path]) -> bool:
        """With an index, only the files it names (a directory may hold stale shards of another save)."""
        index = self.directory / "model.safetensors.index.json"
        if not index.exists():
            return True
        names = set(read_json(index).get("weight_map", {}).values())
        missing = sorted(n for n in names if not (self.directory / str(n)).exists())
        if missing:
            raise ModelLoadError(f"{index}: names shard {missing[0]!r}, which is not in {self.directory}")
        return file.name in names

    @staticmethod
    def _safetensors_keys(file: Path) -> list[str]:
        return list(safetensors_header(file)[0])

    def _torch_file(self, file: Path) -> dict[str, torch.Tensor]:
        if file not in self._torch_files:
            state = read_torch_file(file)
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise ModelLoadError(f"{file}: expected a state dict of tensors")
            self._torch_files[file] = state
        return self._torch_files[file]

    def close(self) -> None:
        """Forget the torch files read (safetensors files are not kept open)."""
        self._torch_files.clear()

    def __getitem__(self, name: str) -> torch.Tensor:
        file, key = self._where[name]
        if file.suffix == ".safetensors":
            tensor = read_tensor(file, key, self._headers)
        else:
            tensor = self._torch_file(file)[key]
        check_weights({key: tensor}, str(file))
        return tensor

    def __contains__(self, name: object) -> bool:  # without reading the tensor
        return name in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def largest_file(self) -> int:
        """Bytes of the largest weight file (what reading one file may hold at once)."""
        return max((f.stat().st_size for f, _ in self._where.values()), default=0)
