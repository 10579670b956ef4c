"""The configuration of the canonical hooked transformer: one frozen dataclass.

Every architecture circuitry analyses is described by a `ModelConfig`: the toy
attention-only models, GPT-2, GPT-J, GPT-NeoX (Pythia), the Llama family, Qwen3,
Phi-3, OLMo-2 and Gemma 1/2/3. Fields that only some architectures use (rotary
positions and their scaling, RMSNorm, gated MLPs, parallel attention,
grouped-query attention, QK-norm, post-norms, soft-capping, local attention
layers) have defaults that switch them off. `RopeScaling` describes scaled
rotary positions (Llama 3.x, linear, dynamic NTK, LongRoPE).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from circuitry.errors import ModelLoadError, did_you_mean

NORMALIZATIONS = (None, "LN", "LNPre", "RMS", "RMSPre")
POSITIONALS = ("learned", "rotary", "none")
ACTIVATIONS = ("gelu", "gelu_new", "relu", "silu")
QK_NORMS = (None, "head", "projection")
ATTN_TYPES = ("global", "local")
ROPE_KINDS = ("linear", "dynamic", "llama3", "longrope")
KEY_INPUTS = ("residual", "embeddings")
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
class RopeScaling:
    """Scaled rotary positions, computed as transformers computes them (`modeling_rope_utils`).

    kind "linear": every frequency divided by `factor`.
    "dynamic" (dynamic NTK): a run of n > original_context positions uses the base
    rotary_base * (factor * n / original_context - (factor - 1)) ** (rd / (rd - 2))
    (rd = rotary_dim); shorter runs are unscaled. The frequencies depend on the run's
    length alone.
    "llama3" (Llama 3.1 NTK-by-parts): frequencies whose wavelength exceeds
    original_context / low_freq_factor are divided by `factor`, those with a wavelength
    below original_context / high_freq_factor are kept, and those between are
    interpolated smoothly.
    "longrope" (Phi-3): frequency i is divided by long_factor[i] when the run is longer
    than original_context, else by short_factor[i]; cos and sin are multiplied by
    `attention_factor` (so the rotated dims of queries and keys are scaled by it).
    """

    kind: str
    factor: float = 1.0
    original_context: int | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    long_factor: tuple[float, ...] | None = None
    short_factor: tuple[float, ...] | None = None
    attention_factor: float = 1.0

    def __post_init__(self) -> None:
        for f in ("long_factor", "short_factor"):  # JSON gives lists; keep the dataclass hashable
            v = getattr(self, f)
            if isinstance(v, list):
                object.__setattr__(self, f, tuple(v))

    @classmethod
    def from_value(cls, value: Any) -> Any:
        """A RopeScaling from a mapping of its fields (as JSON holds it); anything else unchanged
        (ModelConfig.problem then says what is wrong with it)."""
        if isinstance(value, Mapping) and "kind" in value and set(value) <= {f.name for f in dataclasses.fields(cls)}:
            return cls(**value)
        return value

    def problem(self, n_rotary: int) -> str | None:
        """What is wrong with these settings for `n_rotary` rotary dims (the first thing found), or None."""
        if self.kind not in ROPE_KINDS:
            return f"rope_scaling.kind must be one of {ROPE_KINDS}, got {show(self.kind)}"
        for f in ("factor", "attention_factor"):
            if not _positive_number(getattr(self, f)):
                return f"rope_scaling.{f} must be a finite number > 0, got {show(getattr(self, f))}"
        if self.kind != "linear" and not _positive_int(self.original_context):
            return (f"rope_scaling.original_context must be a positive integer for {self.kind!r}, "
                    f"got {show(self.original_context)}")
        if self.kind == "dynamic" and n_rotary <= 2:
            return f"rope_scaling: dynamic NTK scaling needs more than 2 rotary dims, got {n_rotary}"
        if self.kind == "llama3":
            lo, hi = self.low_freq_factor, self.high_freq_factor
            if not (_positive_number(lo) and _positive_number(hi) and hi > lo):  # type: ignore[operator]
                return (f"rope_scaling: llama3 needs low_freq_factor and high_freq_factor with "
                        f"0 < low < high, got {show(lo)} and {show(hi)}")
        if self.kind == "longrope":
            for f in ("long_factor", "short_factor"):
                v = getattr(self, f)
                if not (isinstance(v, tuple) and len(v) == n_rotary // 2 and all(_positive_number(x) for x in v)):
                    return (f"rope_scaling.{f} must be {n_rotary // 2} finite numbers > 0 (one per rotary "
                            f"frequency), got {show(v)}")
        elif self.long_factor is not None or self.short_factor is not None:
            return f"rope_scaling: long_factor and short_factor belong to 'longrope', not {self.kind!r}"
        if self.kind != "longrope" and self.attention_factor != 1.0:
            return f"rope_scaling: attention_factor belongs to 'longrope', not {self.kind!r}"
        if self.kind != "llama3" and (self.low_freq_factor is not None or self.high_freq_factor is not None):
            return f"rope_scaling: low_freq_factor and high_freq_factor belong to 'llama3', not {self.kind!r}"
        return None


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
    rope_scaling: scaled rotary positions (`RopeScaling`); None: unscaled.
    attn_types: per layer "global" or "local" (Gemma 2/3, Qwen2/3 with
    max_window_layers): attn_window then applies to the local layers only;
    None: attn_window (if any) applies to every layer.
    rotary_base_local: the rotary base of the local layers (Gemma 3); they are
    then never scaled by rope_scaling. None: local layers rotate like global ones.
    qk_norm: RMSNorm (with weights) of the queries and keys after their
    projection, before rotary: "head" normalises each head's d_head vector
    (Qwen3, Gemma 3), "projection" the whole projection of all heads at once
    (OLMo-2); None: none.
    pre_norms: ln1 / ln2 normalise the attention and MLP inputs (false for
    OLMo-2, whose blocks only normalise their outputs); ln_final is always
    there when `normalization` is set.
    post_norms: ln1_post / ln2_post normalise the attention and MLP outputs
    before they are added to the residual stream (Gemma 2/3, OLMo-2); they
    are RMSNorm (LayerNorm for LN models) with weights and are never folded.
    embed_scale: the token embeddings are multiplied by this (Gemma:
    sqrt(d_model), rounded to the model's dtype); None: 1.
    attn_scores_soft_cap: scores become cap * tanh(scores / cap) before the
    mask (Gemma 2); output_logits_soft_cap: the same for the logits.
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
    rope_scaling: RopeScaling | None = None
    attn_types: tuple[str, ...] | None = None
    rotary_base_local: float | None = None
    qk_norm: str | None = None
    pre_norms: bool = True
    post_norms: bool = False
    embed_scale: float | None = None
    attn_scores_soft_cap: float | None = None
    output_logits_soft_cap: float | None = None
    bos_token_id: int | None = None
    key_input: str = "residual"
    smeared_keys: bool = False
    name: str = "model"

    def __post_init__(self) -> None:
        # JSON gives a mapping and a list: keep the config hashable and comparable
        object.__setattr__(self, "rope_scaling", RopeScaling.from_value(self.rope_scaling))
        if isinstance(self.attn_types, list):
            object.__setattr__(self, "attn_types", tuple(self.attn_types))
        problem = self.problem()
        if problem:
            raise ModelLoadError(f"invalid model config: {problem}")

    def problem(self) -> str | None:
        """What is wrong with this config (the first thing found), or None."""
        checks = (self._problem_in_sizes, self._problem_in_choices, self._problem_in_numbers,
                  self._problem_in_flags, self._problem_in_layers)
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
        for f, choices in (("normalization", NORMALIZATIONS), ("positional", POSITIONALS), ("act_fn", ACTIVATIONS),
                           ("qk_norm", QK_NORMS), ("key_input", KEY_INPUTS)):
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
        for f in ("attn_scale", "rotary_base_local", "embed_scale", "attn_scores_soft_cap", "output_logits_soft_cap"):
            v = getattr(self, f)
            if v is not None and not _positive_number(v):
                return f"{f} must be a finite number > 0 or null, got {show(v)}"
        if self.rope_scaling is not None:
            if not isinstance(self.rope_scaling, RopeScaling):
                return (f"rope_scaling must be null or a mapping with kind, factor, original_context, "
                        f"low_freq_factor, high_freq_factor, long_factor, short_factor, attention_factor; "
                        f"got {show(self.rope_scaling)}")
            if self.positional != "rotary":
                return "rope_scaling needs rotary positions (positional: rotary)"
            return self.rope_scaling.problem(self.n_rotary)
        return None

    def _problem_in_flags(self) -> str | None:
        for f in ("gated_mlp", "parallel_attn_mlp", "attn_bias", "mlp_bias", "unembed_bias", "tied_embeddings",
                  "pre_norms", "post_norms", "smeared_keys"):
            if not isinstance(getattr(self, f), bool):
                return f"{f} must be true or false, got {show(getattr(self, f))}"
        if self.attn_out_bias is not None and not isinstance(self.attn_out_bias, bool):
            return f"attn_out_bias must be true, false or null, got {show(self.attn_out_bias)}"
        if self.post_norms and self.normalization is None:
            return "post_norms needs a normalization (RMS or LN)"
        return None

    def _problem_in_layers(self) -> str | None:
        types = self.attn_types
        if types is not None:
            if not (isinstance(types, tuple) and len(types) == self.n_layers and all(t in ATTN_TYPES for t in types)):
                return f"attn_types must list {ATTN_TYPES} for each of the {self.n_layers} layers, got {show(types)}"
            if "local" in types and self.attn_window is None:
                return "attn_types has local layers but attn_window is not set"
        if self.rotary_base_local is not None and (self.positional != "rotary" or "local" not in (types or ())):
            return "rotary_base_local needs rotary positions and local layers (attn_types)"
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
        per_norm = (norm if self.pre_norms else 0) + ({"LN": 2 * d, "RMS": d}[self.post_norm_kind]
                                                      if self.post_norms else 0)
        attn += {"head": 2 * dh, "projection": (h + kv) * dh}.get(self.qk_norm or "", 0)
        attn += h if self.smeared_keys else 0  # one smear parameter per head
        block = attn + per_norm
        if not self.attn_only:
            m = self.d_mlp or 0
            block += (3 if self.gated_mlp else 2) * d * m + per_norm + ((m + d) if self.mlp_bias else 0)
        total = self.n_layers * block + self.d_vocab * d + norm
        if self.positional == "learned":
            total += self.n_ctx * d
        if not self.tied_embeddings:
            total += d * self.d_vocab
        if self.unembed_bias:
            total += self.d_vocab
        return total

    def memory_estimate(self, copies: int = 1, bytes_per_param: int = 4) -> int:
        """Bytes that `copies` copies of the model need (float32 by default; 2 bytes a parameter in
        bfloat16 or float16), with the Python objects of its layers."""
        return copies * (bytes_per_param * self.n_params_estimate() + LAYER_OVERHEAD * self.n_layers)

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

    @property
    def pre_norm_kind(self) -> str | None:
        """The kind of ln1 / ln2: `normalization`, or None when the blocks have no pre-norms."""
        return self.normalization if self.pre_norms else None

    @property
    def post_norm_kind(self) -> str:
        """The kind of ln1_post / ln2_post: weighted LayerNorm for LN models, else RMSNorm."""
        return "LN" if self.normalization in ("LN", "LNPre") else "RMS"

    def keys_read_embeddings(self, layer: int) -> bool:
        """Whether the keys of `layer`'s heads read only the embeddings (key_input "embeddings", layer >= 1):
        no earlier head or MLP reaches them, so there is no K edge from one into them."""
        return self.key_input == "embeddings" and layer >= 1

    def is_local(self, layer: int) -> bool:
        """Whether `layer` is a local (sliding-window) layer of a model with per-layer attention types."""
        return self.attn_types is not None and self.attn_types[layer] == "local"

    def window(self, layer: int) -> int | None:
        """The attention window of `layer` (None: the full causal context)."""
        return self.attn_window if self.attn_types is None or self.is_local(layer) else None

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
