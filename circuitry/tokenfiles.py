"""Token-id files as token batches: .txt (one sequence per line), .npy and .pt.

Files come from users and other programs, so everything is checked before it
is used: the type of file, its shape, its dtype and the range of its ids;
pickles are never loaded (.npy without pickles, .pt with weights_only), and
the memory a file's ids need is compared with the budget before they are read.
"""

from __future__ import annotations

from array import array
from pathlib import Path

import torch

from circuitry.budget import require
from circuitry.data import TokenBatch, predictable_from_repeats
from circuitry.errors import ModelLoadError, UsageError
from circuitry.fileio import path_kind

INT64_MAX = 2**63 - 1
TORCH_INTS = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def token_file(path: str | Path, d_vocab: int | None = None) -> TokenBatch:
    """Token ids from a file: .txt (whitespace-separated ids, one sequence per line),
    .npy (integer array [batch, pos]) or .pt (a tensor, loaded with weights_only)."""
    path = Path(path)
    kind = path_kind(path)
    if kind is None:
        raise UsageError(f"no such token file: {path}")
    if kind == "dir":
        raise UsageError(f"{path}: is a directory, expected a token file (.txt, .npy or .pt)")
    readers = {".txt": _read_txt, ".npy": _read_npy, ".pt": _read_pt}
    suffix = path.suffix.lower()
    if suffix not in readers:
        raise UsageError(f"{path}: unsupported token file type {suffix!r}; use .txt, .npy or .pt")
    tokens = _checked(readers[suffix](path), path, d_vocab)
    pred = predictable_from_repeats(tokens)
    fresh = ~pred
    fresh[:, -1] = False
    return TokenBatch(tokens, pred, fresh, None, f"tokens from {path.name}")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _read_txt(path: Path) -> torch.Tensor:
    """Whitespace-separated ids, one sequence per line (blank lines skipped), as int64."""
    require(8 * _size(path), f"{path}: the token ids")
    ids, lengths = array("q"), []
    try:
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if line.strip():
                    lengths.append(_parse_line(line, path, i, ids))
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x})") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not lengths or len(set(lengths)) != 1:
        raise UsageError(f"{path}: needs at least one line, all lines of equal length")
    return torch.frombuffer(ids, dtype=torch.int64).clone().reshape(len(lengths), lengths[0])


def _parse_line(line: str, path: Path, lineno: int, ids: array) -> int:
    """Append one line's ids to `ids`; the number of ids."""
    try:
        row = [int(x) for x in line.split()]
    except ValueError:
        raise UsageError(f"{path}:{lineno}: token ids must be whitespace-separated integers") from None
    try:
        ids.extend(row)
    except OverflowError:
        raise UsageError(f"{path}:{lineno}: token id beyond the int64 range") from None
    return len(row)


def _read_npy(path: Path) -> torch.Tensor:
    """An integer .npy array (never a pickle), memory-mapped until its size is checked."""
    try:
        import numpy as np
    except ImportError:
        raise UsageError(f"{path}: reading .npy files needs numpy (pip install numpy)") from None
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, EOFError, OSError) as exc:
        raise UsageError(f"{path}: not a plain .npy array ({str(exc).strip() or type(exc).__name__})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "iu":
        what = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
        raise UsageError(f"{path}: expected integer token ids, got {what}")
    require(8 * arr.size, f"{path}: the token ids")
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 8 and arr.size and int(arr.max()) > INT64_MAX:
        raise UsageError(f"{path}: token id {int(arr.max())} beyond the int64 range")
    return torch.from_numpy(np.array(arr, dtype=np.int64))


def _read_pt(path: Path) -> torch.Tensor:
    """A tensor of integer ids from a torch file read with weights_only."""
    from circuitry.model.io import read_torch_file

    try:
        tokens = read_torch_file(path)
    except ModelLoadError as exc:
        raise UsageError(str(exc)) from None
    if not isinstance(tokens, torch.Tensor):
        raise UsageError(f"{path}: expected a tensor of token ids, got {type(tokens).__name__}")
    if tokens.layout != torch.strided or tokens.dtype not in TORCH_INTS:
        raise UsageError(f"{path}: expected a dense tensor of integer token ids, got "
                         f"{str(tokens.dtype).removeprefix('torch.')} ({str(tokens.layout).removeprefix('torch.')})")
    require(8 * tokens.numel(), f"{path}: the token ids")
    return tokens.long()


def _checked(tokens: torch.Tensor, path: Path, d_vocab: int | None) -> torch.Tensor:
    """[batch, pos] int64 ids, at least one, within the vocabulary."""
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or not tokens.numel():
        raise UsageError(f"{path}: expected integer token ids of shape [batch, pos], got {tuple(tokens.shape)}")
    if d_vocab is not None and (tokens.min() < 0 or tokens.max() >= d_vocab):
        raise UsageError(f"{path}: token ids must lie in 0..{d_vocab - 1}")
    return tokens
