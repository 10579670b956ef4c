"""The layers of the canonical transformer: normalisation, attention, MLP, block.

Parameter names and layouts follow TransformerLens (row-vector convention,
`x @ W`): per head W_Q, W_K, W_V [head, d_model, d_head], W_O [head, d_head,
d_model]; MLP W_in [d_model, d_mlp], W_out [d_mlp, d_model].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from circuitry.model.config import ModelConfig
from circuitry.model.hooks import HookPoint


def wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums and statistics are taken in: float32 for half-precision models, else their own."""
    return torch.promote_types(dtype, torch.float32)


SMEAR_INIT = math.log(9.0)  # the smear parameter's start: sigmoid(ln 9) = 0.9 of the key's own position


def _param(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros(*shape))


class Norm(nn.Module):
    """LayerNorm / RMSNorm (with or without weights) or the identity.

    The scale (sqrt(mean(x^2) + eps) of the centred input) goes through
    `hook_scale`, so analyses can freeze it.
    """

    def __init__(self, kind: str | None, d: int, eps: float) -> None:
        super().__init__()
        self.kind, self.eps = kind, eps
        if kind is not None:
            self.hook_scale = HookPoint()  # [batch, pos, 1] (or [batch, pos, head, 1])
            self.hook_normalized = HookPoint()
        if kind in ("LN", "RMS"):
            self.w = nn.Parameter(torch.ones(d))
        if kind == "LN":
            self.b = _param(d)

    def forward(self, x: torch.Tensor, hooked: bool = True) -> torch.Tensor:
        if self.kind is None:
            return x
        dtype = x.dtype
        x = x.to(wide(dtype))  # the statistics in float32 (or float64) whatever the model's dtype
        if self.kind in ("LN", "LNPre"):
            x = x - x.mean(-1, keepdim=True)
        scale = (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()  # float32 or wider
        if hooked:
            scale = self.hook_scale(scale)
        x = (x / scale).to(dtype)
        if hooked:
            x = self.hook_normalized(x)
        if self.kind in ("LN", "RMS"):
            x = x * self.w
        if self.kind == "LN":
            x = x + self.b
        return x


def rotary_frequencies(cfg: ModelConfig, n_pos: int, device: torch.device,
                       local: bool = False) -> tuple[torch.Tensor, float]:
    """The rotary frequencies [n_rotary / 2] (float32) of a run of n_pos positions and the factor cos and
    sin are multiplied by: `cfg.rope_scaling` applied with the same float32 operations as transformers'
    `modeling_rope_utils`, so that the tables agree to the last bit. `local`: for a local layer (its own
    base `rotary_base_local`, never scaled, when the config has one)."""
    rd = cfg.n_rotary
    exponents = torch.arange(0, rd, 2, device=device, dtype=torch.int64).float() / rd  # [rd / 2]
    rs = cfg.rope_scaling
    if local and cfg.rotary_base_local is not None:
        return 1.0 / (cfg.rotary_base_local ** exponents), 1.0
    if rs is None or rs.kind == "linear":
        inv_freq = 1.0 / (cfg.rotary_base ** exponents)
        return (inv_freq if rs is None else inv_freq / rs.factor), 1.0
    assert rs.original_context is not None  # checked by ModelConfig
    if rs.kind == "dynamic":
        if n_pos <= rs.original_context:
            return 1.0 / (cfg.rotary_base ** exponents), 1.0
        n = torch.tensor(n_pos, dtype=torch.int64, device=device)
        base = cfg.rotary_base * ((rs.factor * n / rs.original_context) - (rs.factor - 1)) ** (rd / (rd - 2))
        return 1.0 / (base ** exponents), 1.0
    if rs.kind == "longrope":
        ext = rs.long_factor if n_pos > rs.original_context else rs.short_factor
        ext_t = torch.tensor(ext, dtype=torch.float32, device=device)
        return 1.0 / (ext_t * cfg.rotary_base ** exponents), rs.attention_factor
    # llama3: NTK-by-parts
    assert rs.low_freq_factor is not None and rs.high_freq_factor is not None
    inv_freq = 1.0 / (cfg.rotary_base ** exponents)
    old, low, high = rs.original_context, rs.low_freq_factor, rs.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old / low, inv_freq / rs.factor, inv_freq)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
    medium = ~(wavelen < old / high) * ~(wavelen > old / low)
    return torch.where(medium, smoothed, scaled), 1.0


def rotary_tables(cfg: ModelConfig, n_pos: int, device: torch.device,
                  local: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [pos, n_rotary] (float32) for GPT-NeoX / Llama style (rotate-half) rotary positions, scaled
    as `cfg.rope_scaling` says (see `rotary_frequencies`; `local`: the tables of a local layer)."""
    inv_freq, factor = rotary_frequencies(cfg, n_pos, device, local)
    angles = torch.outer(torch.arange(n_pos, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    if factor == 1.0:
        return angles.cos(), angles.sin()
    return angles.cos() * factor, angles.sin() * factor


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first n_rotary dims of x [batch, pos, head, d_head]."""
    rd = cos.shape[-1]
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    half = rd // 2
    rotated = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([x_rot * c + rotated * s, x_pass], dim=-1)


class QKNorm(Norm):
    """RMSNorm (with weights) of the queries or keys [batch, pos, head, d_head], before rotary.

    mode "head" (Qwen3, Gemma 3): each head's d_head vector on its own; weight [d_head], hook_scale
    [batch, pos, head, 1]. mode "projection" (OLMo-2): the whole projection of all (key/value) heads
    at once, as one vector of n * d_head; weight [n * d_head]; hook_scale [batch, pos, 1, 1], or
    [batch, pos, head, 1] when each head reads its own input (then head h is normalised by the RMS
    of the whole projection of the input it reads, `full`).
    """

    def __init__(self, mode: str, n: int, d_head: int, eps: float) -> None:
        super().__init__("RMS", d_head if mode == "head" else n * d_head, eps)
        self.mode, self.d_head = mode, d_head

    def forward(self, x: torch.Tensor, hooked: bool = True, rep: int = 1,  # type: ignore[override]
                full: torch.Tensor | None = None) -> torch.Tensor:
        """x [batch, pos, head, d_head] (key/value heads repeated `rep` times for GQA); full [batch, pos,
        head, n * d_head]: each head's whole projection, when heads read different inputs."""
        if self.mode == "head":
            return super().forward(x, hooked)
        dtype = x.dtype
        src = (x[:, :, ::rep].flatten(-2)[:, :, None] if full is None else full).to(wide(dtype))
        scale = self.hook_scale((src.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())  # [b, p, 1 or head, 1]
        y = self.hook_normalized((x.to(wide(dtype)) / scale).to(dtype))
        return y * self.w.view(-1, self.d_head).repeat_interleave(rep, 0)


class Attention(nn.Module):
    """Multi-head (or grouped-query) causal self-attention with per-head input hooks.

    `hook_q_input` / `hook_k_input` / `hook_v_input` [batch, pos, head, d_model]
    carry the residual stream each head reads as query / key / value input,
    before normalisation. They are only materialised when a hook is attached.
    With QK-norm, `hook_q` / `hook_k` are the projections before it,
    `q_norm.hook_scale` / `k_norm.hook_scale` its scales, `hook_rot_q` /
    `hook_rot_k` the normalised queries and keys after rotary. With a
    soft cap, `hook_attn_scores` holds the capped (and masked) scores.
    `hook_result` [batch, pos, head, d_model] (each head's z @ W_O, before
    b_O) is only materialised when a hook is attached.
    `layer` picks the layer's attention window (`cfg.window(layer)`).

    Keys that read the embeddings (`cfg.keys_read_embeddings(layer)`, key_input
    "embeddings"): `forward` gets `key_resid`, the residual stream entering layer
    0, and the keys project ln1(key_resid) instead of ln1(resid); `hook_k_input`
    then carries that stream. Its normalisation has no hook point of its own
    (ln1's `hook_scale` is the scale of the residual stream queries and values read).

    Smeared keys (`cfg.smeared_keys`, Olsson et al. 2022, "In-context Learning and
    Induction Heads", the smeared-key architecture): per head a learnable scalar
    alpha_h (`smear_alpha` [head]) and, at key position j > 0,
    k'_j = sigmoid(alpha_h) k_j + (1 - sigmoid(alpha_h)) k_{j-1}; k'_0 = k_0.
    The smear acts on the keys the scores read (after QK-norm and rotary);
    `hook_k` keeps the projection of each position's own input and
    `hook_k_smeared` [batch, pos, head, d_head] holds the smeared keys.
    alpha_h starts at ln 9 (sigmoid 0.9: a tenth of the previous key), so the smear
    starts small and training decides how much of it each head uses.
    """

    hook_q_input: HookPoint
    hook_k_input: HookPoint
    hook_v_input: HookPoint
    hook_q: HookPoint
    hook_k: HookPoint
    hook_v: HookPoint
    hook_rot_q: HookPoint
    hook_rot_k: HookPoint
    hook_attn_scores: HookPoint
    hook_pattern: HookPoint
    hook_z: HookPoint
    hook_result: HookPoint
    hook_k_smeared: HookPoint

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer
        h, kv, d, dh = cfg.n_heads, cfg.kv_heads, cfg.d_model, cfg.d_head
        self.W_Q, self.W_K, self.W_V = _param(h, d, dh), _param(kv, d, dh), _param(kv, d, dh)
        self.W_O = _param(h, dh, d)
        if cfg.attn_bias:
            self.b_Q, self.b_K, self.b_V = _param(h, dh), _param(kv, dh), _param(kv, dh)
        if cfg.has_attn_out_bias:
            self.b_O = _param(d)
        for name in ("q_input", "k_input", "v_input", "q", "k", "v", "rot_q", "rot_k",
                     "attn_scores", "pattern", "z", "result"):
            setattr(self, f"hook_{name}", HookPoint())
        if cfg.qk_norm is not None:
            self.q_norm = QKNorm(cfg.qk_norm, h, dh, cfg.norm_eps)
            self.k_norm = QKNorm(cfg.qk_norm, kv, dh, cfg.norm_eps)
        if cfg.smeared_keys:
            self.smear_alpha = nn.Parameter(torch.full((h,), SMEAR_INIT))  # [head]
            self.hook_k_smeared = HookPoint()

    def _bias(self, name: str) -> torch.Tensor | None:
        return getattr(self, name, None)

    def _project(self, resid: torch.Tensor, normed: torch.Tensor, norm: Norm, hook: HookPoint,
                 W: torch.Tensor, b: torch.Tensor | None,
                 qk_norm: QKNorm | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One of q, k, v as [batch, pos, head, d_head] (key/value heads expanded for GQA), and, when the heads
        read their own inputs and `qk_norm` normalises whole projections, each head's whole projection
        [batch, pos, head, n * d_head] (what that norm divides by)."""
        rep = self.cfg.n_heads // W.shape[0]
        full = None
        if hook.active:
            x = norm(hook(resid.unsqueeze(2).expand(-1, -1, self.cfg.n_heads, -1)), hooked=False)
            if qk_norm is not None and qk_norm.mode == "projection":
                whole = torch.einsum("bphd,gde->bphge", x, W)  # [batch, pos, head, n, d_head]
                whole = whole if b is None else whole + b
                full = whole.flatten(-2)
            W = W.repeat_interleave(rep, 0)
            b = None if b is None else b.repeat_interleave(rep, 0)
            out = torch.einsum("bphd,hde->bphe", x, W)
        else:
            out = torch.einsum("bpd,hde->bphe", normed, W)
            if rep > 1:
                out = out.repeat_interleave(rep, 2)
                b = None if b is None else b.repeat_interleave(rep, 0)
        return (out if b is None else out + b), full

    def smear(self, k: torch.Tensor) -> torch.Tensor:
        """Smeared keys [batch, pos, head, d_head]: sigmoid(alpha_h) k_j + (1 - sigmoid(alpha_h)) k_{j-1}, and k_0
        at position 0 (see the class docstring)."""
        s = torch.sigmoid(self.smear_alpha.to(wide(k.dtype))).to(k.dtype)[None, None, :, None]
        prev = torch.cat([k[:, :1], k[:, :-1]], dim=1)  # k_{j-1}, and k_0 itself at position 0
        return s * k + (1 - s) * prev

    def forward(self, resid: torch.Tensor, norm: Norm,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
                key_resid: torch.Tensor | None = None) -> torch.Tensor:
        """resid [batch, pos, d_model]: the residual stream entering the layer; key_resid: the stream the keys
        read instead (the embeddings, for keys that read them), None: resid."""
        normed = norm(resid)  # [batch, pos, d_model]
        q_norm, k_norm = getattr(self, "q_norm", None), getattr(self, "k_norm", None)
        q, q_full = self._project(resid, normed, norm, self.hook_q_input, self.W_Q, self._bias("b_Q"), q_norm)
        if key_resid is None:
            k_resid, k_normed = resid, normed
        else:
            k_resid = key_resid.to(resid.device)
            k_normed = norm(k_resid, hooked=False)
        k, k_full = self._project(k_resid, k_normed, norm, self.hook_k_input, self.W_K, self._bias("b_K"), k_norm)
        q, k = self.hook_q(q), self.hook_k(k)  # [batch, pos, head, d_head]
        v = self.hook_v(self._project(resid, normed, norm, self.hook_v_input, self.W_V, self._bias("b_V"))[0])
        if q_norm is not None and k_norm is not None:
            q = q_norm(q, full=q_full)
            k = k_norm(k, rep=self.cfg.n_heads // self.cfg.kv_heads, full=k_full)
        if rotary is not None:
            q = self.hook_rot_q(apply_rotary(q, *rotary))
            k = self.hook_rot_k(apply_rotary(k, *rotary))
        if self.cfg.smeared_keys:
            k = self.hook_k_smeared(self.smear(k))
        n = q.shape[1]
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / self.cfg.scale  # [batch, head, q, k]
        cap = self.cfg.attn_scores_soft_cap
        if cap is not None:
            scores = torch.tanh(scores / cap) * cap
        causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        window = self.cfg.window(self.layer)
        if window is not None:  # sliding window: q - k < window
            causal = causal.triu(1 - window)
        scores = self.hook_attn_scores(scores.masked_fill(~causal, float("-inf")))
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1, dtype=wide(scores.dtype)).to(scores.dtype))
        z = self.hook_z(torch.einsum("bhqk,bkhe->bqhe", pattern, v))  # [batch, pos, head, d_head]
        if self.hook_result.active:  # each head's output [batch, pos, head, d_model], only when hooked
            out = self.hook_result(torch.einsum("bqhe,hed->bqhd", z, self.W_O)).sum(2)
        else:
            out = torch.einsum("bqhe,hed->bqd", z, self.W_O)
        b_O = self._bias("b_O")
        return out if b_O is None else out + b_O


_ACT = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


class MLP(nn.Module):
    """Dense or gated (SwiGLU-style) MLP."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, m = cfg.d_model, cfg.d_mlp
        assert m is not None
        self.W_in, self.W_out = _param(d, m), _param(m, d)
        if cfg.gated_mlp:
            self.W_gate = _param(d, m)
            self.hook_pre_linear = HookPoint()
        if cfg.mlp_bias:
            self.b_in, self.b_out = _param(m), _param(d)
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = _ACT[self.cfg.act_fn]
        b_in = getattr(self, "b_in", None)
        if self.cfg.gated_mlp:
            pre = self.hook_pre(x @ self.W_gate)
            lin = self.hook_pre_linear(x @ self.W_in if b_in is None else x @ self.W_in + b_in)
            post = self.hook_post(act(pre) * lin)
        else:
            pre = self.hook_pre(x @ self.W_in if b_in is None else x @ self.W_in + b_in)
            post = self.hook_post(act(pre))
        out = post @ self.W_out
        b_out = getattr(self, "b_out", None)
        return out if b_out is None else out + b_out


class Block(nn.Module):
    """One transformer block (layer `layer`): attention then MLP (or both in parallel).

    With `cfg.post_norms`, `ln1_post` / `ln2_post` normalise the attention and MLP outputs;
    `hook_attn_out` / `hook_mlp_out` are what is added to the residual stream (after them).
    Without pre-norms (`cfg.pre_norms` false) ln1 / ln2 are the identity.
    """

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.ln1 = Norm(cfg.pre_norm_kind, cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.hook_resid_pre, self.hook_attn_out, self.hook_resid_post = HookPoint(), HookPoint(), HookPoint()
        if cfg.post_norms:
            self.ln1_post = Norm(cfg.post_norm_kind, cfg.d_model, cfg.norm_eps)
        if not cfg.attn_only:
            self.ln2 = Norm(cfg.pre_norm_kind, cfg.d_model, cfg.norm_eps)
            if cfg.post_norms:
                self.ln2_post = Norm(cfg.post_norm_kind, cfg.d_model, cfg.norm_eps)
            self.mlp = MLP(cfg)
            self.hook_mlp_in, self.hook_mlp_out = HookPoint(), HookPoint()  # [batch, pos, d_model]: before ln2
            if not cfg.parallel_attn_mlp:
                self.hook_resid_mid = HookPoint()

    def forward(self, resid: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
                embed: torch.Tensor | None = None) -> torch.Tensor:
        """The residual stream after the block [batch, pos, d_model]; embed: the stream entering layer 0, which
        the keys read when they read the embeddings (`cfg.keys_read_embeddings`)."""
        return self.run(resid, rotary, embed)[0]

    def run(self, resid: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
            embed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward`'s output and the block's input as `hook_resid_pre` left it."""
        resid = self.hook_resid_pre(resid)  # [batch, pos, d_model]
        key_resid = embed if self.cfg.keys_read_embeddings(self.layer) else None
        return self._body(resid, self.attn(resid, self.ln1, rotary, key_resid)), resid

    def _body(self, resid: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """The block's output from its input and its attention's output (post-norm, hooks, MLP)."""
        if self.cfg.post_norms:
            attn_out = self.ln1_post(attn_out)
        attn_out = self.hook_attn_out(attn_out)
        if self.cfg.attn_only:
            return self.hook_resid_post(resid + attn_out)
        if self.cfg.parallel_attn_mlp:
            return self.hook_resid_post(resid + attn_out + self.mlp_branch(resid))
        mid = self.hook_resid_mid(resid + attn_out)
        return self.hook_resid_post(mid + self.mlp_branch(mid))

    def mlp_branch(self, resid: torch.Tensor) -> torch.Tensor:
        """What the MLP adds to the residual stream `resid` reaches it from [batch, pos, d_model], through
        `hook_mlp_in`, ln2, the MLP, ln2_post (with post-norms) and `hook_mlp_out`."""
        out = self.mlp(self.ln2(self.mlp_input(resid)))
        if self.cfg.post_norms:
            out = self.ln2_post(out)
        return self.hook_mlp_out(out)

    def mlp_input(self, resid: torch.Tensor) -> torch.Tensor:
        """The MLP's own copy of its input through `hook_mlp_in` (a copy only when hooked, so that what a hook
        changes, and the gradient it sees, is the MLP's alone, not the residual stream's)."""
        return self.hook_mlp_in(resid.clone()) if self.hook_mlp_in.active else resid


def init_normal_(params: dict[str, torch.Tensor], cfg: ModelConfig, generator: torch.Generator) -> None:
    """Initialise weights in place: W_E, W_pos ~ N(0, 1); matrices ~ N(0, 1/fan) (fan = d_model or d_mlp)."""
    with torch.no_grad():
        for name, p in params.items():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("W_E", "W_pos"):
                p.normal_(0.0, 1.0, generator=generator)
            elif leaf == "W_out":
                p.normal_(0.0, 1.0 / math.sqrt(cfg.d_mlp or cfg.d_model), generator=generator)
            elif leaf.startswith("W_"):
                p.normal_(0.0, 1.0 / math.sqrt(cfg.d_model), generator=generator)
