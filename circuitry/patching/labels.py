"""Axis labels of patching results: layers, heads and positions (named where every prompt agrees)."""

from __future__ import annotations

from circuitry.tasks import END


def layer_labels(n_layers: int) -> tuple[str, ...]:
    return tuple(f"L{l}" for l in range(n_layers))


def head_labels(n_heads: int) -> tuple[str, ...]:
    return tuple(f"H{h}" for h in range(n_heads))


def position_labels(batch) -> tuple[str, ...]:
    """One label per position index of a ContrastiveBatch: the names of the named positions that sit at
    that index in every prompt (joined with '/'; END is the last index; a name with k > 1 positions per
    prompt is labelled name[j]), else the index itself ('7')."""
    n_pos = batch.tokens.shape[1]
    names: dict[int, list[str]] = {}
    for name, idx in batch.positions.items():  # name -> [batch, k]
        k = idx.shape[1]
        for j in range(k):
            col = idx[:, j]
            if col.numel() and bool((col == col[0]).all()):
                label = name if k == 1 else f"{name}[{j}]"
                names.setdefault(int(col[0]), []).append(label)
    if END not in batch.positions:
        names.setdefault(n_pos - 1, []).append(END)
    return tuple("/".join(names[i]) if i in names else str(i) for i in range(n_pos))
