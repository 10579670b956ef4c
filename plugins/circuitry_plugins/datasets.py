"""Standard data generators: repeated random tokens, periodic repeats, token-id files.

Random tokens never include the model's special ids (BOS, and its
tokenizer's BOS, EOS and padding ids), whatever their position in the
vocabulary.
"""

from __future__ import annotations

from circuitry import hookimpl
from circuitry.data import periodic_tokens, repeated_tokens, special_ids
from circuitry.records import Dataset
from circuitry.tokenfiles import token_file


def _bos(model) -> int:
    return int(model.cfg.bos_token_id is not None)


def _repeated(model, *, batch: int, seq_len: int, n_repeats: int, seed: int):
    cfg = model.cfg
    return repeated_tokens(cfg.d_vocab, cfg.bos_token_id, batch=batch, seq_len=seq_len,
                           n_repeats=n_repeats, seed=seed, exclude=special_ids(model))


def _repeated_shape(model, *, batch: int, seq_len: int, n_repeats: int, seed: int) -> tuple[int, int]:
    return batch, _bos(model) + seq_len * n_repeats


def _periodic(model, *, batch: int, n_ctx: int, period: int, seed: int):
    cfg = model.cfg
    return periodic_tokens(cfg.d_vocab, cfg.bos_token_id, batch=batch, n_ctx=n_ctx or cfg.n_ctx,
                           period=period or None, seed=seed, exclude=special_ids(model))


def _periodic_shape(model, *, batch: int, n_ctx: int, period: int, seed: int) -> tuple[int, int]:
    return batch, n_ctx or model.cfg.n_ctx


def _file(model, *, path: str):
    return token_file(path, model.cfg.d_vocab)


POSITIVE = (1, None)


@hookimpl
def circuitry_datasets():
    return [
        Dataset("repeated", "BOS + a random token sequence of seq_len tokens repeated n_repeats times",
                _repeated, {"batch": 32, "seq_len": 10, "n_repeats": 2, "seed": 0},
                limits={"batch": POSITIVE, "seq_len": POSITIVE, "n_repeats": POSITIVE}, shape=_repeated_shape),
        Dataset("periodic", "BOS + a random block tiled to n_ctx tokens, as in training "
                            "(period 0: drawn from 8..24; n_ctx 0: the model's context)",
                _periodic, {"batch": 32, "n_ctx": 0, "period": 0, "seed": 0},
                limits={"batch": POSITIVE, "n_ctx": (0, None), "period": (0, None)}, shape=_periodic_shape),
        Dataset("file", "token ids from a .txt (one sequence per line), .npy or .pt file",
                _file, {"path": ""}, paths=("path",)),
    ]
