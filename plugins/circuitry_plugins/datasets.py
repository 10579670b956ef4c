"""Standard data generators: repeated random tokens, periodic repeats, token-id files."""

from __future__ import annotations

from circuitry import hookimpl
from circuitry.data import periodic_tokens, repeated_tokens
from circuitry.tokenfiles import token_file
from circuitry.records import Dataset


def _repeated(model, *, batch: int, seq_len: int, n_repeats: int, seed: int):
    cfg = model.cfg
    return repeated_tokens(cfg.d_vocab, cfg.bos_token_id, batch=batch, seq_len=seq_len,
                           n_repeats=n_repeats, seed=seed)


def _periodic(model, *, batch: int, n_ctx: int, period: int, seed: int):
    cfg = model.cfg
    return periodic_tokens(cfg.d_vocab, cfg.bos_token_id, batch=batch, n_ctx=n_ctx or cfg.n_ctx,
                           period=period or None, seed=seed)


def _file(model, *, path: str):
    return token_file(path, model.cfg.d_vocab)


@hookimpl
def circuitry_datasets():
    return [
        Dataset("repeated", "BOS + a random token sequence of seq_len tokens repeated n_repeats times",
                _repeated, {"batch": 32, "seq_len": 10, "n_repeats": 2, "seed": 0}),
        Dataset("periodic", "BOS + a random block tiled to n_ctx tokens, as in training "
                            "(period 0: drawn from 8..24)",
                _periodic, {"batch": 32, "n_ctx": 0, "period": 0, "seed": 0}),
        Dataset("file", "token ids from a .txt (one sequence per line), .npy or .pt file",
                _file, {"path": ""}),
    ]
