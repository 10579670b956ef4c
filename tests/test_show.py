"""`circuitry show`: terminal heatmaps, HTML and PNG files, and its errors.

The numbers printed or written are compared with the attention pattern of an
independent run of the model on the same tokens.
"""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
import torch

from circuitry import cli
from circuitry.data import repeated_tokens

MODEL = "builtin:attn-only-2l"


@pytest.fixture(autouse=True)
def show_command(monkeypatch):
    """The command is looked up through COMMANDS (kept here until the CLI registers it)."""
    monkeypatch.setitem(cli.COMMANDS, "show", "circuitry.cli.show")


def default_tokens() -> torch.Tensor:
    """The first sequence of the default data, `repeated` with its defaults (batch 32, 10 x 2, seed 0) [pos]."""
    return repeated_tokens(65, 64, batch=32, seq_len=10, n_repeats=2, seed=0).tokens[0]


def pattern(model, tokens: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[None])
    return cache["pattern", layer][0, head]  # [q, k]


def terminal_grid(text: str, head: str, n: int) -> list[list[int]]:
    """The percentages printed for `head`: rows `label │ cells`, three characters a cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(head))
    rows = [line for line in lines[start:] if "│" in line][:n]
    grid = []
    for line in rows:
        cells = line.split("│", 1)[1]
        grid.append([int(cells[3 * j:3 * j + 2].strip() or 0) for j in range(n)])
    return grid


class DataValues(HTMLParser):
    """data-value of every heatmap cell, per head: {head: {(q, k): value}}."""

    def __init__(self) -> None:
        super().__init__()
        self.head, self.cells = None, {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "data-head" in a:
            self.head = a["data-head"]
            self.cells[self.head] = {}
        elif tag == "td" and "data-q" in a:
            self.cells[self.head][int(a["data-q"]), int(a["data-k"])] = float(a["data-value"])


def html_grid(path, head: str) -> torch.Tensor:
    p = DataValues()
    p.feed(path.read_text())
    cells = p.cells[head]
    n = max(q for q, _ in cells) + 1
    return torch.tensor([[cells[q, k] for k in range(n)] for q in range(n)], dtype=torch.float64)


def test_terminal_heatmap_of_the_previous_token_head(capsys, shipped):
    assert cli.main(["show", MODEL, "--head", "L0H0"]) == 0
    out = capsys.readouterr().out
    tokens = default_tokens()
    n = tokens.shape[0]
    shown = terminal_grid(out, "L0H0", n)
    ref = pattern(shipped, tokens, 0, 0)
    expected = [[min(99, int(round(float(v) * 100))) for v in row] for row in ref]
    expected = [[v if v >= 1 else 0 for v in row] for row in expected]
    assert shown == expected
    for i in range(1, n):  # read back from the printed numbers: the maximum is the previous token
        assert max(range(n), key=lambda j: shown[i][j]) == i - 1
    assert "repeated random tokens (32 x 10 x 2, seed 0), sequence 0" in out


def test_several_heads_and_token_ids(capsys, shipped):
    ids = [64, 3, 8, 1, 3, 8, 1]
    assert cli.main(["show", MODEL, "--head", "L0H0,L1H3", "--tokens", ",".join(map(str, ids))]) == 0
    out = capsys.readouterr().out
    for head, (l, h) in (("L0H0", (0, 0)), ("L1H3", (1, 3))):
        shown = terminal_grid(out, head, len(ids))
        ref = pattern(shipped, torch.tensor(ids), l, h)
        assert shown == [[min(99, int(round(float(v) * 100))) if v >= 0.005 else 0 for v in row] for row in ref]


def test_html_output_carries_the_pattern(tmp_path, capsys, shipped):
    out = tmp_path / "show.html"
    assert cli.main(["show", MODEL, "--head", "L0H0", "--head", "L1H1", "--data", "repeated:seed=3,batch=4",
                     "--index", "2", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    tokens = repeated_tokens(65, 64, batch=4, seq_len=10, n_repeats=2, seed=3).tokens[2]
    for head, (l, h) in (("L0H0", (0, 0)), ("L1H1", (1, 1))):
        assert torch.allclose(html_grid(out, head), pattern(shipped, tokens, l, h).double(), atol=1e-6)
    labels = ["BOS" if t == 64 else str(t) for t in tokens.tolist()]
    page = out.read_text()
    assert all(f">{label}</th>" in page for label in labels)


def test_without_matplotlib_png_gives_the_install_hint(tmp_path, capsys, no_matplotlib, shipped):
    png = tmp_path / "heads.png"
    assert cli.main(["show", MODEL, "--head", "L0H0", "--out", str(png)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'circuitry[plot]'" in err and "Traceback" not in err
    assert not png.exists() and list(tmp_path.iterdir()) == []
    # HTML and the terminal still work without matplotlib
    page = tmp_path / "heads.html"
    assert cli.main(["show", MODEL, "--head", "L0H0", "--out", str(page)]) == 0
    values = html_grid(page, "L0H0")
    for i in range(1, values.shape[0]):  # read back from the page's data-value attributes
        assert int(values[i].argmax()) == i - 1
    assert torch.allclose(values, pattern(shipped, default_tokens(), 0, 0).double(), atol=1e-6)
    assert cli.main(["show", MODEL, "--head", "L0H0"]) == 0
    assert "L0H0" in capsys.readouterr().out


def test_png_output(tmp_path, capsys, mpl):
    png = tmp_path / "heads.png"
    assert cli.main(["show", MODEL, "--head", "L0H0", "--head", "L1H3", "--out", str(png)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") > 800  # two panels side by side
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heads.png"]  # no temporary file left


class CharTokenizer:
    """a..z -> 0..25; 64 is <bos>."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) - ord("a") for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join("<bos>" if i == 64 else chr(i + ord("a")) for i in ids)


def test_text_needs_a_tokenizer(capsys, monkeypatch, shipped):
    assert cli.main(["show", MODEL, "--head", "L0H0", "--text", "hello"]) == 2
    err = capsys.readouterr().err
    assert "--text needs a model with a tokenizer" in err and MODEL in err and "--tokens" in err

    from circuitry.sources import load_model

    model = load_model(MODEL)
    model.tokenizer = CharTokenizer()
    monkeypatch.setattr("circuitry.sources.load_model", lambda ref, device=None, **kwargs: model)
    assert cli.main(["show", MODEL, "--head", "L0H0", "--text", "abcab"]) == 0
    out = capsys.readouterr().out
    labels = [line.split("│")[0].strip() for line in out.splitlines() if "│" in line]
    assert labels == ["<bos>", "a", "b", "c", "a", "b"]  # BOS prepended, labels decoded
    shown = terminal_grid(out, "L0H0", 6)
    ref = pattern(shipped, torch.tensor([64, 0, 1, 2, 0, 1]), 0, 0)
    assert shown[3][2] == min(99, round(float(ref[3, 2]) * 100))


@pytest.mark.parametrize("argv, message", [
    (["--head", "L2H0"], "the model has no head L2H0: it has heads L0H0..L1H3"),
    (["--head", "head0"], "'head0' is not a head name"),
    (["--head", "L0H0", "--tokens", "1 x 2"], "--tokens: expected integer token ids"),
    (["--head", "L0H0", "--tokens", "1 99"], "99"),
    (["--head", "L0H0", "--out", "x.pdf"], "must end in .png or .html"),
    (["--head", "L0H0", "--data", "repeated:batch=2", "--index", "5"], "--index 5: the data has 2 sequences"),
    (["--head", "L0H0", "--data", "nope"], "unknown dataset"),
])
def test_bad_input_is_a_one_line_error(argv, message, capsys):
    assert cli.main(["show", MODEL, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


class Labels(HTMLParser):
    """Every heatmap label: (axis, index, text, shown) with shown False for the hidden ones (class "skip")."""

    def __init__(self) -> None:
        super().__init__()
        self.labels: list[list] = []
        self.open: list | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "th" and ("data-k" in a or "data-q" in a):
            axis = "k" if "data-k" in a else "q"
            self.open = [axis, int(a[f"data-{axis}"]), "", "skip" not in (a.get("class") or "").split()]
            self.labels.append(self.open)

    def handle_data(self, data):
        if self.open is not None:
            self.open[2] += data

    def handle_endtag(self, tag):
        if tag == "th":
            self.open = None


def test_html_of_a_long_sequence_shows_every_second_label(tmp_path, capsys, shipped):
    """63 tokens (the shipped model's context is 64): labels at positions 0, 2, 4 ... shown, the others kept
    hidden in the page with their text; a note says so; the cells are still the model's pattern."""
    out = tmp_path / "long.html"
    assert cli.main(["show", MODEL, "--head", "L1H3", "--data", "repeated:seq_len=31,batch=2", "--out",
                     str(out)]) == 0
    tokens = repeated_tokens(65, 64, batch=2, seq_len=31, n_repeats=2, seed=0).tokens[0]
    assert tokens.shape == (63,)
    p = Labels()
    p.feed(out.read_text())
    names = ["BOS" if t == 64 else str(t) for t in tokens.tolist()]
    for axis in ("k", "q"):
        labels = [lb for lb in p.labels if lb[0] == axis]
        assert [lb[2] for lb in labels] == names
        assert [lb[1] for lb in labels if lb[3]] == list(range(0, 63, 2))
    assert "labels: every 2nd position (0, 2, 4, …)" in out.read_text()
    assert torch.allclose(html_grid(out, "L1H3"), pattern(shipped, tokens, 1, 3).double(), atol=1e-6)
