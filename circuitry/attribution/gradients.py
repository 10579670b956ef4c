"""EAP and EAP-IG: a score for every edge of the residual graph from gradients at the receivers' inputs.

For an edge s -> r (sender s, receiver input r) the score is

    score(s -> r) = sign * sum over prompts and positions of (a_s - a'_s) . g_r

with a_s the sender's output [d_model] on the clean prompts, a'_s on the
corrupted prompts, g_r the gradient of the metric at r's input (a head's
query/key/value input before its normalisation, an MLP's input, the final
residual for the logits), and sign = +1 for a metric where higher is better
(-1 where lower is better), so that a positive score means the edge helps:
patching it from the corrupted run is predicted to cost the metric that much.

- `eap` (Syed et al., 2023): g_r on the clean run. One clean pass with
  gradients, one corrupted pass, one backward pass.
- `eap-ig` (Hanna et al., 2024): g_r averaged over N runs whose input
  embeddings are e' + (k / N) (e - e'), k = 1..N (e clean, e' corrupted
  token embeddings; positions are the same in both). N forward-backward
  passes.
- `eap-ig-act` (the mask-gradient integrated gradients of auto-circuit): in
  run k every receiver input is (1 - alpha) x + alpha x' (x its input in this
  run, x' in the corrupted run), alpha = (k - 1) / N, k = 1..N, and the
  score is sign * (a_s - a'_s) . g_r with a_s the sender's output in that
  run, averaged. alpha = 0 is EAP; the interpolation moves every edge at once
  towards its corrupted value, the inputs interpolation moves the prompt.

Memory: the sender outputs [sender, batch, pos, d_model] (one tensor, a
contiguous block per receiver, scored by one matrix product) and one
receiver's gradient at a time (scored in its backward hook, then dropped): O(n_senders x batch x pos x d_model), never
[n_edges, ...]. Rows are chunked to fit the memory budget; each chunk's
gradient is weighted by its share of the rows (metrics are means over rows).
A node's score is the sum of its outgoing edges' scores: the gradient at a
sender's output is the sum of the gradients at the inputs that read it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from circuitry.attribution.layout import Layout
from circuitry.budget import chunk_budget, format_bytes, require
from circuitry.errors import UsageError

GRADIENT_METHODS = ("eap", "eap-ig", "eap-ig-act")


@dataclass(frozen=True)
class GradientScores:
    """edges [n_edges] (Layout.edges order), node_positions [n_senders, pos] (summed over prompts; None unless
    asked for)."""

    edges: torch.Tensor
    node_positions: torch.Tensor | None
    n_passes: int
    chunk: int
    metric_clean: float = float("nan")  # the metric on the clean and the corrupted prompts (from the same runs)
    metric_corrupted: float = float("nan")


def row_bytes(cfg, layout: Layout, pos: int, per_head_inputs: bool = False, itemsize: int = 4) -> int:
    """Bytes one prompt row needs in a forward-backward pass (in a model of `itemsize`-byte floats): the
    activations kept for the backward pass, every sender's output on the clean run and its difference from
    the corrupted run, and the logits (float32, with their gradient); with `per_head_inputs` the per-head
    copies of each block's input that mixing the inputs of each head makes."""
    d, H, L = cfg.d_model, cfg.n_heads, cfg.n_layers
    per_layer = 12 * pos * d + 2 * H * pos * pos + 4 * pos * (cfg.d_mlp or 0) + pos * H * d  # + one layer's grad
    if per_head_inputs:
        per_layer += 9 * pos * H * d
    senders = 3 * pos * len(layout.senders) * d  # clean, corrupted and their difference
    return itemsize * (L * per_layer + senders) + 4 * 4 * pos * cfg.d_vocab


def chunk_rows(cfg, layout: Layout, batch: int, pos: int, budget: int | None, per_head_inputs: bool = False,
               itemsize: int = 4) -> int:
    """Rows per forward-backward pass that fit the chunk budget; a UsageError when one row does not fit the
    memory budget."""
    one = row_bytes(cfg, layout, pos, per_head_inputs, itemsize)
    require(one, f"attribution of one {pos}-token prompt (activations with gradients and every sender's "
                 f"output, {format_bytes(one)})", budget)
    limit = budget if budget is not None else chunk_budget()
    return max(1, min(batch, limit // one))


def sender_outputs(model, tokens: torch.Tensor, layout: Layout,
                   extra: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """Every sender's output [sender, batch, pos, d_model] on `tokens` (no gradients)."""
    b, p = tokens.shape
    out = torch.zeros(len(layout.senders), b, p, model.cfg.d_model, device=model.device, dtype=model.dtype)
    with torch.no_grad(), model.hooks(_capture_hooks(model, layout, out)):
        logits = model(tokens)
    if extra is not None:
        extra(logits)
    return out


def _capture_hooks(model, layout: Layout, out: torch.Tensor) -> list:
    """Hooks that write every sender's output into out [sender, batch, pos, d_model] (detached; sender-major,
    so that the senders a receiver reads are one contiguous block)."""
    cfg = model.cfg

    def put(i: int):
        def hook(x, hook):
            out[i] = x.detach()
            return x
        return hook

    def heads(layer: int):
        first = layout.first_head(layer)

        def hook(z, hook):  # z [batch, pos, head, d_head] -> each head's output
            W_O = model.blocks[layer].attn.W_O.detach()  # [head, d_head, d_model]
            out[first:first + cfg.n_heads] = torch.einsum("bphe,hed->hbpd", z.detach(), W_O)
            return z
        return hook

    hooks = [("hook_embed", put(layout.index["embed"]))]
    if layout.learned_positions:
        hooks.append(("hook_pos_embed", put(layout.index["pos_embed"])))
    for layer in range(cfg.n_layers):
        hooks.append((f"blocks.{layer}.attn.hook_z", heads(layer)))
        if not cfg.attn_only:
            hooks.append((f"blocks.{layer}.hook_mlp_out", put(layout.index[f"M{layer}"])))
    return hooks


def receiver_hook_names(cfg, layout: Layout) -> list[tuple[str, int]]:
    """(hook name, receiver index of its first receiver) of every receiver input hook."""
    out = []
    for i, r in enumerate(layout.receivers):
        if r.kind in ("Q", "K", "V") and r.head == 0:
            out.append((f"blocks.{r.layer}.attn.hook_{r.kind.lower()}_input", i))
        elif r.kind == "mlp_in":
            out.append((f"blocks.{r.layer}.hook_mlp_in", i))
        elif r.kind == "direct":
            out.append((f"blocks.{cfg.n_layers - 1}.hook_resid_post", i))
    return out


class _Scorer:
    """Accumulates edge and per-position node scores from the receivers' gradients during backward."""

    def __init__(self, layout: Layout, n_pos: int, device, per_position: bool = False) -> None:
        self.layout = layout
        self.edges = torch.zeros(len(layout.edges), dtype=torch.float64, device=device)
        self.nodes = torch.zeros(len(layout.senders), n_pos, dtype=torch.float64, device=device) \
            if per_position else None
        self.delta: torch.Tensor | None = None  # [sender, batch, pos, d_model]
        self.weight = 1.0
        self.at: torch.Tensor | None = None  # [batch, pos] bool: the positions whose differences count
        self.rows = 1  # rows of the whole batch

    def grad_hook(self, first: int, per_head: bool) -> Callable[[torch.Tensor], None]:
        """The backward hook of one receiver input tensor (all heads of a layer for Q/K/V)."""
        return lambda g: self.score(first, per_head, g)

    def score(self, first: int, per_head: bool, g: torch.Tensor) -> None:
        """Add the scores of the edges into receiver `first` (and, per head, its layer's other heads of that kind)
        from the gradient g at their input: [batch, pos, head, d_model] or [batch, pos, d_model]."""
        assert self.delta is not None
        layout = self.layout
        with torch.no_grad():
            r = layout.receivers[first]
            up = self.delta[: r.n_up]  # [n_up, batch, pos, d_model], contiguous
            flat = up.reshape(r.n_up, -1)  # [n_up, batch * pos * d_model]: one matrix product per receiver
            g = g.to(up.dtype)
            if per_head:  # receivers first, first + 3, ... (Q/K/V interleaved)
                heads = g.permute(2, 0, 1, 3).reshape(g.shape[2], -1)  # [head, batch * pos * d_model]
                s = (flat @ heads.T).T.double() * self.weight  # [head, n_up]
                for h in range(layout.n_heads):
                    at = layout.offsets[first + 3 * h]
                    self.edges[at:at + r.n_up] += s[h]
                if self.nodes is not None:
                    self.nodes[: r.n_up] += torch.einsum("sbpd,bphd->sp", up, g).double() * self.weight
            else:
                at = layout.offsets[first]
                self.edges[at:at + r.n_up] += (flat @ g.reshape(-1)).double() * self.weight
                if self.nodes is not None:
                    self.nodes[: r.n_up] += torch.einsum("sbpd,bpd->sp", up, g).double() * self.weight


def norm_backward(norm, g: torch.Tensor, normalized: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The gradient at a normalisation's input from the gradient g [batch, pos, head, d_model] at its output
    (per head: each head's copy of the input), given the run's normalised input [batch, pos, d_model] and scale
    [batch, pos, 1]: g' = w g; (g' - mean(g') - x_hat mean(g' x_hat)) / scale for LayerNorm (no mean(g')
    for RMSNorm); g itself without normalisation."""
    if norm.kind is None:
        return g
    w = getattr(norm, "w", None)
    if w is not None:
        g = g * w.detach()
    x_hat, s = normalized[:, :, None], scale[:, :, None]
    out = g - x_hat * (g * x_hat).mean(-1, keepdim=True)
    if norm.kind in ("LN", "LNPre"):
        out = out - g.mean(-1, keepdim=True)
    return out / s


def _head_input_hooks(model, layout: Layout, scorer: _Scorer) -> list:
    """Hooks that score the Q/K/V edges from the gradients at each head's q, k and v, carried back through the
    projection and the layer's normalisation by hand, so that no per-head copy of the input is made."""
    cfg = model.cfg
    hooks: list = []
    firsts = {(r.layer, r.kind): i for i, r in enumerate(layout.receivers) if r.head == 0}
    for layer in range(cfg.n_layers):
        attn, ln = model.blocks[layer].attn, model.blocks[layer].ln1
        stats: dict[str, torch.Tensor] = {}
        if ln.kind is not None:
            for what in ("normalized", "scale"):
                hooks.append((f"blocks.{layer}.ln1.hook_{what}", _keep(stats, what)))
        for kind in ("Q", "K", "V"):
            W = getattr(attn, f"W_{kind}").detach()  # [head or kv head, d_model, d_head]: not expanded

            def on_grad(dq: torch.Tensor, W=W, ln=ln, stats=stats, first=firsts[(layer, kind)]) -> None:
                with torch.no_grad():
                    b, p, h, e = dq.shape  # the query heads of a key/value head are consecutive
                    grouped = dq.reshape(b, p, W.shape[0], h // W.shape[0], e)
                    g = torch.einsum("bpkre,kde->bpkrd", grouped, W).reshape(b, p, h, -1)  # at the normalised input
                    if ln.kind is not None:
                        g = norm_backward(ln, g, stats["normalized"], stats["scale"])
                scorer.score(first, True, g)
            hooks.append((f"blocks.{layer}.attn.hook_{kind.lower()}", _watch(on_grad)))
    return hooks


def _keep(stats: dict, what: str):
    def hook(x, hook):
        stats[what] = x.detach()
        return x
    return hook


@contextmanager
def frozen_parameters(model) -> Iterator[None]:
    """The model's parameters without requires_grad for the duration (restored after): a backward pass then
    saves only what the activations' gradients need."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def gradient_scores(model, batch, metric_tensor: Callable, method: str, steps: int, sign: float,
                    memory_budget: int | None = None, progress: Callable[[int, int], None] | None = None,
                    at: torch.Tensor | None = None, per_position: bool = False) -> GradientScores:
    """Edge scores of `method` (GRADIENT_METHODS) for the metric `metric_tensor(logits, batch, clean_logits)`
    (a differentiable 0-dim tensor) on a task batch (clean `tokens`, `corrupted`). at [batch, pos] (bool):
    only the senders' differences at those positions count (patches at those positions only)."""
    if method not in GRADIENT_METHODS:
        raise UsageError(f"unknown gradient method {method!r}; valid: {', '.join(GRADIENT_METHODS)}")
    if method != "eap" and (not isinstance(steps, int) or steps < 1):
        raise UsageError(f"--steps must be a positive integer, got {steps!r}")
    cfg = model.cfg
    layout = Layout.of(cfg)
    b, p = batch.tokens.shape
    chunk = chunk_rows(cfg, layout, b, p, memory_budget, method == "eap-ig-act", model.dtype.itemsize)
    scorer = _Scorer(layout, p, model.device, per_position)
    scorer.rows = b
    n_runs = 1 if method == "eap" else steps
    total = -(-b // chunk) * n_runs
    done = passes = 0
    values = [0.0, 0.0]  # the metric on the clean and corrupted prompts: a mean over rows, chunk by chunk
    with torch.inference_mode(False):  # tensors made in inference mode cannot take part in autograd: copies
        batch = batch.map_tensors(lambda t: t.clone())
        at = None if at is None else at.clone().to(model.device)
    with frozen_parameters(model):  # gradients flow to the activations only: no input is kept for weight grads
        for start in range(0, b, chunk):
            part = batch.select(slice(start, start + chunk))
            scorer.weight = sign * part.tokens.shape[0] / b / n_runs  # chunks and runs: a mean over both
            scorer.at = None if at is None else at[start:start + chunk]
            passes += _chunk(model, part, metric_tensor, method, n_runs, layout, scorer, values)
            done += n_runs
            if progress is not None:
                progress(done, total)
    return GradientScores(scorer.edges.cpu(), None if scorer.nodes is None else scorer.nodes.cpu(), passes, chunk,
                          *values)


def _chunk(model, part, metric_tensor: Callable, method: str, n_runs: int, layout: Layout,  # noqa: C901
           scorer: _Scorer, values: list[float]) -> int:
    """Score one chunk of rows (adding its share of the clean and corrupted metric to `values`); the number of
    forward passes run."""
    cfg = model.cfg
    clean_tokens, corrupted_tokens = model.check_tokens(part.tokens), model.check_tokens(part.corrupted)
    stash: dict[str, torch.Tensor] = {}
    clean = sender_outputs(model, clean_tokens, layout, extra=lambda lg: stash.__setitem__("logits", lg))
    corrupted_inputs: dict[str, torch.Tensor] = {}
    names = [n for n, _ in receiver_hook_names(cfg, layout)]

    def keep_inputs(x, hook):
        x0 = x[:, :, 0] if x.ndim == 4 else x  # a per-head input is the residual stream, expanded
        corrupted_inputs[hook.name] = x0.detach()
        return x
    corrupted = torch.zeros_like(clean)
    with torch.no_grad(), model.hooks([*_capture_hooks(model, layout, corrupted),
                                       *((n, keep_inputs) for n in names if method == "eap-ig-act")]):
        corrupted_logits = model(corrupted_tokens)
    clean_logits = stash["logits"]
    share = part.tokens.shape[0] / scorer.rows
    with torch.no_grad():
        values[0] += float(metric_tensor(clean_logits, part, clean_logits)) * share
        values[1] += float(metric_tensor(corrupted_logits, part, clean_logits)) * share
    del corrupted_logits
    e_clean, e_corr = clean[0].clone(), corrupted[0].clone()  # token embeddings (sender 0) [batch, pos, d_model]
    fixed = None
    if method != "eap-ig-act":  # the senders' differences are the same in every run: made once, in place
        fixed = clean.sub_(corrupted)
        del corrupted
        if scorer.at is not None:
            fixed.mul_(scorer.at[None, :, :, None])
    passes = 2
    for k in range(1, n_runs + 1):
        hooks: list = []
        if method == "eap-ig":
            alpha = k / n_runs
            leaf = (e_corr + alpha * (e_clean - e_corr)).requires_grad_(True)
        else:
            alpha = (k - 1) / n_runs if method == "eap-ig-act" else 0.0
            leaf = e_clean.clone().requires_grad_(True)
        hooks.append(("hook_embed", lambda x, hook, leaf=leaf: leaf))
        if method == "eap-ig-act" and alpha > 0:
            run_out = torch.zeros_like(clean)
            hooks += _capture_hooks(model, layout, run_out)
            hooks += [(n, _mix(alpha, corrupted_inputs[n])) for n in names]
        else:
            run_out = clean  # (for eap and eap-ig, `fixed` holds the differences instead)
        mixing = method == "eap-ig-act"  # mixes each head's own input: per-head inputs are made
        if not mixing:
            hooks += _head_input_hooks(model, layout, scorer)
        for name, first in receiver_hook_names(cfg, layout):
            per_head = layout.receivers[first].kind in ("Q", "K", "V")
            if per_head and not mixing:
                continue
            hooks.append((name, _watch(scorer.grad_hook(first, per_head))))
        with torch.enable_grad(), model.hooks(hooks):
            logits = model(clean_tokens)  # fills run_out when the run's own sender outputs are scored
            if fixed is not None:
                scorer.delta = fixed
            else:  # read by the gradient hooks during the backward pass below
                scorer.delta = run_out - corrupted
                if scorer.at is not None:
                    scorer.delta = scorer.delta * scorer.at[None, :, :, None]
            value = metric_tensor(logits, part, clean_logits)
            if not isinstance(value, torch.Tensor) or not value.requires_grad:
                raise UsageError("the metric does not depend on the logits through autograd, so it has no "
                                 "gradient to attribute")
            torch.autograd.grad(value, [leaf])
        passes += 1
    scorer.delta = None
    return passes


def _watch(on_grad: Callable[[torch.Tensor], None]):
    def hook(x, hook):
        if x.requires_grad:
            x.register_hook(on_grad)
        return x
    return hook


def _mix(alpha: float, corrupted_input: torch.Tensor):
    """x -> (1 - alpha) x + alpha x' (x' the corrupted run's input, broadcast over heads)."""
    def hook(x, hook):
        other = corrupted_input[:, :, None] if x.ndim == 4 else corrupted_input
        return (1 - alpha) * x + alpha * other
    return hook
