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
        if self.kind in ("LN", "LNPre"):
            x = x - x.mean(-1, keepdim=True)
        scale = (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        if hooked:
            scale = self.hook_scale(scale)
        x = x / scale
        if hooked:
            x = self.hook_normalized(x)
        if self.kind in ("LN", "RMS"):
            x = x * self.w
        if self.kind == "LN":
            x = x + self.b
        return x


def rotary_tables(cfg: ModelConfig, n_pos: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [pos, n_rotary] for GPT-NeoX / Llama style (rotate-half) rotary positions."""
    rd = cfg.n_rotary
    inv_freq = 1.0 / (cfg.rotary_base ** (torch.arange(0, rd, 2, device=device, dtype=torch.float32) / rd))
    angles = torch.outer(torch.arange(n_pos, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first n_rotary dims of x [batch, pos, head, d_head]."""
    rd = cos.shape[-1]
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    half = rd // 2
    rotated = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([x_rot * c + rotated * s, x_pass], dim=-1)


class Attention(nn.Module):
    """Multi-head (or grouped-query) causal self-attention with per-head input hooks.

    `hook_q_input` / `hook_k_input` / `hook_v_input` [batch, pos, head, d_model]
    carry the residual stream each head reads as query / key / value input,
    before normalisation. They are only materialised when a hook is attached.
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

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, kv, d, dh = cfg.n_heads, cfg.kv_heads, cfg.d_model, cfg.d_head
        self.W_Q, self.W_K, self.W_V = _param(h, d, dh), _param(kv, d, dh), _param(kv, d, dh)
        self.W_O = _param(h, dh, d)
        if cfg.attn_bias:
            self.b_Q, self.b_K, self.b_V = _param(h, dh), _param(kv, dh), _param(kv, dh)
        if cfg.has_attn_out_bias:
            self.b_O = _param(d)
        for name in ("q_input", "k_input", "v_input", "q", "k", "v", "rot_q", "rot_k",
                     "attn_scores", "pattern", "z"):
            setattr(self, f"hook_{name}", HookPoint())

    def _bias(self, name: str) -> torch.Tensor | None:
        return getattr(self, name, None)

    def _project(self, resid: torch.Tensor, normed: torch.Tensor, norm: Norm, hook: HookPoint,
                 W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """One of q, k, v as [batch, pos, head, d_head] (key/value heads expanded for GQA)."""
        rep = self.cfg.n_heads // W.shape[0]
        if hook.active:
            W = W.repeat_interleave(rep, 0)
            b = None if b is None else b.repeat_interleave(rep, 0)
            x = hook(resid.unsqueeze(2).expand(-1, -1, self.cfg.n_heads, -1))
            out = torch.einsum("bphd,hde->bphe", norm(x, hooked=False), W)
        else:
            out = torch.einsum("bpd,hde->bphe", normed, W)
            if rep > 1:
                out = out.repeat_interleave(rep, 2)
                b = None if b is None else b.repeat_interleave(rep, 0)
        return out if b is None else out + b

    def forward(self, resid: torch.Tensor, norm: Norm,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        normed = norm(resid)  # [batch, pos, d_model]
        q = self.hook_q(self._project(resid, normed, norm, self.hook_q_input, self.W_Q, self._bias("b_Q")))
        k = self.hook_k(self._project(resid, normed, norm, self.hook_k_input, self.W_K, self._bias("b_K")))
        v = self.hook_v(self._project(resid, normed, norm, self.hook_v_input, self.W_V, self._bias("b_V")))
        if rotary is not None:
            q = self.hook_rot_q(apply_rotary(q, *rotary))
            k = self.hook_rot_k(apply_rotary(k, *rotary))
        n = q.shape[1]
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / self.cfg.scale  # [batch, head, q, k]
        causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        if self.cfg.attn_window is not None:  # sliding window: q - k < attn_window
            causal = causal.triu(1 - self.cfg.attn_window)
        scores = self.hook_attn_scores(scores.masked_fill(~causal, float("-inf")))
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
        z = self.hook_z(torch.einsum("bhqk,bkhe->bqhe", pattern, v))  # [batch, pos, head, d_head]
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
    """One transformer block: attention then MLP (or both in parallel)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.ln1 = Norm(cfg.normalization, cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.hook_resid_pre, self.hook_attn_out, self.hook_resid_post = HookPoint(), HookPoint(), HookPoint()
        if not cfg.attn_only:
            self.ln2 = Norm(cfg.normalization, cfg.d_model, cfg.norm_eps)
            self.mlp = MLP(cfg)
            self.hook_mlp_in, self.hook_mlp_out = HookPoint(), HookPoint()  # [batch, pos, d_model]: before ln2
            if not cfg.parallel_attn_mlp:
                self.hook_resid_mid = HookPoint()

    def forward(self, resid: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        resid = self.hook_resid_pre(resid)  # [batch, pos, d_model]
        attn_out = self.hook_attn_out(self.attn(resid, self.ln1, rotary))
        if self.cfg.attn_only:
            return self.hook_resid_post(resid + attn_out)
        if self.cfg.parallel_attn_mlp:
            mlp_out = self.hook_mlp_out(self.mlp(self.ln2(self.mlp_input(resid))))
            return self.hook_resid_post(resid + attn_out + mlp_out)
        mid = self.hook_resid_mid(resid + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(self.mlp_input(mid))))
        return self.hook_resid_post(mid + mlp_out)

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
