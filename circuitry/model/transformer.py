"""`HookedTransformer`: the one model implementation every analysis runs on.

Tokens [batch, pos] (or text, for a model with a tokenizer) -> logits [batch,
pos, d_vocab]. Hook points carry TransformerLens names (`hook_embed`,
`blocks.{l}.attn.hook_pattern`, ...); `run_with_cache` records activations and
`run_with_hooks` reads or replaces them (forward and backward hooks), with
TransformerLens's keywords (`fwd_hooks`, `bwd_hooks`, `names_filter`, ...).
Per-head weights are exposed stacked over layers: W_Q [layer, head, d_model,
d_head], W_O [layer, head, d_head, d_model], ...; `OV` and `QK` as factored
[layer, head, d_model, d_model] matrices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from circuitry.errors import InputError, UsageError, did_you_mean
from circuitry.model.config import ModelConfig
from circuitry.model.hooks import ActivationCache, HookFn, HookPoint
from circuitry.model.layers import SMEAR_INIT, Block, Norm, init_normal_, rotary_tables

if TYPE_CHECKING:
    from circuitry.factored import FactoredMatrix

HookSpec = tuple["str | Callable[[str], bool]", HookFn]
RETURN_TYPES = ("logits", "loss", "both", None)
FORWARD_OPTIONS = ("return_type", "prepend_bos", "start_at_layer", "resid", "stop_at_layer")


def _hook_pair(spec: object) -> tuple[str | Callable[[str], bool], HookFn]:
    """A (hook name or filter over names, fn) pair, checked."""
    if not (isinstance(spec, (tuple, list)) and len(spec) == 2 and callable(spec[1])):
        raise UsageError(f"each hook is a pair (hook name or filter over names, fn(activation, hook)), got {spec!r}")
    return spec[0], spec[1]


def _check_options(what: str, kwargs: dict[str, Any]) -> None:
    unknown = [k for k in kwargs if k not in FORWARD_OPTIONS]
    if unknown:
        raise UsageError(f"{what} has no option {unknown[0]!r}{did_you_mean(unknown[0], FORWARD_OPTIONS)} "
                         f"(options of the forward pass: {', '.join(FORWARD_OPTIONS)})")


class Params(nn.Module):
    """A module that holds named parameters: embed.W_E, pos_embed.W_pos, unembed.W_U / b_U."""

    W_E: nn.Parameter
    W_pos: nn.Parameter
    W_U: nn.Parameter
    b_U: nn.Parameter


class HookedTransformer(nn.Module):
    """Decoder-only transformer with hook points; see `ModelConfig` for the options."""

    def __init__(self, cfg: ModelConfig, seed: int | None = 0, *, dtype: torch.dtype | None = None,
                 device: str | torch.device | None = None) -> None:
        """Parameters in `dtype` (float32 by default) on `device` (cpu by default), allocated once in that
        dtype: random when `seed` is given, else norm weights one and every other tensor zero."""
        super().__init__()
        with torch.device("meta"):
            self._build(cfg)
        device = torch.device(device) if device is not None else torch.get_default_device()
        if device.type != "meta":  # meta: shapes only, or parameters assigned later (`load_state_dict(assign=True)`)
            self.materialise(dtype or torch.float32, device)
        self.source: str | None = None  # where the weights were loaded from
        self.tokenizer = None  # a Hugging Face tokenizer when the model source provides one
        self.trained_positions: int | None = None  # positions the model works in, when its card says so
        self.tokenizer_note = ""  # why a model has no tokenizer, when its source knows
        self.use_attn_result = False  # whether a full run_with_cache records attn.hook_result
        if seed is not None and device.type != "meta":
            self.init_weights(seed)

    def _build(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.embed = Params()
        self.embed.W_E = nn.Parameter(torch.zeros(cfg.d_vocab, cfg.d_model))
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        if cfg.positional == "learned":
            self.pos_embed = Params()
            self.pos_embed.W_pos = nn.Parameter(torch.zeros(cfg.n_ctx, cfg.d_model))
            self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        self.blocks = nn.ModuleList(Block(cfg, l) for l in range(cfg.n_layers))
        self.ln_final = Norm(cfg.normalization, cfg.d_model, cfg.norm_eps)
        self.unembed = Params()
        if not cfg.tied_embeddings:
            self.unembed.W_U = nn.Parameter(torch.zeros(cfg.d_model, cfg.d_vocab))
        if cfg.unembed_bias:
            self.unembed.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))
        self.hook_dict: dict[str, HookPoint] = {}
        for name, mod in self.named_modules():
            if isinstance(mod, HookPoint):
                mod.name = name
                self.hook_dict[name] = mod

    def materialise(self, dtype: torch.dtype, device: str | torch.device) -> None:
        """Give every parameter still on the meta device real memory: ones for norm weights, the smear's start
        for smeared keys (`layers.SMEAR_INIT`), zeros else."""
        for mod in self.modules():
            for name, p in list(mod._parameters.items()):
                if p is not None and p.is_meta:
                    norm_weight = isinstance(mod, Norm) and name == "w"
                    value = SMEAR_INIT if name == "smear_alpha" else 1.0 if norm_weight else 0.0
                    mod._parameters[name] = nn.Parameter(torch.full(p.shape, value, dtype=dtype, device=device),
                                                         requires_grad=p.requires_grad)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.W_E.dtype

    def init_weights(self, seed: int = 0) -> None:
        """Random weights: W_E, W_pos ~ N(0, 1), other matrices ~ N(0, 1/fan-in); norms 1, biases 0."""
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for k, v in self.named_parameters():  # one float32 tensor at a time: the same draws in every dtype
                if k.rsplit(".", 1)[-1].startswith("W_"):
                    cpu = {k: torch.empty(v.shape, dtype=torch.float32)}
                    init_normal_(cpu, self.cfg, gen)
                    v.copy_(cpu[k])

    # ------------------------------------------------------------------ input
    @property
    def device(self) -> torch.device:
        return self.embed.W_E.device

    def check_tokens(self, tokens: torch.Tensor | Sequence | str, prepend_bos: bool | None = None) -> torch.Tensor:
        """Tokens as a LongTensor [batch, pos] on the model's device, or an InputError. Text (a string or a
        list of strings) is tokenized with `to_tokens` (BOS prepended when the model has one, unless
        `prepend_bos=False`)."""
        from circuitry.model.text import is_text

        if is_text(tokens):
            return self.to_tokens(tokens, prepend_bos)  # type: ignore[arg-type]
        if not isinstance(tokens, torch.Tensor):
            try:
                tokens = torch.tensor(tokens)
            except (ValueError, TypeError, RuntimeError, OverflowError) as exc:
                raise InputError(f"tokens must be a rectangular list of integer ids in "
                                 f"0..{self.cfg.d_vocab - 1} ({exc})") from None
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise InputError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2 or tokens.shape[1] == 0:
            raise InputError(f"tokens must have shape [batch, pos] with pos >= 1, got {tuple(tokens.shape)}")
        if tokens.numel() and tokens.device.type == "cpu":  # ids on an accelerator were checked when made
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.cfg.d_vocab:
                bad = hi if hi >= self.cfg.d_vocab else lo
                raise InputError(f"token id {bad} is outside the vocabulary (0..{self.cfg.d_vocab - 1})")
        if self.cfg.positional == "learned" and tokens.shape[1] > self.cfg.n_ctx:
            raise InputError(f"sequence of {tokens.shape[1]} tokens is longer than the context ({self.cfg.n_ctx})")
        return tokens.long().to(self.device)

    # ---------------------------------------------------------------- forward
    def embed_tokens(self, tokens: torch.Tensor, hooked: bool = True) -> torch.Tensor:
        """The residual stream entering block 0 [batch, pos, d_model]. `hook_embed` includes `cfg.embed_scale`
        (rounded to the model's dtype first, as transformers does for Gemma). `hooked=False`: past the hook
        points, untouched by their hooks."""
        emb = self.embed.W_E[tokens]
        if self.cfg.embed_scale is not None:
            emb = emb * float(torch.tensor(self.cfg.embed_scale, dtype=emb.dtype))  # a Python number: no copy
        resid = self.hook_embed(emb) if hooked else emb
        if self.cfg.positional == "learned":
            pos = self.pos_embed.W_pos[: tokens.shape[1]].expand(tokens.shape[0], -1, -1)
            resid = resid + (self.hook_pos_embed(pos) if hooked else pos)
        return resid

    def forward(self, tokens: torch.Tensor | Sequence | str, return_type: str | None = "logits", *,
                prepend_bos: bool | None = None, start_at_layer: int = 0, resid: torch.Tensor | None = None,
                stop_at_layer: int | None = None) -> Any:
        """Logits [batch, pos, d_vocab]; with `return_type` "loss" the mean next-token loss, "both" (logits,
        loss), None nothing (as TransformerLens). Text is tokenized first (`prepend_bos` as `to_tokens`).

        With `start_at_layer=l` and `resid` (the residual stream entering block
        l), the run skips the earlier layers; with `stop_at_layer=l` it returns
        the residual stream entering block l instead of logits. When the keys read
        the embeddings (`cfg.key_input` "embeddings"), they read the stream entering
        block 0 as its `hook_resid_pre` leaves it; a run that starts at a later
        layer computes it from the tokens past the embedding hooks.
        """
        if return_type not in RETURN_TYPES:
            raise UsageError(f"return_type must be one of {', '.join(map(repr, RETURN_TYPES))}, got {return_type!r}")
        tokens = self.check_tokens(tokens, prepend_bos)
        if resid is None:
            if start_at_layer:
                raise UsageError("start_at_layer needs the residual stream entering that layer (resid=...)")
            resid = self.embed_tokens(tokens)
        rotary = None
        if self.cfg.positional == "rotary":
            cos, sin = rotary_tables(self.cfg, tokens.shape[1], resid.device)  # float32 [pos, n_rotary]
            rotary = cos.to(resid.dtype), sin.to(resid.dtype)
        local_rotary = rotary
        if rotary is not None and self.cfg.rotary_base_local is not None:  # local layers rotate with their own base
            cos, sin = rotary_tables(self.cfg, tokens.shape[1], resid.device, local=True)
            local_rotary = cos.to(resid.dtype), sin.to(resid.dtype)
        embed = None  # the stream entering layer 0, for keys that read the embeddings (cfg.key_input)
        if self.cfg.key_input == "embeddings" and start_at_layer > 0:
            embed = self.embed_tokens(tokens, hooked=False)  # as a run from the start computes it (unpatched)
        for l in range(self.cfg.n_layers)[start_at_layer:stop_at_layer]:
            rot = local_rotary if self.cfg.is_local(l) else rotary
            if self.cfg.key_input == "embeddings" and l == 0:
                first: Block = self.blocks[0]  # type: ignore[assignment]
                resid, embed = first.run(resid, rot)  # (as hook_resid_pre leaves it)
            else:
                resid = self.blocks[l](resid, rot, embed)
        if stop_at_layer is not None:
            return resid
        logits = self.unembed_resid(self.ln_final(resid))
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        loss = self.loss(tokens, logits)
        return loss if return_type == "loss" else (logits, loss)

    def unembed_resid(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W_U + b_U for a normalised final residual x [..., d_model], soft-capped (cap * tanh(logits / cap))
        when the model has `output_logits_soft_cap`."""
        W_U = self.W_U
        out = x.to(W_U.device) @ W_U  # (the last block may sit on another device than the unembedding)
        b_U = getattr(self.unembed, "b_U", None)
        out = out if b_U is None else out + b_U
        cap = self.cfg.output_logits_soft_cap
        return out if cap is None else torch.tanh(out / cap) * cap

    def loss(self, tokens: torch.Tensor, logits: torch.Tensor | None = None,
             per_token: bool = False) -> torch.Tensor:
        """Next-token cross-entropy; per token [batch, pos-1] or the mean."""
        tokens = self.check_tokens(tokens)
        if logits is None:
            logits = self(tokens)
        lp = F.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -lp.gather(-1, tokens[:, 1:, None])[..., 0]
        return nll if per_token else nll.mean()

    # ------------------------------------------------------------------ hooks
    def hook_names(self) -> list[str]:
        return list(self.hook_dict)

    @property
    def mod_dict(self) -> dict[str, nn.Module]:
        """Every submodule by name, hook points included (TransformerLens's `mod_dict`)."""
        return {n: m for n, m in self.named_modules() if n}

    def _resolve(self, name: str | Callable[[str], bool]) -> list[HookPoint]:
        if callable(name):
            return [hp for n, hp in self.hook_dict.items() if name(n)]
        if not isinstance(name, str):
            raise UsageError(f"a hook point is named by a string or a filter over names, got {type(name).__name__}")
        if name not in self.hook_dict:
            raise UsageError(f"unknown hook point {name!r}{did_you_mean(name, self.hook_dict)}")
        return [self.hook_dict[name]]

    def add_hook(self, name: str | Callable[[str], bool], fn: HookFn,
                 dir: Literal["fwd", "bwd"] = "fwd") -> None:  # noqa: A002 - TransformerLens's name
        """Attach `fn` to the hook point `name` (or every hook point a filter over names accepts) until
        `reset_hooks`."""
        for hp in self._resolve(name):
            hp.add_hook(fn, dir)

    @contextmanager
    def hooks(self, fwd_hooks: Iterable[HookSpec] = (), bwd_hooks: Iterable[HookSpec] = (),
              reset_hooks_end: bool = True) -> Iterator["HookedTransformer"]:
        """Attach hooks (hook name or filter over names, fn) for the duration of a `with` block; with
        `reset_hooks_end=False` they stay attached. Every name is checked before any hook is attached."""
        plan = [(hp, d, fn) for d, specs in (("fwd", fwd_hooks), ("bwd", bwd_hooks))
                for name, fn in map(_hook_pair, specs) for hp in self._resolve(name)]
        for hp, d, fn in plan:
            hp.add_hook(fn, d)  # type: ignore[arg-type]
        try:
            yield self
        finally:
            if reset_hooks_end:
                for hp, d, fn in plan:
                    fns = hp.fns if d == "fwd" else hp.bwd_fns
                    if fn in fns:  # (unless reset_hooks removed it already)
                        fns.remove(fn)

    def reset_hooks(self, clear_contexts: bool = True, direction: Literal["fwd", "bwd", "both"] = "both",
                    including_permanent: bool = False) -> None:
        """Remove every hook (of one direction); the other arguments are TransformerLens's and change nothing."""
        for hp in self.hook_dict.values():
            hp.remove_hooks(direction)

    def run_with_hooks(self, tokens: torch.Tensor | Sequence | str, hooks: Iterable[HookSpec] = (), *,
                       fwd_hooks: Iterable[HookSpec] = (), bwd_hooks: Iterable[HookSpec] = (),
                       reset_hooks_end: bool = True, **kwargs: Any) -> Any:
        """The forward pass (logits, or what `return_type` asks for) with forward hooks `hooks` and
        `fwd_hooks` and backward hooks `bwd_hooks` attached, each `(hook name or filter over names,
        fn(activation, hook))`; removed afterwards unless `reset_hooks_end=False`. Backward hooks belong
        to the graph of this run: `.backward()` on its result calls them even after they are removed."""
        _check_options("run_with_hooks", kwargs)
        with self.hooks([*hooks, *fwd_hooks], bwd_hooks, reset_hooks_end):
            return self(tokens, **kwargs)

    def run_with_cache(self, tokens: torch.Tensor | Sequence | str,
                       names: str | Iterable[str] | Callable[[str], bool] | None = None,
                       hooks: Iterable[HookSpec] = (), *,
                       names_filter: str | Iterable[str] | Callable[[str], bool] | None = None,
                       remove_batch_dim: bool = False, device: str | torch.device | None = None,
                       **kwargs: Any) -> tuple[Any, ActivationCache]:
        """The forward pass and an `ActivationCache` of the hook points `names` (TransformerLens:
        `names_filter`): a name, a list of names or a filter over names; None: every hook point but the
        per-head inputs, `hook_normalized` and (unless `set_use_attn_result(True)`) `attn.hook_result`.
        `remove_batch_dim`: a one-prompt run's activations without their batch dimension; `device`: where
        the activations are kept."""
        if names is not None and names_filter is not None:
            raise UsageError("run_with_cache takes names or names_filter (the same thing), not both")
        _check_options("run_with_cache", kwargs)
        acts: dict[str, torch.Tensor] = {}

        def save(x: torch.Tensor, hook: HookPoint) -> None:
            acts[hook.name] = x.detach() if device is None else x.detach().to(device)

        selected: list[HookSpec] = [(n, save) for n in self._cache_names(names if names is not None
                                                                          else names_filter)]
        with self.hooks([*hooks, *selected]):
            out = self(tokens, **kwargs)
        cache = ActivationCache(acts, self.cfg.n_layers)
        return out, cache.remove_batch_dim() if remove_batch_dim else cache

    def _cache_names(self, names: str | Iterable[str] | Callable[[str], bool] | None) -> list[str]:
        if names is None:
            skip = ("_input", "hook_normalized", *(() if self.use_attn_result else ("hook_result",)))
            return [n for n in self.hook_dict if not n.endswith(skip)]
        if callable(names):
            return [n for n in self.hook_dict if names(n)]
        listed = [names] if isinstance(names, str) else list(names)
        for n in listed:
            self._resolve(n)  # a clear error for a name that is not a hook point
        return listed

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Whether a full `run_with_cache` records each head's output `attn.hook_result` [batch, pos, head,
        d_model] (z @ W_O per head, before b_O). A hook attached to `hook_result` works either way."""
        self.use_attn_result = bool(use_attn_result)

    # ------------------------------------------------------------------- text
    def to_tokens(self, text: str | Sequence[str], prepend_bos: bool | None = None,
                  move_to_device: bool = True) -> torch.Tensor:
        """Token ids [batch, pos] of a text or a list of texts (see `circuitry.model.text`)."""
        from circuitry.model.text import to_tokens

        return to_tokens(self, text, prepend_bos, move_to_device)

    def to_str_tokens(self, tokens: Any, prepend_bos: bool | None = None) -> list[str] | list[list[str]]:
        """Each token of a text or of token ids [pos] as a string."""
        from circuitry.model.text import to_str_tokens

        return to_str_tokens(self, tokens, prepend_bos)

    def to_string(self, tokens: Any) -> str | list[str]:
        """The text of token ids [pos] (a string) or [batch, pos] (a list of strings)."""
        from circuitry.model.text import to_string

        return to_string(self, tokens)

    # ---------------------------------------------------------------- weights
    def _stack(self, attr: str, module: str = "attn", expand_kv: bool = False,
               shape: tuple[int, ...] | None = None) -> torch.Tensor:
        out = []
        for block in self.blocks:
            mod = getattr(block, module)
            w = getattr(mod, attr, None)
            if w is None:
                w = torch.zeros(shape, device=self.device, dtype=self.dtype)  # type: ignore[arg-type]
            elif expand_kv and w.shape[0] != self.cfg.n_heads:
                w = w.repeat_interleave(self.cfg.n_heads // w.shape[0], 0)
            out.append(w)
        return torch.stack(out)

    @property
    def W_Q(self) -> torch.Tensor:
        return self._stack("W_Q")  # [layer, head, d_model, d_head]

    @property
    def W_K(self) -> torch.Tensor:
        return self._stack("W_K", expand_kv=True)

    @property
    def W_V(self) -> torch.Tensor:
        return self._stack("W_V", expand_kv=True)

    @property
    def W_O(self) -> torch.Tensor:
        return self._stack("W_O")  # [layer, head, d_head, d_model]

    @property
    def b_Q(self) -> torch.Tensor:
        return self._stack("b_Q", shape=(self.cfg.n_heads, self.cfg.d_head))

    @property
    def b_K(self) -> torch.Tensor:
        return self._stack("b_K", expand_kv=True, shape=(self.cfg.n_heads, self.cfg.d_head))

    @property
    def b_V(self) -> torch.Tensor:
        return self._stack("b_V", expand_kv=True, shape=(self.cfg.n_heads, self.cfg.d_head))

    @property
    def b_O(self) -> torch.Tensor:
        return self._stack("b_O", shape=(self.cfg.d_model,))  # [layer, d_model]

    def _mlp_stack(self, attr: str, shape: tuple[int, ...]) -> torch.Tensor:
        if self.cfg.attn_only:
            raise UsageError(f"{attr}: the model {self.cfg.name!r} has no MLPs")
        return self._stack(attr, module="mlp", shape=shape)

    @property
    def W_in(self) -> torch.Tensor:
        return self._mlp_stack("W_in", ())  # [layer, d_model, d_mlp]

    @property
    def W_out(self) -> torch.Tensor:
        return self._mlp_stack("W_out", ())  # [layer, d_mlp, d_model]

    @property
    def b_in(self) -> torch.Tensor:
        return self._mlp_stack("b_in", (self.cfg.d_mlp or 0,))

    @property
    def b_out(self) -> torch.Tensor:
        return self._mlp_stack("b_out", (self.cfg.d_model,))

    @property
    def W_E(self) -> torch.Tensor:
        return self.embed.W_E  # [d_vocab, d_model]

    @property
    def W_pos(self) -> torch.Tensor:
        if self.cfg.positional != "learned":
            return torch.zeros(self.cfg.n_ctx, self.cfg.d_model, device=self.device, dtype=self.dtype)
        return self.pos_embed.W_pos  # [n_ctx, d_model]

    @property
    def W_U(self) -> torch.Tensor:
        if self.cfg.tied_embeddings:
            return self.embed.W_E.T
        return self.unembed.W_U  # [d_model, d_vocab]

    @property
    def b_U(self) -> torch.Tensor:
        b = getattr(self.unembed, "b_U", None)
        return torch.zeros(self.cfg.d_vocab, device=self.device, dtype=self.dtype) if b is None else b

    @property
    def W_OV(self) -> torch.Tensor:
        """W_V W_O per head [layer, head, d_model, d_model] (small models only)."""
        return self.W_V @ self.W_O

    @property
    def W_QK(self) -> torch.Tensor:
        """W_Q W_K^T per head [layer, head, d_model, d_model] (small models only)."""
        return self.W_Q @ self.W_K.transpose(-1, -2)

    @property
    def OV(self) -> "FactoredMatrix":
        """W_V W_O per head as a factored [layer, head, d_model, d_model] matrix (any model size)."""
        from circuitry.factored import FactoredMatrix

        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self) -> "FactoredMatrix":
        """W_Q W_K^T per head as a factored [layer, head, d_model, d_model] matrix (any model size)."""
        from circuitry.factored import FactoredMatrix

        return FactoredMatrix(self.W_Q, self.W_K.transpose(-1, -2))

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---------------------------------------------------------------- folding
    def fold_layer_norm(self, center_weights: bool = True) -> "HookedTransformer":
        """Fold normalisation weights and biases into the weights that read them.

        As TransformerLens defines it: LN(x) = s(x) * w + b, so W·LN(x) + b0 =
        (w[:, None] * W)·s(x) + (b @ W + b0). The norms become the weightless
        LNPre / RMSPre; with LayerNorm the folded reading weights are centred
        along d_model (the normalised input has mean zero, so this changes
        nothing). Returns self; outputs are unchanged.
        """
        from circuitry.model.folding import fold_layer_norm

        fold_layer_norm(self, center_weights)
        return self

    def with_config(self, cfg: ModelConfig, state: dict[str, torch.Tensor]) -> None:
        """Rebuild the modules for a new config and load `state` into them (same device and dtype)."""
        device, dtype = self.device, self.dtype
        for name in list(self._modules):
            delattr(self, name)
        with torch.device("meta"):
            self._build(cfg)
        self.materialise(dtype, device)
        self.load_state_dict(state, strict=True)

    def replace_config(self, **changes) -> ModelConfig:
        return dataclasses.replace(self.cfg, **changes)
