"""The HTML report in a real browser, and the renderers' contract (they compute nothing).

Headless Chromium (Debian's `chromium`) is driven over the DevTools protocol on
a pipe (--remote-debugging-pipe: NUL-terminated JSON on file descriptors 3 and
4), so no Python browser library is needed. Every request the page makes is
seen as a Network.requestWillBeSent event; host names resolve to nothing
(--host-resolver-rules), so a request that is made is detected but never
leaves the machine. A control page with a remote image proves the detection.
"""

from __future__ import annotations

import ast
import base64
import json
import math
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
SPEC = ROOT / "specs" / "induction.yaml"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it)")

# an http(s) or protocol-relative URL where a page would fetch it: src/href/srcset/action/... or CSS url()/@import
REMOTE = re.compile(r"""(?:\b(?:src|href|srcset|action|poster|data|xlink:href)\s*=\s*["']?\s*|url\(\s*["']?\s*|"""
                    r"""@import\s+["']?)(?:https?:)?//""", re.IGNORECASE)


def remote_references(page: str) -> list[str]:
    """Places in an HTML text that would make the browser fetch something from a network."""
    found = [m.group(0) for m in REMOTE.finditer(page)]
    found += re.findall(r"<\s*(?:script|link|iframe|object|embed)\b", page, re.IGNORECASE)
    return found


class Chromium:
    """One headless Chromium; `load(url)` opens a page and records the requests it makes."""

    def __init__(self, window=(1400, 2000)) -> None:
        self.profile = tempfile.mkdtemp(prefix="circuitry-chromium-")
        to_r, to_w = os.pipe()  # we write, Chromium reads on fd 3
        from_r, from_w = os.pipe()  # Chromium writes on fd 4, we read

        def child() -> None:
            a, b = os.dup(to_r), os.dup(from_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND",
             f"--user-data-dir={self.profile}", f"--window-size={window[0]},{window[1]}",
             "--remote-debugging-pipe", "about:blank"],
            preexec_fn=child, close_fds=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_r)
        os.close(from_w)
        self.w, self.r, self.buf, self.next_id, self.events = to_w, from_r, b"", 0, []
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime"):
            self.send(f"{domain}.enable", session=True)
        self.send("Emulation.setDeviceMetricsOverride", {"width": window[0], "height": window[1],
                                                          "deviceScaleFactor": 1, "mobile": False}, session=True)

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self.r], [], [], left)
            if ready:
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    raise EOFError("chromium closed the DevTools pipe")
                self.buf += chunk
        raw, _, self.buf = self.buf.partition(b"\0")
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: bool = False, timeout: float = 30) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def _drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._message(deadline))
        except TimeoutError:
            pass

    def load(self, url: str, settle: float = 0.5) -> list[str]:
        """Open `url`, wait for its load event and `settle` seconds more; the URLs of every request made."""
        self.events.clear()
        self.send("Page.navigate", {"url": url}, session=True)
        deadline = time.monotonic() + 30
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(self._message(deadline))
        self._drain(settle)
        return self.requests()

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def evaluate(self, expression: str):
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        if "exceptionDetails" in res:
            raise RuntimeError(res["exceptionDetails"])
        return res["result"].get("value")

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        params: dict = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics", session=True)["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        data = self.send("Page.captureScreenshot", params, session=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (TimeoutError, EOFError, RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.w)
        os.close(self.r)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    b = Chromium()
    yield b
    b.close()


def not_local(urls: list[str]) -> list[str]:
    return [u for u in urls if not u.startswith(("file:", "data:", "about:"))]


# ------------------------------------------------------------------ the report of specs/induction.yaml
@pytest.fixture(scope="module")
def verified(tmp_path_factory, shipped):
    from circuitry.datasets import make_batch
    from circuitry.figures import figures_for_verification
    from circuitry.report.html import render_html
    from circuitry.spec import load_spec
    from circuitry.verify import verify

    spec = load_spec(SPEC)
    report = verify(spec, model=shipped)
    batch = make_batch(shipped, spec.data)
    figures = figures_for_verification(spec, report, model=shipped, batch=batch)
    page = render_html(figures)
    path = tmp_path_factory.mktemp("report") / "verify-report.html"
    path.write_text(page)
    return {"spec": spec, "report": report, "batch": batch, "figures": figures, "page": page, "path": path}


DOM_QUERY = r"""(() => {
  const num = s => s === "nan" ? null : Number(s);
  const claims = [...document.querySelectorAll("tr.claim")].map(tr => ({
    id: tr.dataset.checkId, value: num(tr.dataset.value), passed: tr.dataset.passed === "true",
    text: tr.querySelector(".claim-text").childNodes[0].textContent,
    measured: tr.querySelector(".measured").textContent, expected: tr.querySelector(".expected").textContent,
    result: tr.querySelector(".result").textContent,
    values: [...tr.querySelectorAll("ul.values li")].map(li => [li.dataset.name, num(li.dataset.value)])}));
  const svg = document.querySelector("svg.graph");
  const box = svg ? svg.getBoundingClientRect() : null;
  const graph = svg ? {
    width: box.width, height: box.height,
    nodes: [...svg.querySelectorAll("g.node")].map(g => ({name: g.dataset.name, role: g.dataset.role,
      fill: g.querySelector("rect").getAttribute("fill"), text: g.textContent})),
    edges: [...svg.querySelectorAll("g.edge")].map(g => ({from: g.dataset.from, to: g.dataset.to,
      kind: g.dataset.kind, score: num(g.dataset.score), text: g.querySelector("text").textContent})),
    lines: svg.querySelectorAll("path.edge-line").length} : null;
  const heatmaps = [...document.querySelectorAll('figure.heatmap[data-kind="attention"]')].map(f => {
    const t = f.querySelector("table.hm"); const r = t.getBoundingClientRect();
    return {head: f.dataset.head, width: r.width, height: r.height,
      cols: [...t.querySelectorAll("thead th[data-k]")].map(th => th.textContent),
      rows: [...t.querySelectorAll("tbody tr")].map(tr => [...tr.querySelectorAll("td")].map(td => num(td.dataset.value)))};
  });
  const matrices = [...document.querySelectorAll('figure.heatmap[data-kind="composition"]')].map(f => ({
    grid: f.dataset.grid, hi: f.querySelectorAll("td.hi").length,
    rows: [...f.querySelectorAll("tbody tr")].map(tr => [...tr.querySelectorAll("td")].map(td => num(td.dataset.value)))}));
  return {title: document.title, badge: document.querySelector(".badge").textContent,
          claims, graph, heatmaps, matrices};
})()"""


def composition_reference(model, kind: str, sender: str, receiver: str) -> float:
    """||W_A W_B||_F / (||W_A||_F ||W_B||_F) with full d_model x d_model matrices (no factoring)."""
    (l1, h1), (l2, h2) = ((int(x) for x in n[1:].split("H")) for n in (sender, receiver))
    W_OV = model.W_V[l1, h1] @ model.W_O[l1, h1]  # [d_model, d_model]
    if kind == "V":
        W_B = model.W_V[l2, h2] @ model.W_O[l2, h2]
    else:
        W_QK = model.W_Q[l2, h2] @ model.W_K[l2, h2].T
        W_B = W_QK if kind == "Q" else W_QK.T
    W_A, W_B = W_OV.detach().double(), W_B.detach().double()
    return float((W_A @ W_B).norm() / (W_A.norm() * W_B.norm()))


@needs_chromium
def test_negative_control_a_remote_image_is_detected(browser, tmp_path):
    page = tmp_path / "control.html"
    page.write_text('<!DOCTYPE html><html><head><style>body{background:url("https://example.org/bg.png")}</style>'
                    '</head><body><p>control</p><img src="http://example.com/x.png"></body></html>')
    requests = browser.load(page.as_uri())
    assert "http://example.com/x.png" in requests
    assert "https://example.org/bg.png" in requests
    assert len(remote_references(page.read_text())) == 2  # the static check sees both too
    clean = tmp_path / "clean.html"
    clean.write_text("<!DOCTYPE html><html><body><p>nothing remote</p></body></html>")
    assert not_local(browser.load(clean.as_uri())) == []


@needs_chromium
def test_verify_report_in_chromium(browser, verified, shipped):
    report, spec = verified["report"], verified["spec"]
    requests = browser.load(verified["path"].as_uri())
    dom = browser.evaluate(DOM_QUERY)
    shot = browser.screenshot(ARTIFACTS / "verify-report.png")

    # no network: nothing but the page itself was requested, and nothing in it points outside
    assert not_local(requests) == [], requests
    assert requests == [verified["path"].as_uri()]
    assert remote_references(verified["page"]) == []

    # every claim is listed with its value, expectation and outcome
    assert [c["id"] for c in dom["claims"]] == [c.id for c in report.checks]
    for shown, check in zip(dom["claims"], report.checks):
        assert shown["value"] == pytest.approx(check.value, rel=1e-12, abs=1e-15), check.id
        assert float(shown["measured"]) == pytest.approx(check.value, rel=1e-3), check.id
        assert shown["text"] == check.claim and shown["expected"] == check.expect
        assert shown["passed"] is check.passed and shown["result"] == ("pass" if check.passed else "FAIL")
        per_node = check.details.get("values", {})
        assert dict(shown["values"]) == pytest.approx(per_node, rel=1e-12)
    assert dom["badge"] == f"{len(report.checks)} of {len(report.checks)} checks passed"

    # the graph: every circuit node with its role, every edge with its kind and its composition score,
    # the scores checked against full d_model x d_model products
    g = dom["graph"]
    assert g is not None and g["width"] > 300 and g["height"] > 200
    assert {n["name"]: n["role"] for n in g["nodes"]} == spec.nodes
    fills = {n["role"]: set() for n in g["nodes"]}
    for n in g["nodes"]:
        fills[n["role"]].add(n["fill"])
    assert all(len(f) == 1 for f in fills.values()) and len({f.pop() for f in fills.values()}) == len(fills)
    assert g["lines"] == len(spec.edges)
    assert {(e["from"], e["to"], e["kind"]) for e in g["edges"]} == {(e.sender, e.receiver, e.kind)
                                                                       for e in spec.edges}
    for e in g["edges"]:
        ref = composition_reference(shipped, e["kind"], e["from"], e["to"])
        assert e["score"] == pytest.approx(ref, rel=1e-4), e
        assert e["text"].startswith(f"{e['kind']} {ref:.2f}")

    # one heatmap per circuit head, with the pattern of the first sequence of the spec's data
    heads = sorted(n for n in spec.nodes if n.startswith("L"))
    assert sorted(h["head"] for h in dom["heatmaps"]) == heads
    tokens = verified["batch"].tokens[:1]
    with torch.no_grad():
        _, cache = shipped.run_with_cache(tokens)
    n = tokens.shape[1]
    for hm in dom["heatmaps"]:
        l, h = (int(x) for x in hm["head"][1:].split("H"))
        assert hm["width"] > 100 and hm["height"] > 100  # drawn, not just present
        assert hm["cols"] == ["BOS" if t == shipped.cfg.bos_token_id else str(t) for t in tokens[0].tolist()]
        shown = torch.tensor(hm["rows"], dtype=torch.float64)
        assert shown.shape == (n, n)
        assert torch.allclose(shown, cache["pattern", l][0, h].double(), atol=1e-6)

    # the shipped previous-token head: each row's maximum sits on the sub-diagonal (read from the DOM)
    prev = next(hm for hm in dom["heatmaps"] if hm["head"] == "L0H0")["rows"]
    for i in range(1, n):
        row = prev[i]
        assert max(range(n), key=lambda j: row[j]) == i - 1, (i, row)
    assert max(range(n), key=lambda j: prev[0][j]) == 0

    # composition matrices: Q, K, V, circuit edges outlined
    assert [m["grid"] for m in dom["matrices"]] == ["composition-Q", "composition-K", "composition-V"]
    k = next(m for m in dom["matrices"] if m["grid"] == "composition-K")
    assert k["hi"] == len([e for e in spec.edges if e.kind == "K"])
    assert k["rows"][0][3] == pytest.approx(composition_reference(shipped, "K", "L0H0", "L1H3"), rel=1e-4)

    # the screenshot is a real picture of the page
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == 1400 and height > 2000


@needs_chromium
def test_show_html_previous_token_head(browser, tmp_path, monkeypatch, shipped):
    """`circuitry show ... --out x.html` on token ids: the page's cells are the model's pattern."""
    from circuitry import cli

    monkeypatch.setitem(cli.COMMANDS, "show", "circuitry.cli.show")
    ids = [64, 5, 9, 31, 2, 17, 44, 5, 9, 31, 2, 17, 44]
    out = tmp_path / "show.html"
    assert cli.main(["show", "builtin:attn-only-2l", "--head", "L0H0", "--tokens", " ".join(map(str, ids)),
                     "--out", str(out)]) == 0
    requests = browser.load(out.as_uri())
    assert not_local(requests) == []
    rows = browser.evaluate("""[...document.querySelectorAll('table.hm[data-head="L0H0"] tbody tr')].map(
        tr => [...tr.querySelectorAll("td")].map(td => Number(td.dataset.value)))""")
    with torch.no_grad():
        _, cache = shipped.run_with_cache(torch.tensor([ids]))
    assert torch.allclose(torch.tensor(rows, dtype=torch.float64), cache["pattern", 0][0, 0].double(), atol=1e-6)
    for i in range(1, len(ids)):
        assert max(range(len(ids)), key=lambda j: rows[i][j]) == i - 1


# ------------------------------------------------------------------ the renderers compute nothing
RENDERERS = ["circuitry/report/html.py", "circuitry/report/terminal.py", "circuitry/report/plots.py",
             "circuitry/report/colours.py", "circuitry/report/ticks.py"]
FORBIDDEN = ("torch", "numpy", "circuitry.model", "circuitry.scan", "circuitry.verify", "circuitry.interventions",
             "circuitry.graph", "circuitry.sources", "circuitry.datasets", "circuitry.data", "circuitry.plugins")


@pytest.mark.parametrize("path", RENDERERS)
def test_renderers_import_no_computation(path):
    tree = ast.parse((ROOT / path).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    bad = [m for m in imported if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert bad == [], f"{path} imports {bad}"
    from_figures = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "circuitry.figures"]
    for node in from_figures:  # only the records, no builder
        assert all(a.name[0].isupper() for a in node.names), [a.name for a in node.names]


def test_html_renders_given_figures_as_they_are():
    """A hand-made Figures (no model anywhere) comes out cell for cell; strings are escaped."""
    from html.parser import HTMLParser

    from circuitry.figures import CircuitGraph, Claim, Figures, GraphEdge, GraphNode, Grid
    from circuitry.report.html import render_html

    values = ((1.0, math.nan), (0.25, 0.75))
    grid = Grid("pattern-L3H1", "attention", "L3H1", values, ("a", "<b>"), ("a", "<b>"), "query", "key",
                head="L3H1", role="mover")
    comp = Grid("composition-K", "composition", "K", ((0.5,),), ("L0H0",), ("L3H1",), baseline=0.25,
                highlight=((0, 0),))
    graph = CircuitGraph((GraphNode("L0H0", "prev", 0), GraphNode("L3H1", "mover", 3)),
                         (GraphEdge("L0H0", "L3H1", "K", 0.5, 0.25),))
    figs = Figures("t <x>", "m", "d", patterns=(grid,), composition=(comp,), graph=graph,
                   claims=(Claim("c1", "detector", "a & b", 0.123456789, ">= 0.1", True),), passed=True)
    page = render_html(figs)
    assert "<x>" not in page and "t &lt;x&gt;" in page and "&lt;b&gt;" in page
    assert remote_references(page) == []

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.cells, self.claims, self.edges = {}, [], []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "td" and "data-q" in a:
                self.cells[int(a["data-q"]), int(a["data-k"])] = a["data-value"]
            if tag == "tr" and "data-check-id" in a:
                self.claims.append((a["data-check-id"], a["data-value"]))
            if tag == "g" and a.get("class") == "edge":
                self.edges.append((a["data-kind"], a["data-score"]))

    p = Cells()
    p.feed(page)
    assert p.cells == {(0, 0): "1.0", (0, 1): "nan", (1, 0): "0.25", (1, 1): "0.75"}
    assert p.claims == [("c1", "0.123456789")]
    assert p.edges == [("K", "0.5")]
    assert "K 0.50 · 2.0×" in page


MIXED_SPEC = """
apiVersion: circuitry/v1
kind: CircuitSpec
metadata: {name: mixed, description: "a head, an MLP and a direct path"}
model: random
data: {name: repeated, seq_len: 6, batch: 4, seed: 0}
circuit:
  nodes: {L0H1: mover, M0: mlp, L1H0: reader}
  edges: [L0H1 -> L1H0 (V), M0 -> L1H0 (K), L1H0 -> logits (direct)]
checks:
  - {id: prev, kind: detector, detector: previous_token, nodes: [L0H1], expect: ">= 0.99"}
"""


def test_figures_of_a_failing_spec_with_an_mlp_and_a_direct_edge():
    from html.parser import HTMLParser

    from conftest import random_model

    from circuitry.figures import figures_for_verification
    from circuitry.report.html import render_html
    from circuitry.spec import load_spec
    from circuitry.verify import verify

    model = random_model(3, d_mlp=64)
    spec = load_spec(text=MIXED_SPEC)
    report = verify(spec, model=model, model_ref="random")
    assert not report.passed
    figs = figures_for_verification(spec, report, model=model)
    assert [(n.name, n.role, n.layer) for n in figs.graph.nodes] == [
        ("L0H1", "mover", 0.0), ("M0", "mlp", 0.5), ("L1H0", "reader", 1.0), ("logits", "output", 2.0)]
    direct = figs.graph.edges[2]
    assert (direct.kind, direct.score) == ("direct", None)
    v = figs.graph.edges[0]
    assert v.score == pytest.approx(composition_reference(model, "V", "L0H1", "L1H0"), rel=1e-4)
    assert [g.head for g in figs.patterns] == ["L0H1", "L1H0"]  # heads only, in layer order
    page = render_html(figs)

    class Rows(HTMLParser):
        def __init__(self):
            super().__init__()
            self.rows, self.nodes, self.badge = [], [], None

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "tr" and "data-check-id" in a:
                self.rows.append((a["data-check-id"], a["data-passed"], a["class"]))
            if tag == "g" and a.get("class") == "node":
                self.nodes.append(a["data-name"])
            if tag == "span" and "badge" in a.get("class", ""):
                self.badge = a["class"]

    p = Rows()
    p.feed(page)
    assert p.rows == [("prev", "false", "claim failed")]
    assert p.nodes == ["L0H1", "M0", "L1H0", "logits"]
    assert p.badge == "badge fail"
    assert remote_references(page) == []


# ------------------------------------------------------------------ the commands' --html options
def test_verify_and_scan_write_html(tmp_path, capsys):
    from circuitry.cli import main

    page = tmp_path / "report.html"
    assert main(["verify", str(SPEC), "--json", "--html", str(page)]) == 0
    doc = json.loads(capsys.readouterr().out)  # stdout stays one JSON document
    text = page.read_text()
    for check in doc["checks"]:
        assert f'data-check-id="{check["id"]}" data-kind="{check["kind"]}" data-value="{check["value"]!r}"' in text
    assert text.count('data-kind="attention"') == 5 and remote_references(text) == []
    scan_page = tmp_path / "scan.html"
    assert main(["scan", "builtin:attn-only-2l", "--html", str(scan_page)]) == 0
    assert 'data-grid="scores-induction"' in scan_page.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "scan.html"]


# ------------------------------------------------------------------ readable at length
LABELS_QUERY = r"""(() => {
  const out = [];
  for (const t of document.querySelectorAll("table.hm")) {
    const cells = [...t.querySelectorAll("td")];
    const first = cells[0].getBoundingClientRect(), last = cells[cells.length - 1].getBoundingClientRect();
    const labels = [...t.querySelectorAll("th[data-k], th[data-q]")].map(th => {
      const r = document.createRange(); r.selectNodeContents(th); const b = r.getBoundingClientRect();
      const style = getComputedStyle(th);
      return {axis: th.dataset.k !== undefined ? "k" : "q", i: Number(th.dataset.k ?? th.dataset.q),
              text: th.textContent, title: th.title, visible: style.visibility !== "hidden" && style.display !== "none",
              font: parseFloat(style.fontSize), box: [b.left, b.top, b.right, b.bottom]};
    });
    const titled = /^query (\d+) \((.*)\) → key (\d+) \((.*)\): (\S+)$/;
    const bad = cells.filter(td => { const m = titled.exec(td.title);
      return !m || m[1] !== td.dataset.q || m[3] !== td.dataset.k; }).length;
    out.push({head: t.dataset.head, stride: Number(t.dataset.labelStride), labels, bad_titles: bad,
              grid: [first.left, first.top, last.right, last.bottom], cell: first.width,
              titles: cells.filter((td, n) => n % 97 === 0).map(td => [Number(td.dataset.q), Number(td.dataset.k), td.title]),
              rows: [...t.querySelectorAll("tbody tr")].map(tr => [...tr.querySelectorAll("td")].map(td => Number(td.dataset.value)))});
  }
  return out;
})()"""


def overlap(a, b) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


@needs_chromium
def test_128_token_heatmap_has_readable_labels_and_hover_values(browser, tmp_path):
    """A 128-token pattern drawn as a page: the labels shown keep >= 10 px and never overlap, enough of them
    to find one's way (>= 16 an axis), no more than fit; every cell's hover title names its query and key
    tokens and the weight, and the cells hold the pattern of an independent run."""
    from conftest import random_model

    from circuitry.figures import figures_for_heads
    from circuitry.report.html import write_html

    model = random_model(0, n_ctx=128)
    n = 128
    ids = [49] + torch.randint(0, 49, (n - 1,), generator=torch.Generator().manual_seed(5)).tolist()
    page = write_html(figures_for_heads(model, ids, ["L0H1", "L1H2"]), tmp_path / "long.html")
    text = page.read_text()
    assert remote_references(text) == []
    requests = browser.load(page.as_uri(), settle=1.0)
    assert requests == [page.as_uri()]
    tables = browser.evaluate(LABELS_QUERY)
    shot = browser.screenshot(ARTIFACTS / "heatmap-128.png")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 30_000

    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([ids]))
    tokens = ["BOS" if t == 49 else str(t) for t in ids]
    assert [t["head"] for t in tables] == ["L0H1", "L1H2"]
    for t, (layer, head) in zip(tables, ((0, 1), (1, 2))):
        ref = cache["pattern", layer][0, head].double()  # [q, k]
        assert torch.allclose(torch.tensor(t["rows"], dtype=torch.float64), ref, atol=1e-6)
        assert t["bad_titles"] == 0 and t["cell"] >= 5
        for q, k, title in t["titles"]:  # hover: tokens and the weight, read against the independent run
            head_part, value = title.rsplit(": ", 1)
            assert head_part == f"query {q} ({tokens[q]}) → key {k} ({tokens[k]})"
            assert float(value) == pytest.approx(float(ref[q, k]), rel=1e-3, abs=1e-6)
        left, top, right, bottom = t["grid"]
        for axis, length in (("k", right - left), ("q", bottom - top)):
            labels = [lb for lb in t["labels"] if lb["axis"] == axis]
            assert [lb["text"] for lb in labels] == tokens  # every label is in the DOM, hidden or not
            assert all(lb["title"] == f"{lb['i']}: {tokens[lb['i']]}" for lb in labels)
            shown = [lb for lb in labels if lb["visible"]]
            assert [lb["i"] for lb in shown] == list(range(0, n, t["stride"]))
            assert all(lb["font"] >= 10 for lb in shown), {lb["font"] for lb in shown}
            # the glyph box across the label's line: at least 10 px (height of a row label, width of a turned one)
            across = [(b[3] - b[1]) if axis == "q" else (b[2] - b[0]) for b in (lb["box"] for lb in shown)]
            assert min(across) >= 10
            assert 16 <= len(shown) <= length / min(across)
            for a, b in zip(shown, shown[1:]):  # neighbours along the axis do not touch
                assert not overlap(a["box"], b["box"]), (a, b)
            # each label sits beside its own row or column
            for lb in shown:
                centre = ((lb["box"][0] + lb["box"][2]) / 2) if axis == "k" else ((lb["box"][1] + lb["box"][3]) / 2)
                start = left if axis == "k" else top
                assert abs(centre - (start + (lb["i"] + 0.5) * length / n)) < 0.6 * length / n + 1, lb
        shown_all = [lb for lb in t["labels"] if lb["visible"]]
        assert not any(overlap(a["box"], b["box"]) for i, a in enumerate(shown_all) for b in shown_all[i + 1:])


GRAPH_QUERY = r"""(() => [...document.querySelectorAll("svg.graph")].map(svg => {
  const lines = [...svg.querySelectorAll("path.edge-line")];
  const sample = p => { const L = p.getTotalLength();
    return {L, pts: [...Array(401).keys()].map(i => { const q = p.getPointAtLength(L * i / 400); return [q.x, q.y, i / 400]; })}; };
  const paths = lines.map(p => ({from: p.dataset.from, to: p.dataset.to, kind: p.dataset.kind,
    width: Number(p.getAttribute("stroke-width")), ...sample(p)}));
  const labels = [...svg.querySelectorAll("g.edge")].map(g => { const r = g.querySelector("rect");
    const x = Number(r.getAttribute("x")), y = Number(r.getAttribute("y"));
    return {from: g.dataset.from, to: g.dataset.to, kind: g.dataset.kind, score: g.dataset.score === "nan" ? null : Number(g.dataset.score),
            box: [x, y, x + Number(r.getAttribute("width")), y + Number(r.getAttribute("height"))]}; });
  const nodes = [...svg.querySelectorAll("g.node rect")].map(r => { const x = Number(r.getAttribute("x")), y = Number(r.getAttribute("y"));
    return [x, y, x + Number(r.getAttribute("width")), y + Number(r.getAttribute("height"))]; });
  return {paths, labels, nodes};
}))()"""


def check_graph_labels(graph: dict) -> list[dict]:
    """Each label sits on its own edge, near its middle, covers no other edge, label or node; widths follow
    the scores. Returns the edges with their widths and scores."""
    paths, labels = graph["paths"], graph["labels"]
    assert len(paths) == len(labels) > 0
    out = []
    for lb, path in zip(labels, paths):
        assert (lb["from"], lb["to"], lb["kind"]) == (path["from"], path["to"], path["kind"])
        x0, y0, x1, y1 = lb["box"]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        d, at = min((math.hypot(px - cx, py - cy), t) for px, py, t in path["pts"])
        assert d < 1.5, (lb, d)  # the label's centre is on its edge ...
        assert 0.15 <= at <= 0.85, (lb, at)  # ... away from both ends, around the middle
        for other in paths:
            if other is not path:
                inside = [(px, py) for px, py, _ in other["pts"] if x0 - 2 <= px <= x1 + 2 and y0 - 2 <= py <= y1 + 2]
                assert inside == [], (lb, other["from"], other["to"], other["kind"])
        out.append({"score": lb["score"], "width": path["width"]})
    boxes = [lb["box"] for lb in labels]
    assert not any(overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert not any(overlap(a, n) for a in boxes for n in graph["nodes"])
    scored = sorted((e for e in out if e["score"] is not None), key=lambda e: e["score"])
    for a, b in zip(scored, scored[1:]):  # wider for a higher score, equal for equal scores
        assert (b["width"] > a["width"]) if b["score"] > a["score"] + 1e-9 else b["width"] == pytest.approx(a["width"])
    return out


@needs_chromium
def test_graph_labels_sit_on_their_edges_and_widths_follow_scores(browser, verified, tmp_path):
    from circuitry.figures import CircuitGraph, Figures, GraphEdge, GraphNode
    from circuitry.report.html import render_html

    browser.load(verified["path"].as_uri())
    (graph,) = browser.evaluate(GRAPH_QUERY)
    edges = check_graph_labels(graph)
    assert len(edges) == len(verified["spec"].edges) == 6
    assert len({e["width"] for e in edges}) >= 4  # the shipped model's K-composition scores differ (0.20..0.24)

    # a busier hand-made circuit: an edge skipping a layer (lane), parallel Q and K edges, an unscored edge
    nodes = (GraphNode("embed", "input", -1), GraphNode("L0H0", "prev", 0), GraphNode("L0H1", "prev", 0),
             GraphNode("L1H0", "mid", 1), GraphNode("L2H1", "mover", 2), GraphNode("logits", "output", 3))
    edges_in = (GraphEdge("L0H0", "L1H0", "K", 0.30, 0.1), GraphEdge("L0H1", "L1H0", "K", 0.12, 0.1),
                GraphEdge("L0H0", "L2H1", "V", 0.05, 0.1), GraphEdge("L1H0", "L2H1", "Q", 0.21, 0.1),
                GraphEdge("L1H0", "L2H1", "K", 0.25, 0.1), GraphEdge("L0H1", "L2H1", "K", 0.18, 0.1),
                GraphEdge("L2H1", "logits", "direct"))
    page = tmp_path / "graph.html"
    page.write_text(render_html(Figures("busy", "m", "d", graph=CircuitGraph(nodes, edges_in))))
    browser.load(page.as_uri())
    (graph,) = browser.evaluate(GRAPH_QUERY)
    drawn = check_graph_labels(graph)
    assert [e["score"] for e in drawn] == [e.score for e in edges_in]
