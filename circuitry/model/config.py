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
LAYER_OVERHEAD = 64 * 2**10  # bytes of Python objects (modules, hook points) per block
MAX_INT = 2**63  # sizes must fit torch's int64


def show(value: Any, limit: int = 60) -> str:
    """repr(value) for a message, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int(v: Any) -> bool:
    return _int(v) and 0 < v < MAX_INT


def finite_number(v: Any) -> bool:
    """A finite float, or an int that fits int64 (not a bool)."""
    if _int(v):
        return abs(v) < MAX_INT
    return isinstance(v, float) and math.isfinite(v)


def _positive_number(v: Any) -> bool:
    return finite_number(v) and v > 0


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
        problem = self.problem()
        if problem:
            raise ModelLoadError(f"invalid model config: {problem}")

    def problem(self) -> str | None:
        """What is wrong with this config (the first thing found), or None."""
        checks = (self._problem_in_sizes, self._problem_in_choices, self._problem_in_numbers,
                  self._problem_in_flags)
        return next((p for p in (check() for check in checks) if p), None)

    def _problem_in_sizes(self) -> str | None:
        for f in ("n_layers", "d_model", "n_heads", "d_head", "d_vocab", "n_ctx"):
            if not _positive_int(getattr(self, f)):
                return f"{f} must be a positive integer, got {show(getattr(self, f))}"
        for f in ("d_mlp", "n_kv_heads", "rotary_dim", "attn_window"):
            v = getattr(self, f)
            if v is not None and not _positive_int(v):
                return f"{f} must be a positive integer or null, got {show(v)}"
        if self.n_heads % self.kv_heads:
            return f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.kv_heads})"
        if self.positional == "rotary":
            rd = self.rotary_dim or self.d_head
            if rd > self.d_head or rd % 2:
                return f"rotary_dim must be even and at most d_head ({self.d_head}), got {rd}"
        if self.bos_token_id is not None and not (_int(self.bos_token_id) and 0 <= self.bos_token_id < self.d_vocab):
            return f"bos_token_id {show(self.bos_token_id)} is outside the vocabulary (0..{self.d_vocab - 1})"
        return None

    def _problem_in_choices(self) -> str | None:
        for f, choices in (("normalization", NORMALIZATIONS), ("positional", POSITIONALS), ("act_fn", ACTIVATIONS)):
            v = getattr(self, f)
            if not (v is None or isinstance(v, str)) or v not in choices:
                return f"{f} must be one of {choices}, got {show(v)}"
        if not isinstance(self.name, str):
            return f"name must be a string, got {show(self.name)}"
        return None

    def _problem_in_numbers(self) -> str | None:
        for f in ("norm_eps", "rotary_base"):
            if not _positive_number(getattr(self, f)):
                return f"{f} must be a finite number > 0, got {show(getattr(self, f))}"
        if self.attn_scale is not None and not _positive_number(self.attn_scale):
            return f"attn_scale must be a finite number > 0 or null, got {show(self.attn_scale)}"
        return None

    def _problem_in_flags(self) -> str | None:
        for f in ("gated_mlp", "parallel_attn_mlp", "attn_bias", "mlp_bias", "unembed_bias", "tied_embeddings"):
            if not isinstance(getattr(self, f), bool):
                return f"{f} must be true or false, got {show(getattr(self, f))}"
        if self.attn_out_bias is not None and not isinstance(self.attn_out_bias, bool):
            return f"attn_out_bias must be true, false or null, got {show(self.attn_out_bias)}"
        return None

    # memory --------------------------------------------------------------
    def n_params_estimate(self) -> int:
        """The number of parameters a `HookedTransformer` of this config holds (exact)."""
        d, h, kv, dh = self.d_model, self.n_heads, self.kv_heads, self.d_head
        attn = (h + 2 * kv) * d * dh + h * dh * d
        if self.attn_bias:
            attn += (h + 2 * kv) * dh
        if self.has_attn_out_bias:
            attn += d
        norm = {"LN": 2 * d, "RMS": d}.get(self.normalization or "", 0)
        block = attn + norm
        if not self.attn_only:
            m = self.d_mlp or 0
            block += (3 if self.gated_mlp else 2) * d * m + norm + ((m + d) if self.mlp_bias else 0)
        total = self.n_layers * block + self.d_vocab * d + norm
        if self.positional == "learned":
            total += self.n_ctx * d
        if not self.tied_embeddings:
            total += d * self.d_vocab
        if self.unembed_bias:
            total += self.d_vocab
        return total

    def memory_estimate(self, copies: int = 1) -> int:
        """Bytes that `copies` float32 copies of the model need, with the Python objects of its layers."""
        return copies * (4 * self.n_params_estimate() + LAYER_OVERHEAD * self.n_layers)

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
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> ModelConfig:
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
        except ModelLoadError as exc:
            raise ModelLoadError(f"{where}: {exc}") from None

    @classmethod
    def from_json(cls, text: str, where: str = "config") -> ModelConfig:
        return cls.from_dict(parse_json(text, where), where)


def parse_json(text: str, where: str) -> Any:
    """JSON text -> a Python value, or a one-line ModelLoadError naming `where`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise ModelLoadError(f"{where}: not a usable config (JSON nested too deeply)") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise ModelLoadError(f"{where}: not a usable config ({exc})") from None
