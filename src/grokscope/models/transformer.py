"""The grokking paper's transformer family, with TransformerLens parameter and hook names.

Nanda et al. 2023, Section 3 and Appendix A: n layers (1 in the mainline), learned positional embedding, optional LayerNorm,
ReLU or GELU MLP, attention-only option, untied embed/unembed, no biases outside the MLP.
Parameter names and shapes follow TransformerLens (`embed.W_E [d_vocab, d_model]`,
`blocks.0.attn.W_Q [n_heads, d_model, d_head]`, ...), so a state dict moves across unchanged.

Two forward passes compute the same function:
- `forward` runs every position and can fill an activation cache keyed by TransformerLens hook
  names (`blocks.0.attn.hook_pattern`, `blocks.0.mlp.hook_post`, ...). Analysis uses it.
- `forward_last` returns only the logits the loss reads (the final position), and `loss_last`
  the loss itself. For a 1-layer model without normalisation they tabulate everything that
  depends on one (position, token) pair (models/tabulated.py), so the per-example work is a
  sparse gather, a softmax over 3 positions, the MLP and one neuron-logit product; `loss_last`
  runs that part forward and backward by hand. Training uses it. Which table rows each example
  reads is the batch's `layout`: a caller that reuses a batch (the trainer, its train and test
  sets) builds it once with `Transformer.layout` and passes it in; without one it is built per call.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grokscope.config import ModelConfig
from grokscope.models import tabulated
from grokscope.models.loss import cross_entropy64, loss_and_acc


class Cache(dict):
    """Activations by TransformerLens hook name; `cache["post", 0]` works as in TransformerLens."""

    def __getitem__(self, key: str | tuple) -> Tensor:
        if isinstance(key, tuple):
            name, layer = key
            for prefix in (f"blocks.{layer}.attn.hook_", f"blocks.{layer}.mlp.hook_", f"blocks.{layer}.hook_"):
                if prefix + name in self:
                    return super().__getitem__(prefix + name)
            raise KeyError(key)
        return super().__getitem__(key)


def record(cache: Cache | None, name: str, x: Tensor) -> Tensor:
    """Put `x` in the activation cache (when there is one) under the hook name `name`; return `x`."""
    if cache is not None:
        cache[name] = x
    return x


class LayerNorm(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))
        self.b = nn.Parameter(torch.zeros(d))
        self.eps = 1e-5

    def forward(self, x: Tensor, cache: Cache | None = None, name: str = "") -> Tensor:
        """With a cache, records `{name}.hook_normalized`: as in TransformerLens, before the gain."""
        if cache is None:
            return F.layer_norm(x, x.shape[-1:], self.w, self.b, eps=self.eps)
        normalized = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        return record(cache, f"{name}.hook_normalized", normalized) * self.w + self.b


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: Tensor, cache: Cache | None = None, name: str = "") -> Tensor:
        """With a cache, records `{name}.hook_normalized`: as in TransformerLens, before the gain."""
        return record(cache, f"{name}.hook_normalized", x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)) * self.w


def make_norm(kind: str, d: int) -> nn.Module | None:
    return {"none": None, "LN": LayerNorm, "RMS": RMSNorm}[kind](d) if kind != "none" else None


class Embed(nn.Module):
    def __init__(self, d_vocab: int, d_model: int):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(d_vocab, d_model))


class PosEmbed(nn.Module):
    def __init__(self, n_ctx: int, d_model: int):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(n_ctx, d_model))


class Unembed(nn.Module):
    def __init__(self, d_model: int, d_vocab_out: int):
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(d_model, d_vocab_out))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, d, e))
        self.W_K = nn.Parameter(torch.empty(h, d, e))
        self.W_V = nn.Parameter(torch.empty(h, d, e))
        self.W_O = nn.Parameter(torch.empty(h, e, d))
        self.scale = 1.0 / math.sqrt(e)

    def forward(self, x: Tensor, cache: Cache | None, name: str, q_last: bool = False) -> Tensor:
        """x [batch, pos, d_model] -> attention output [batch, pos or 1, d_model]."""
        xq = x[:, -1:] if q_last else x
        q = record(cache, f"{name}.hook_q", torch.einsum("bpd,hde->bphe", xq, self.W_Q))
        k = record(cache, f"{name}.hook_k", torch.einsum("bpd,hde->bphe", x, self.W_K))
        v = record(cache, f"{name}.hook_v", torch.einsum("bpd,hde->bphe", x, self.W_V))
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * self.scale
        n_q, n_k = scores.shape[-2:]
        causal = torch.ones(n_q, n_k, dtype=torch.bool).tril(diagonal=n_k - n_q)
        scores = record(cache, f"{name}.hook_attn_scores", scores.masked_fill(~causal, float("-inf")))
        pattern = record(cache, f"{name}.hook_pattern", scores.softmax(dim=-1))
        z = record(cache, f"{name}.hook_z", torch.einsum("bhqk,bkhe->bqhe", pattern, v))
        return torch.einsum("bqhe,hed->bqd", z, self.W_O)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.act = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}[cfg.act_fn]

    def post(self, x: Tensor, cache: Cache | None, name: str) -> Tensor:
        pre = record(cache, f"{name}.hook_pre", x @ self.W_in + self.b_in)
        return record(cache, f"{name}.hook_post", self.act(pre))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = make_norm(cfg.normalization, cfg.d_model)
        self.attn = Attention(cfg)
        self.ln2 = None if cfg.attn_only else make_norm(cfg.normalization, cfg.d_model)
        self.mlp = None if cfg.attn_only else MLP(cfg)


def dropout_keep(shape: tuple[int, ...], p: float, gen: torch.Generator | None, dtype: torch.dtype) -> Tensor | None:
    """The inverted-dropout multiplier (0 or 1/(1-p)), drawn from an explicit generator so that a
    resumed run replays the same masks; None when there is no dropout."""
    if p == 0.0 or gen is None:
        return None
    return (torch.rand(shape, generator=gen) >= p).to(dtype) / (1.0 - p)  # drawn on the CPU: the same masks on any device


def dropout(x: Tensor, p: float, gen: torch.Generator | None) -> Tensor:
    keep = dropout_keep(tuple(x.shape), p, gen, x.dtype)
    keep = keep if keep is None else keep.to(x.device)
    return x if keep is None else x * keep


class Transformer(nn.Module):
    """Decoder-only transformer; see the module docstring."""

    def __init__(self, cfg: ModelConfig, d_vocab: int, d_vocab_out: int, n_ctx: int, mlp_dropout: float = 0.0):
        super().__init__()
        self.cfg, self.d_vocab, self.d_vocab_out, self.n_ctx = cfg, d_vocab, d_vocab_out, n_ctx
        self.mlp_dropout = mlp_dropout
        self.embed = Embed(d_vocab, cfg.d_model)
        self.pos_embed = PosEmbed(n_ctx, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = make_norm(cfg.normalization, cfg.d_model)
        self.unembed = Unembed(cfg.d_model, d_vocab_out)

    def init_weights(self, seed: int) -> None:
        """N(0, 1/d_model) for weights (or init_std), N(0, 1/d_vocab) for W_U, zero biases."""
        g = torch.Generator().manual_seed(seed)
        std = self.cfg.init_std or 1.0 / math.sqrt(self.cfg.d_model)
        with torch.no_grad():
            for name, prm in self.named_parameters():
                leaf = name.rsplit(".", 1)[-1]
                if leaf.startswith("b") and leaf != "W_pos":
                    prm.zero_()
                elif leaf == "w":  # norm gains
                    prm.fill_(1.0)
                elif leaf == "W_U":
                    prm.copy_(torch.randn(prm.shape, generator=g) / math.sqrt(self.d_vocab))
                else:
                    prm.copy_(torch.randn(prm.shape, generator=g) * std)

    # --------------------------------------------------------------------------- full forward
    def forward(self, tokens: Tensor, cache: Cache | None = None, gen: torch.Generator | None = None) -> Tensor:
        """tokens [batch, pos] -> logits [batch, pos, d_vocab_out]."""
        return self._run(tokens, cache, gen, last_only=False)

    def run_with_cache(self, tokens: Tensor) -> tuple[Tensor, Cache]:
        cache = Cache()
        logits = self._run(tokens, cache, None, last_only=False)
        return logits, cache

    def _run(self, tokens: Tensor, cache: Cache | None, gen: torch.Generator | None, last_only: bool) -> Tensor:
        n_pos = tokens.shape[1]
        # F.embedding, not W_E[tokens]: on more than one CPU thread the backward of indexing sums
        # repeated tokens in a varying order, and the same seed gave different runs
        x = record(cache, "hook_embed", F.embedding(tokens, self.embed.W_E))
        x = x + record(cache, "hook_pos_embed", self.pos_embed.W_pos[:n_pos])
        for layer, block in enumerate(self.blocks):
            name = f"blocks.{layer}"
            x = record(cache, f"{name}.hook_resid_pre", x)
            q_last = last_only and layer == len(self.blocks) - 1
            h = block.ln1(x) if block.ln1 is not None else x
            attn_out = record(cache, f"{name}.hook_attn_out", block.attn(h, cache, f"{name}.attn", q_last))
            x = (x[:, -1:] if q_last else x) + attn_out
            if block.mlp is not None:
                x = record(cache, f"{name}.hook_resid_mid", x)
                h = block.ln2(x) if block.ln2 is not None else x
                post = dropout(block.mlp.post(h, cache, f"{name}.mlp"), self.mlp_dropout, gen)
                x = x + record(cache, f"{name}.hook_mlp_out", post @ block.mlp.W_out + block.mlp.b_out)
            x = record(cache, f"{name}.hook_resid_post", x)
        if self.ln_final is not None:
            x = self.ln_final(x, cache, "ln_final")
        return x @ self.unembed.W_U

    # --------------------------------------------------------------------------- last position
    @property
    def tabulable(self) -> bool:
        """The tabulated path needs 1 layer, no normalisation, and an MLP."""
        return self.cfg.n_layers == 1 and self.cfg.normalization == "none" and not self.cfg.attn_only

    def layout(self, tokens: Tensor) -> tabulated.Layout:
        """The tabulated path's gather pattern of tokens [batch, pos]: which table rows each example
        reads. Build it once for a batch that is used again, and pass it to forward_last,
        loss_last and loss_and_acc_last; it describes these tokens only."""
        return tabulated.make_layout(tokens, self.cfg.n_heads, self.d_vocab)

    def forward_last(self, tokens: Tensor, gen: torch.Generator | None = None,
                     layout: tabulated.Layout | None = None) -> Tensor:
        """tokens [batch, pos] -> logits at the final position [batch, d_vocab_out].

        The tabulated path computes logits without an autograd graph; when one is being recorded
        (grad enabled and the parameters require it), this is the plain forward instead."""
        if not self.tabulable or (torch.is_grad_enabled() and self.embed.W_E.requires_grad):
            return self._run(tokens, None, gen, last_only=True)[:, -1]
        layout, tables, keep = self._tabulate(tokens, gen, layout)
        return tabulated.logits(layout, tables, self.cfg.act_fn, keep)

    def loss_last(self, tokens: Tensor, labels: Tensor, gen: torch.Generator | None = None,
                  layout: tabulated.Layout | None = None) -> Tensor:
        """Mean float64 cross-entropy of the last position against labels [batch].

        On the tabulated path the per-example forward and backward are hand-written (one fused
        autograd node); otherwise it is `cross_entropy64` of `forward_last`.
        """
        if not self.tabulable:
            return cross_entropy64(self.forward_last(tokens, gen), labels)
        layout, tables, keep = self._tabulate(tokens, gen, layout)
        return tabulated.tabulated_loss(tables, layout, labels, self.cfg.act_fn, keep)

    @torch.no_grad()
    def loss_and_acc_last(self, batches: list[tuple[Tensor, Tensor]],
                          layouts: list[tabulated.Layout | None] | None = None) -> list[tuple[float, float]]:
        """Float64 loss and accuracy of the last position for each (tokens, labels [batch]) pair,
        without dropout: evaluation. On the tabulated path the tables are built once for all the
        batches that share their query tokens (the train and test sets, in modular arithmetic);
        `layouts` are the batches' layouts where the caller holds them."""
        if not self.tabulable:
            return [loss_and_acc(self.forward_last(x), y) for x, y in batches]
        out, tables = [], {}
        for (x, y), layout in zip(batches, layouts or [None] * len(batches), strict=True):
            layout = self._layout_of(x, layout)
            key = (tuple(layout.uniq.tolist()), layout.n_key)
            if key not in tables:
                tables[key] = tabulated.build_tables(self, layout.uniq, layout.n_key)
            out.append(tabulated.loss_and_accuracy(layout, tables[key], y, self.cfg.act_fn))
        return out

    def _layout_of(self, tokens: Tensor, layout: tabulated.Layout | None) -> tabulated.Layout:
        """The layout the caller passed (checked against the batch's shape), or a new one."""
        if layout is None:
            return self.layout(tokens)
        if (layout.n, layout.n_key + 1) != tuple(tokens.shape):
            raise ValueError(f"a layout of {layout.n} examples of {layout.n_key + 1} tokens was passed with a batch "
                             f"of shape {tuple(tokens.shape)}: it belongs to other tokens")
        return layout

    def _tabulate(self, tokens: Tensor, gen: torch.Generator | None, layout: tabulated.Layout | None):
        """The batch's layout, the tables, and the MLP dropout multiplier [batch, d_mlp] (or None)."""
        layout = self._layout_of(tokens, layout)
        keep = dropout_keep((tokens.shape[0], self.cfg.d_mlp), self.mlp_dropout, gen, self.embed.W_E.dtype)
        return layout, tabulated.build_tables(self, layout.uniq, layout.n_key), keep


def build(cfg: ModelConfig, d_vocab: int, d_vocab_out: int, n_ctx: int, seed: int, mlp_dropout: float = 0.0) -> Transformer:
    model = Transformer(cfg, d_vocab, d_vocab_out, n_ctx, mlp_dropout)
    model.init_weights(seed)
    return model
