"""The reproduction of the induction-heads article (docs/induction-heads.md).

Default tests: the claims that need no training, on the shipped checkpoints, against the numbers the page
states (its "Numbers the tests check" tables) and against independent computations: path patching of the
K edges by a hand-written forward pass, pattern weights against the detectors; the page and the JSON; the
command's options. The slow test re-runs the whole reproduction (3 seeds) and checks every verdict and the
3-seed means the page states.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from circuitry.article import claims
from circuitry.article.records import ClaimResult, Number, Reproduction
from circuitry.errors import UsageError

DOC = Path(__file__).resolve().parent.parent / "docs" / "induction-heads.md"


def doc_table(title: str) -> list[tuple[str, str, float, float]]:
    """(claim key, number name, value, tolerance) rows of the doc's table under the heading `title`."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"### {title}")
    rows = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("#"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"-?[0-9.]+", cells[2]):
            rows.append((cells[0].strip("`"), cells[1], float(cells[2]), float(cells[3])))
    assert rows, f"no rows under ### {title}"
    return rows


def doc_verdicts() -> dict[str, str]:
    """claim key -> verdict, from the doc's summary table (rows `| ... | `key` | ... | verdict |`)."""
    out = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|.*\|\s*`([a-z-]+)`\s*\|.*\|\s*\*\*(reproduced|partly|not reproduced|not testable)\*\*", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


@pytest.fixture(scope="module")
def shipped():
    from circuitry.sources import load_model

    return load_model("builtin:attn-only-2l").eval()


@pytest.fixture(scope="module")
def shipped_claims(shipped, tmp_path_factory) -> dict[str, ClaimResult]:
    from circuitry.sources import load_model

    out = tmp_path_factory.mktemp("article")
    results = [claims.two_step_mechanism([shipped], [0]), claims.attention_patterns([shipped], [0], out),
               claims.ablation([shipped], [0]), claims.natural_text(load_model(claims.TEXT_MODEL).eval())]
    return {c.key: c for c in results} | {"_out": out}  # type: ignore[dict-item]


def test_shipped_numbers_match_the_doc(shipped_claims):
    rows = doc_table("Shipped checkpoints (default test)")
    for key, name, value, tol in rows:
        got = shipped_claims[key].number(name).mean
        assert got is not None and abs(got - value) <= tol, f"{key} / {name}: {got} vs the doc's {value} ± {tol}"
    assert {k for k, *_ in rows} == {"two-step-mechanism", "attention-patterns", "ablation", "ablation-text"}


def test_shipped_verdicts(shipped_claims):
    assert shipped_claims["two-step-mechanism"].verdict == "reproduced"
    assert shipped_claims["attention-patterns"].verdict == "reproduced"
    assert shipped_claims["ablation"].verdict == "reproduced"
    assert shipped_claims["ablation-text"].verdict == "not testable"
    assert shipped_claims["ablation-text"].number("loss on the second copy, induction heads ablated").mean is None


def _manual_k_patch_loss(model, clean_tokens, corrupt_tokens, prev, ind, predictable) -> tuple[float, float]:
    """Loss on the repeats, clean and with the K input of the heads `ind` (layer 1) given the previous-token heads'
    outputs (layer 0) from the corrupted tokens: a forward pass of the 2-layer attention-only model written out."""
    cfg = model.cfg
    W_E, W_pos = model.embed.W_E, model.pos_embed.W_pos

    def heads_out(attn, q_in, k_in, v_in):  # -> [head, batch, pos, d_model]
        q = torch.einsum("bpd,hde->hbpe", q_in, attn.W_Q)
        k = torch.einsum("hbpd,hde->hbpe", k_in, attn.W_K)
        v = torch.einsum("bpd,hde->hbpe", v_in, attn.W_V)
        for name, t in (("b_Q", q), ("b_K", k), ("b_V", v)):
            b = getattr(attn, name, None)
            if b is not None:
                t += b[:, None, None, :]
        s = torch.einsum("hbqe,hbke->hbqk", q, k) / cfg.scale
        n = s.shape[-1]
        s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
        z = torch.einsum("hbqk,hbke->hbqe", torch.softmax(s, -1), v)
        return torch.einsum("hbqe,hed->hbqd", z, attn.W_O)

    def bias(attn):
        b = getattr(attn, "b_O", None)
        return 0.0 if b is None else b

    def layer0(tokens):
        x0 = W_E[tokens] + W_pos[: tokens.shape[1]]
        a0 = model.blocks[0].attn
        return x0, heads_out(a0, x0, x0.expand(cfg.n_heads, *x0.shape), x0)

    with torch.inference_mode():
        x0, out0 = layer0(clean_tokens)
        _, out0_c = layer0(corrupt_tokens)
        x1 = x0 + out0.sum(0) + bias(model.blocks[0].attn)
        k_in = x1.expand(cfg.n_heads, *x1.shape).clone()
        for i in ind:
            for p in prev:
                k_in[i] += out0_c[p] - out0[p]
        a1 = model.blocks[1].attn
        losses = []
        for keys in (x1.expand(cfg.n_heads, *x1.shape), k_in):
            x2 = x1 + heads_out(a1, x1, keys, x1).sum(0) + bias(a1)
            logits = x2 @ model.unembed.W_U + getattr(model.unembed, "b_U", 0.0)
            nll = -torch.log_softmax(logits[:, :-1], -1).gather(-1, clean_tokens[:, 1:, None])[..., 0]
            losses.append(float(nll[predictable[:, :-1]].mean()))
    return losses[0], losses[1]


def test_k_edge_patch_against_a_hand_written_forward_pass(shipped, shipped_claims):
    """The K-edge number of the two-step claim equals path patching done by hand: layer 1's keys of the induction
    heads read layer 0's previous-token heads from the corrupted run, everything else clean."""
    cfg = shipped.cfg
    assert cfg.n_layers == 2 and cfg.attn_only and cfg.normalization is None
    heads = claims.find_heads(shipped)
    batch, corrupt = claims.repeats(shipped), claims.repeats(shipped, claims.CORRUPT_SEED)
    idx = [int(h.split("H")[1]) for h in heads.previous], [int(h.split("H")[1]) for h in heads.induction]
    clean, patched = _manual_k_patch_loss(shipped, batch.tokens, corrupt.tokens, *idx, batch.predictable)
    with torch.inference_mode():
        assert clean == pytest.approx(claims.repeat_loss(shipped, shipped(batch.tokens), batch), abs=1e-4)
    measured = shipped_claims["two-step-mechanism"].number("loss increase, K edges").per_seed[0]
    assert measured == pytest.approx(patched - clean, abs=1e-3)


def test_pattern_weights_agree_with_the_detectors(shipped, shipped_claims):
    """The previous-token head's weight on offset -1 and the induction head's on the token after the earlier
    occurrence are what the previous_token and induction detectors score (on the same data)."""
    import circuitry as cy

    res = cy.scan(shipped, claims.repeats(shipped), detectors=["previous_token", "induction"])
    heads = claims.find_heads(shipped)
    pl, ph = (int(x) for x in heads.previous[0][1:].split("H"))
    il, ih = (int(x) for x in heads.induction[0][1:].split("H"))
    c = shipped_claims["attention-patterns"]
    both = [c.number(f"previous-token head: weight on offset -1, {w} copy").mean for w in ("first", "second")]
    assert min(both) <= float(res.heads["previous_token"][pl, ph]) + 1e-3
    assert max(both) >= float(res.heads["previous_token"][pl, ph]) - 1e-3
    assert c.number("induction head: weight on offset -9, second copy").mean == pytest.approx(
        float(res.heads["induction"][il, ih]), abs=0.02)
    assert (shipped_claims["_out"] / c.pictures[0]).stat().st_size > 1000


def test_ablation_is_the_zero_ablation_of_the_heads(shipped, shipped_claims):
    """The ablated ICL score equals a run with the induction heads' z set to zero by a hook."""
    from circuitry.track import icl_score, icl_tokens

    heads = claims.find_heads(shipped)
    drop = [int(h.split("H")[1]) for h in heads.induction]

    def zero(z, hook):
        z[:, :, drop] = 0.0
        return z

    tokens = icl_tokens(shipped.cfg)
    with torch.inference_mode():
        logits = shipped.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", zero)])
        nll = shipped.loss(tokens, logits, per_token=True)
    from circuitry.track import ICL_EARLY, ICL_LATE

    by_hand = float(nll[:, ICL_LATE[0] - 1: ICL_LATE[1]].mean() - nll[:, ICL_EARLY[0] - 1: ICL_EARLY[1]].mean())
    c = shipped_claims["ablation"]
    assert c.number("ICL score, induction heads ablated").mean == pytest.approx(by_hand, abs=1e-4)
    assert c.number("ICL score, clean").mean == pytest.approx(icl_score(shipped, tokens), abs=1e-4)


def test_number_mean_and_spread():
    n = Number("x", (1.0, 2.0, None, 4.0), "nats")
    assert n.mean == pytest.approx(7 / 3)
    assert n.spread == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert n.to_json()["per_seed"] == [1.0, 2.0, None, 4.0]
    assert Number("y", (None,)).text() == "n/a"


def test_page_and_json_are_self_contained(shipped_claims, tmp_path):
    from circuitry.article.page import write_page
    from circuitry.jsonable import strict_dumps

    out = shipped_claims["_out"]
    rep = Reproduction(tuple(v for k, v in shipped_claims.items() if k != "_out"), (0,), 1000, 50, 1.0, 0.5,
                       str(tmp_path / "a.html"))
    html = write_page(rep, out, tmp_path / "a.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert html.count("data:image/png;base64,") == 1  # the attention picture, inlined
    k = rep.claim("two-step-mechanism").number("loss increase, K edges").per_seed[0]
    assert f'data-value="{k:.6f}"' in html
    assert 'data-verdict="not testable"' in html
    doc = json.loads(strict_dumps(rep.to_json()))
    assert doc["claims"][0]["numbers"][0]["mean"] == pytest.approx(rep.claims[0].numbers[0].mean)


def _parser():
    from circuitry.cli import _Parser
    from circuitry.cli import article as cmd

    parser = _Parser(prog="circuitry")
    cmd.register(parser.add_subparsers(dest="command", parser_class=_Parser))
    return parser


def test_cli_options():
    args = _parser().parse_args(["article", "--out", "x", "--seeds", "3,4", "--quick", "--json"])
    assert (args.out, args.seeds, args.quick, args.json, args.steps) == ("x", "3,4", True, True, None)
    from circuitry.cli.article import parse_seeds

    assert parse_seeds("0, 1,2") == (0, 1, 2)
    for bad in ("a", "", "1,1", "-1"):
        with pytest.raises(UsageError, match="--seeds"):
            parse_seeds(bad)


@pytest.mark.parametrize("argv, message", [
    (["article", "--seeds", "x"], "--seeds 'x'"),
    (["article", "--steps", "0"], "--steps must be >= 1"),
    (["article", "--workers", "0"], "--workers must be >= 1"),
])
def test_cli_errors_exit_2(argv, message, monkeypatch, capsys, tmp_path):
    from circuitry import cli

    monkeypatch.setitem(cli.COMMANDS, "article", "circuitry.cli.article")
    assert cli.main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_full_reproduction(tmp_path, monkeypatch, capsys):
    """`circuitry article` with 3 seeds: every verdict and 3-seed mean the doc states."""
    from circuitry import cli

    monkeypatch.setitem(cli.COMMANDS, "article", "circuitry.cli.article")
    out = tmp_path / "article"
    assert cli.main(["article", "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    doc.pop("warnings", None)  # the command's warnings, beside the document
    assert doc == json.loads((out / "article.json").read_text())
    rep = {c["key"]: c for c in doc["claims"]}
    assert {k: c["verdict"] for k, c in rep.items()} == doc_verdicts()
    for key, name, value, tol in doc_table("Three seeds (slow test)"):
        got = next(n for n in rep[key]["numbers"] if n["name"] == name)["mean"]
        assert got is not None and abs(got - value) <= tol, f"{key} / {name}: {got} vs the doc's {value} ± {tol}"
    html = (out / "article.html").read_text()
    assert all(f'data-claim="{k}"' in html for k in rep)
