"""The configuration of the canonical hooked transformer: one frozen dataclass.

Every architecture circuitry analyses is described by a `ModelConfig`: the toy
attention-only models, GPT-2, GPT-NeoX (Pythia) and the Llama family. Fields
that only some architectures use (rotary positions, RMSNorm, gated MLPs,
parallel attention, grouped-query attention) have defaults that switch them off.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from circuitry.errors import ModelLoadError, did_you_mean

NORMALIZATIONS = (None, "LN", "LNPre", "RMS", "RMSPre")
POSITIONALS = ("learned", "rotary", "none")
ACTIVATIONS = ("gelu", "gelu_new", "relu", "silu")


@dataclass(frozen=True)
class ModelConfig:
    """Shape and architecture of a `HookedTransformer`.

    normalization: None, "LN" (LayerNorm with weight and bias), "RMS"
    (RMSNorm with weight); "LNPre" / "RMSPre" are the weightless forms left
    after `fold_layer_norm()`.
    positional: "learned" (absolute W_pos added to the residual stream),
    "rotary" (applied to queries and keys, on the first `rotary_dim` dims of
    each head) or "none".
    d_mlp: None for attention-only models.
    n_kv_heads: fewer key/value heads than query heads (grouped-query
    attention); None means one per query head.
    attn_window: sliding-window attention (Mistral): each query attends to
    at most this many most recent positions, itself included; None means
    the full causal context.
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_vocab: int
    n_ctx: int
    d_mlp: int | None = None
    act_fn: str = "gelu"
    gated_mlp: bool = False
    normalization: str | None = None
    norm_eps: float = 1e-5
    positional: str = "learned"
    rotary_dim: int | None = None
    rotary_base: float = 10000.0
    n_kv_heads: int | None = None
    parallel_attn_mlp: bool = False
    attn_bias: bool = False
    attn_out_bias: bool | None = None
    mlp_bias: bool = False
    unembed_bias: bool = False
    tied_embeddings: bool = False
    attn_scale: float | None = None
    attn_window: int | None = None
    bos_token_id: int | None = None
    name: str = "model"

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ModelLoadError(f"invalid model config: {msg}")

        for f in ("n_layers", "d_model", "n_heads", "d_head", "d_vocab", "n_ctx"):
            v = getattr(self, f)
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0,
                 f"{f} must be a positive integer, got {v!r}")
        need(self.normalization in NORMALIZATIONS,
             f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        need(self.positional in POSITIONALS,
             f"positional must be one of {POSITIONALS}, got {self.positional!r}")
        need(self.act_fn in ACTIVATIONS,
             f"act_fn must be one of {ACTIVATIONS}, got {self.act_fn!r}")
        need(self.d_mlp is None or (isinstance(self.d_mlp, int) and self.d_mlp > 0),
             f"d_mlp must be a positive integer or null, got {self.d_mlp!r}")
        kv = self.n_kv_heads or self.n_heads
        need(self.n_heads % kv == 0, f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({kv})")
        if self.positional == "rotary":
            rd = self.rotary_dim or self.d_head
            need(0 < rd <= self.d_head and rd % 2 == 0,
                 f"rotary_dim must be even and at most d_head ({self.d_head}), got {rd}")
        need(self.attn_window is None or (isinstance(self.attn_window, int) and self.attn_window > 0),
             f"attn_window must be a positive integer or null, got {self.attn_window!r}")
        need(self.bos_token_id is None or 0 <= self.bos_token_id < self.d_vocab,
             f"bos_token_id {self.bos_token_id} is outside the vocabulary (0..{self.d_vocab - 1})")

    # derived values -----------------------------------------------------
    @property
    def attn_only(self) -> bool:
        return self.d_mlp is None

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def scale(self) -> float:
        return self.attn_scale if self.attn_scale is not None else math.sqrt(self.d_head)

    @property
    def has_attn_out_bias(self) -> bool:
        return self.attn_bias if self.attn_out_bias is None else self.attn_out_bias

    @property
    def n_rotary(self) -> int:
        return (self.rotary_dim or self.d_head) if self.positional == "rotary" else 0

    def head_names(self) -> list[str]:
        return [f"L{l}H{h}" for l in range(self.n_layers) for h in range(self.n_heads)]

    # (de)serialisation --------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> "ModelConfig":
        if not isinstance(data, dict):
            raise ModelLoadError(f"{where}: expected a JSON object, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in names]
        if unknown:
            hints = "".join(did_you_mean(k, names) for k in unknown[:1])
            raise ModelLoadError(f"{where}: unknown config key(s) {', '.join(map(repr, unknown))}{hints}")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.name not in data]
        if required:
            raise ModelLoadError(f"{where}: missing config key(s) {', '.join(required)}")
        try:
            return cls(**data)
        except TypeError as exc:  # pragma: no cover - defensive
            raise ModelLoadError(f"{where}: {exc}") from None

    @classmethod
    def from_json(cls, text: str, where: str = "config") -> "ModelConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
        return cls.from_dict(data, where)
