"""Train the shipped Hugging Face example with LayerNorm and MLPs that has induction heads.

Usage (the shipped checkpoint, about 2 minutes on one CPU thread):

    python scripts/train_gpt2_example.py --seed 0 --out circuitry/builtin/neox-induction

The defaults are the recipe of the shipped model: a 2-layer GPTNeoXForCausalLM
(rotary positions, LayerNorm, parallel attention + MLP, untied unembedding,
d_model 64, 4 heads, d_mlp 256, vocabulary 64 random tokens + BOS), trained in
plain PyTorch on "offset-periodic" data, initialised with N(0, 1) embeddings
and N(0, 1/d_model) matrices, AdamW 1e-3 with betas (0.9, 0.99), weight decay
0.3 on matrices, batch 64, 2000 steps, no dropout. --arch gpt2 trains a
GPT2LMHeadModel (learned positions) instead.

The script measures previous-token and induction heads from the model's own
attention patterns (output_attentions) on repeated random tokens every
--eval-every steps, and with --out writes the model with save_pretrained
(fp32 safetensors), a word-level tokenizer over the token names
"t0".."t{V-1}" and "<bos>", and train.json (recipe, command, time, scores).
Every knob the recipe search varied is a flag, so the variants that did not
work can be rerun; docs/models-gpt2-example.md lists them with their measured
scores. --log appends one JSON line per evaluation.

Data kinds (--data):
- spans: random tokens; `--copies` spans of length U[min_span, max_span] copied
  from a random earlier position to a random later one (random offsets, so no
  positional shortcut predicts the copy).
- offset-periodic: BOS + a random prefix of U[0, max_prefix] tokens + a random
  block of L ~ U[min_period, max_period] tiled to the end.
- periodic: the attention-only toy's data (BOS + block tiled, prefix 0).
- mix: each sequence is spans or offset-periodic with probability 1/2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a run (with the seed, reproducible on the same torch build)."""

    arch: str = "neox"  # neox (rotary positions) | gpt2 (learned positions)
    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 64
    mlp_ratio: int = 4
    n_vocab: int = 64  # random tokens 0..n_vocab-1; BOS is id n_vocab
    n_ctx: int = 64
    tied: bool = False
    rotary_pct: float = 1.0  # neox only
    dropout: float = 0.0  # residual, embedding and attention dropout (Hugging Face GPT-2 default 0.1)
    data: str = "offset-periodic"
    copies: int = 4
    min_span: int = 5
    max_span: int = 15
    max_prefix: int = 24
    min_period: int = 8
    max_period: int = 24
    loss_on: str = "all"  # all | copied (copied positions weight 1, others --other-weight)
    other_weight: float = 0.1
    init_std: float = 0.125  # every weight matrix: 1/sqrt(d_model) (Hugging Face default 0.02)
    embed_std: float = 1.0  # token (and GPT-2 position) embeddings (Hugging Face default 0.02)
    steps: int = 2000
    batch: int = 64
    lr: float = 1e-3
    warmup: int = 0
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.3  # on matrices only (not on norms and biases)
    seed: int = 0

    @property
    def d_vocab(self) -> int:
        return self.n_vocab + 1

    @property
    def bos(self) -> int:
        return self.n_vocab


# ----------------------------------------------------------------------------- model

def build_model(r: Recipe):
    """A freshly initialised Hugging Face causal LM for the recipe (eager attention)."""
    torch.manual_seed(r.seed)
    if r.arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=r.d_vocab, n_positions=r.n_ctx, n_embd=r.d_model, n_layer=r.n_layers,
                         n_head=r.n_heads, n_inner=r.mlp_ratio * r.d_model, activation_function="gelu_new",
                         resid_pdrop=r.dropout, embd_pdrop=r.dropout, attn_pdrop=r.dropout,
                         initializer_range=r.init_std,
                         bos_token_id=r.bos, eos_token_id=r.bos, tie_word_embeddings=r.tied)
        model = GPT2LMHeadModel(cfg)
        embeds = [model.transformer.wte.weight, model.transformer.wpe.weight]
    elif r.arch == "neox":
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        cfg = GPTNeoXConfig(vocab_size=r.d_vocab, hidden_size=r.d_model, num_hidden_layers=r.n_layers,
                            num_attention_heads=r.n_heads, intermediate_size=r.mlp_ratio * r.d_model,
                            max_position_embeddings=r.n_ctx, rotary_pct=r.rotary_pct, hidden_act="gelu",
                            hidden_dropout=r.dropout, attention_dropout=r.dropout, initializer_range=r.init_std,
                            use_parallel_residual=True, bos_token_id=r.bos, eos_token_id=r.bos,
                            tie_word_embeddings=r.tied)
        if hasattr(cfg, "rope_parameters") and isinstance(cfg.rope_parameters, dict):
            cfg.rope_parameters["partial_rotary_factor"] = r.rotary_pct
        model = GPTNeoXForCausalLM(cfg)
        embeds = [model.gpt_neox.embed_in.weight]
    else:
        raise SystemExit(f"unknown --arch {r.arch!r}; use gpt2 or neox")
    model.config._attn_implementation = "eager"
    if r.embed_std != r.init_std:
        with torch.no_grad():
            for w in embeds:
                w.normal_(0.0, r.embed_std)
    return model


# ----------------------------------------------------------------------------- data

def make_batch(r: Recipe, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [batch, n_ctx] (BOS first) and copied [batch, n_ctx] (True where the token is a copy)."""
    if r.data == "mix":
        a = make_batch(dataclasses.replace(r, data="spans"), gen)
        b = make_batch(dataclasses.replace(r, data="offset-periodic"), gen)
        pick = torch.rand(r.batch, 1, generator=gen) < 0.5
        return torch.where(pick, a[0], b[0]), torch.where(pick, a[1], b[1])
    n = r.n_ctx
    tokens = torch.randint(0, r.n_vocab, (r.batch, n), generator=gen)
    tokens[:, 0] = r.bos
    copied = torch.zeros(r.batch, n, dtype=torch.bool)
    if r.data == "spans":
        for b in range(r.batch):
            for _ in range(r.copies):
                m = int(torch.randint(r.min_span, r.max_span + 1, (1,), generator=gen))
                # source [s, s+m) and destination [d, d+m) with s >= 1 and d >= s + m
                s = int(torch.randint(1, n - 2 * m + 1, (1,), generator=gen))
                d = int(torch.randint(s + m, n - m + 1, (1,), generator=gen))
                tokens[b, d:d + m] = tokens[b, s:s + m]
                copied[b, d:d + m] = True
    elif r.data in ("periodic", "offset-periodic"):
        for b in range(r.batch):
            p = 1 + (int(torch.randint(0, r.max_prefix + 1, (1,), generator=gen)) if r.data == "offset-periodic" else 0)
            L = int(torch.randint(r.min_period, r.max_period + 1, (1,), generator=gen))
            block = tokens[b, p:p + L].clone()
            reps = -(-(n - p) // L)
            tokens[b, p:] = block.repeat(reps)[: n - p]
            copied[b, p + L:] = True
    else:
        raise SystemExit(f"unknown --data {r.data!r}")
    return tokens, copied


def repeated(n_vocab: int, *, batch: int = 64, seq_len: int = 10, seed: int = 1) -> torch.Tensor:
    """BOS + seq_len random tokens + the same tokens again [batch, 1 + 2*seq_len]; the same tokens as
    circuitry.data.repeated_tokens(n_vocab + 1, n_vocab, batch=batch, seq_len=seq_len, seed=seed)."""
    block = torch.randint(0, n_vocab, (batch, seq_len), generator=torch.Generator().manual_seed(seed))
    return torch.cat([torch.full((batch, 1), n_vocab), block, block], dim=1)


# ----------------------------------------------------------------------------- measurement

def head_scores(attentions, tokens: torch.Tensor, seq_len: int) -> dict[str, torch.Tensor]:
    """From output_attentions on tokens [batch, 1 + 2L] = BOS + r + r (r of length L = seq_len):
    [layer, head] scores.

    previous_token: mean over queries q = 1..2L of A[q, q-1].
    induction: mean over queries q = L+1..2L of A[q, q-L+1], the token after the query token's first
      occurrence (ARENA's definition; the number used in the recipe search).
    prefix_matching: attention mass on the positions right after every earlier occurrence of the
      query's token, averaged over queries whose token occurred before (circuitry's `induction`
      detector). Accidental repeats inside a random block count too, which makes it a little lower.
    """
    pat = torch.stack(attentions)  # [layer, batch, head, q, k]
    L = seq_len
    prev = pat.diagonal(offset=-1, dim1=-2, dim2=-1).mean((1, 3))
    ind = pat.diagonal(offset=1 - L, dim1=-2, dim2=-1)[..., 2:].mean((1, 3))  # entry i is query q = L-1+i
    n = tokens.shape[1]
    dup = (tokens[:, :, None] == tokens[:, None, :]) & torch.ones(n, n, dtype=torch.bool).tril(-1)  # [b, q, k]
    mask = torch.zeros_like(dup)
    mask[:, :, 1:] = dup[:, :, :-1]  # k such that t[k-1] == t[q], k <= q
    has = mask.any(-1)  # [batch, q]
    mass = torch.einsum("lbhqk,bqk->lhbq", pat, mask.to(pat.dtype))
    prefix = (mass * has).sum((-1, -2)) / has.sum()
    return {"previous_token": prev, "induction": ind, "prefix_matching": prefix}


@torch.no_grad()
def evaluate(model, n_vocab: int, seq_lens=(10, 20), batch: int = 64, seed: int = 1) -> dict:
    """Previous-token and induction scores per head and the loss on each half, per seq_len."""
    model.eval()
    out = {}
    for L in seq_lens:
        tokens = repeated(n_vocab, batch=batch, seq_len=L, seed=seed)
        res = model(tokens, output_attentions=True)
        s = head_scores(res.attentions, tokens, L)
        nll = F.cross_entropy(res.logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")  # [b, pos-1]
        out[L] = {
            "previous_token": s["previous_token"].tolist(),
            "induction": s["induction"].tolist(),
            "prefix_matching": s["prefix_matching"].tolist(),
            "max_previous_token": float(s["previous_token"].max()),
            "max_induction": float(s["induction"].max()),
            "max_prefix_matching": float(s["prefix_matching"].max()),
            "loss_first_half": float(nll[:, 1:L].mean()),   # predicting tokens 2..L from positions 1..L-1
            "loss_repeat": float(nll[:, L + 1:].mean()),     # predicting tokens L+2..2L from positions L+1..2L-1
        }
    model.train()
    return out


def summary(ev: dict) -> str:
    return " | ".join(f"L={L}: prev {e['max_previous_token']:.2f} ind {e['max_induction']:.2f} "
                      f"(prefix {e['max_prefix_matching']:.2f}) "
                      f"loss {e['loss_first_half']:.2f}/{e['loss_repeat']:.2f}" for L, e in ev.items())


# ----------------------------------------------------------------------------- training

def train(r: Recipe, eval_every: int = 250, log=None, quiet: bool = False):
    """Train; returns (model, evaluation at the end, seconds, loss curve)."""
    model = build_model(r)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": r.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=r.lr, betas=r.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / r.warmup) if r.warmup else 1.0)
    gen = torch.Generator().manual_seed(r.seed + 1)
    losses = []
    start = time.perf_counter()
    ev = None
    for step in range(1, r.steps + 1):
        tokens, copied = make_batch(r, gen)
        logits = model(tokens).logits
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")  # [b, n-1]
        if r.loss_on == "all":
            loss = nll.mean()
        else:
            w = torch.where(copied[:, 1:], 1.0, r.other_weight)
            loss = (nll * w).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % eval_every == 0 or step == r.steps:
            ev = evaluate(model, r.n_vocab)
            secs = time.perf_counter() - start
            if not quiet:
                print(f"step {step:5d} loss {sum(losses[-50:]) / len(losses[-50:]):.3f} {secs:5.0f}s  {summary(ev)}",
                      flush=True)
            if log is not None:
                log.write(json.dumps({"recipe": dataclasses.asdict(r), "step": step, "seconds": round(secs, 1),
                                      "train_loss": sum(losses[-50:]) / len(losses[-50:]),
                                      "eval": {str(k): v for k, v in ev.items()}}) + "\n")
                log.flush()
    model.eval()
    return model, ev, time.perf_counter() - start, losses


# ----------------------------------------------------------------------------- saving

def save(model, r: Recipe, out: Path, ev: dict, seconds: float, losses: list[float], command: str) -> None:
    """save_pretrained (fp32 safetensors) + tokenizer + train.json."""
    out.mkdir(parents=True, exist_ok=True)
    if r.arch == "neox":  # the rotary settings also under their transformers 4.x names
        model.config.rotary_pct = r.rotary_pct
        model.config.rotary_emb_base = 10000.0
    model.save_pretrained(out, safe_serialization=True)
    try:
        save_tokenizer(r, out)
    except ImportError:
        print("tokenizers not installed: no tokenizer written", file=sys.stderr)
    import transformers

    record = {"recipe": dataclasses.asdict(r), "command": command, "seconds": round(seconds, 1),
              "torch": torch.__version__, "transformers": transformers.__version__,
              "final_loss_avg50": sum(losses[-50:]) / 50,
              "evaluation": {str(k): v for k, v in ev.items()}}
    (out / "train.json").write_text(json.dumps(record, indent=2) + "\n")
    for f in out.iterdir():  # save_pretrained may write owner-only files
        if f.is_file():
            f.chmod(0o644)


def save_tokenizer(r: Recipe, out: Path) -> None:
    """A whitespace word-level tokenizer: "t0".."t{V-1}" -> 0..V-1 and "<bos>" -> V; encoding text
    prepends <bos> (the model was trained with BOS at position 0)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(r.n_vocab)} | {"<bos>": r.bos}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<bos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", r.bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<bos>",
                                   unk_token="<bos>", pad_token="<bos>")
    fast.model_max_length = r.n_ctx
    fast.save_pretrained(out)
    path = out / "tokenizer_config.json"  # a class name that transformers 4.x and 5.x both know
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(cfg, indent=2) + "\n")


def parse(argv=None) -> tuple[Recipe, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    for name, f in fields.items():
        flag = "--" + name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=f.default)
        elif name == "betas":
            p.add_argument(flag, type=float, nargs=2, default=f.default)
        else:
            typ = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            p.add_argument(flag, type=typ, default=f.default)
    p.add_argument("--out", type=Path, help="directory for save_pretrained")
    p.add_argument("--log", type=Path, help="append one JSON line per evaluation")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    kw = {n: getattr(a, n) for n in fields}
    kw["betas"] = tuple(kw["betas"])
    return Recipe(**kw), a


def main(argv=None) -> int:
    r, a = parse(argv)
    torch.set_num_threads(a.threads)
    log = open(a.log, "a") if a.log else None
    try:
        model, ev, seconds, losses = train(r, a.eval_every, log)
    finally:
        if log:
            log.close()
    print(f"done in {seconds:.0f}s: {summary(ev)}")
    if a.out is not None:
        argv = sys.argv[1:] if argv is None else list(argv)
        command = "python scripts/train_gpt2_example.py " + shlex.join(argv)
        save(model, r, a.out, ev, seconds, losses, command)
        print(f"saved to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
