"""Scanning a model with detectors: one cached run, every head scored.

`scan(model, batch)` runs each selected detector plugin once on a shared
cached run (only attention patterns are cached) and returns a `ScanResult`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from circuitry.data import TokenBatch
from circuitry.errors import UsageError
from circuitry.jsonable import finite_or_none
from circuitry.model import HookedTransformer
from circuitry.names import head_index, head_name
from circuitry.plugins import PluginManager, get_manager
from circuitry.records import Detector, DetectorInput, PairScores


@dataclass(frozen=True)
class ScanResult:
    """Head scores [layer, head] per head detector and PairScores per pair detector."""

    model: str
    data: str
    heads: dict[str, torch.Tensor]
    pairs: dict[str, PairScores]
    detectors: dict[str, Detector]

    def head_names(self) -> list[str]:
        L, H = next(iter(self.heads.values())).shape if self.heads else (0, 0)
        return [head_name(l, h) for l in range(L) for h in range(H)]

    def pair_list(self, name: str, kind: str, top: int | None = None) -> list[dict]:
        """[{"from", "to", "score", "baseline"}] of one pair detector and kind, strongest first
        (NaN scores last; ties in layer and head order); the first `top` rows only when given."""
        ps = self.pairs[name]
        s = torch.as_tensor(ps.scores[kind]).detach().float().cpu()  # [layer, head, layer, head]
        L, H = s.shape[:2]
        layer = torch.arange(L * H) // H
        sender, receiver = torch.nonzero(layer[:, None] < layer[None, :], as_tuple=True)  # pairs in stream order
        values = s.reshape(L * H, L * H)[sender, receiver]
        order = strongest_order(values)[:top]
        names = [head_name(l, h) for l in range(L) for h in range(H)]
        base = ps.baseline[kind]
        return [{"from": names[i], "to": names[j], "score": v, "baseline": base}
                for i, j, v in zip(sender[order].tolist(), receiver[order].tolist(), values[order].tolist())]

    def _repr_html_(self) -> str:
        """Jupyter's inline view: the strongest heads and pairs, the score grids (`circuitry.report.notebook`)."""
        from circuitry.report.notebook import scan_html

        return scan_html(self)

    def to_json(self) -> dict:
        """The strict-JSON document of `scan --json`: a score or baseline that is NaN or infinite
        (a detector that could not score a head) is null, and null scores come last in the pair lists."""
        heads = []
        for name in self.head_names():
            l, h = head_index(name)
            heads.append({"head": name, **{d: finite_or_none(t[l, h]) for d, t in self.heads.items()}})
        doc: dict = {"model": self.model, "data": self.data, "heads": heads}
        for pname, ps in self.pairs.items():
            key = "composition" if pname == "composition" else f"pairs:{pname}"
            doc[key] = {kind: [{**r, "score": finite_or_none(r["score"]), "baseline": finite_or_none(r["baseline"])}
                               for r in self.pair_list(pname, kind)] for kind in ps.scores}
        return doc


def strongest_first(rows: list[dict], key: str = "score") -> list[dict]:
    """rows sorted by row[key], largest first, NaN last; the sort is stable, so ties keep their order."""
    return sorted(rows, key=lambda r: (math.isnan(r[key]), -r[key] if not math.isnan(r[key]) else 0.0))


def strongest_order(values: torch.Tensor) -> torch.Tensor:
    """The indices that sort values [n] as `strongest_first` sorts rows: largest first, NaN last,
    ties in index order."""
    nan = torch.isnan(values)
    order = torch.sort(torch.where(nan, 0.0, -values.double()), stable=True).indices
    return order[torch.sort(nan[order].to(torch.uint8), stable=True).indices]


def select_detectors(names: Iterable[str] | None, manager: PluginManager | None = None) -> dict[str, Detector]:
    manager = manager or get_manager()
    if names is None:
        return dict(manager.detectors())
    return {name: manager.get("circuitry_detectors", name, "detector") for name in names}


def pattern_names(model: HookedTransformer) -> list[str]:
    return [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]


def run_detectors(model: HookedTransformer, batch: TokenBatch | None, detectors: dict[str, Detector],
                  cache=None) -> tuple[dict[str, torch.Tensor], dict[str, PairScores]]:
    """Score with every detector, sharing one cached run (made here when not given)."""
    if cache is None and batch is not None and any(d.needs_cache for d in detectors.values()):
        with torch.inference_mode():
            # patterns only: the unembedding is not needed
            _, cache = model.run_with_cache(batch.tokens, names=pattern_names(model),
                                            stop_at_layer=model.cfg.n_layers)
    heads: dict[str, torch.Tensor] = {}
    pairs: dict[str, PairScores] = {}
    with torch.inference_mode():
        for name, det in detectors.items():
            if det.needs_cache and cache is None:
                raise UsageError(f"detector {name!r} needs data")
            inp = DetectorInput(model, batch, cache if det.needs_cache else None)
            result = det.score(inp)
            if det.kind == "head":
                expect = (model.cfg.n_layers, model.cfg.n_heads)
                if not isinstance(result, torch.Tensor) or tuple(result.shape) != expect:
                    from circuitry.plugins import PluginError

                    raise PluginError(f"detector {name!r} returned {getattr(result, 'shape', type(result))}, "
                                      f"expected a tensor of shape {expect}")
                heads[name] = result.detach().float().cpu()
            else:
                pairs[name] = result
    return heads, pairs


def scan(model: HookedTransformer, batch: TokenBatch, detectors: Iterable[str] | None = None,
         manager: PluginManager | None = None, model_ref: str | None = None) -> ScanResult:
    chosen = select_detectors(detectors, manager)
    heads, pairs = run_detectors(model, batch, chosen)
    return ScanResult(model_ref or model.source or model.cfg.name, batch.description, heads, pairs, chosen)
