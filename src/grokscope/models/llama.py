"""A Llama-style decoder with TransformerLens names: the copy paper's model (Lv et al. 2024).

The copy-LM family's model (`model.arch: llama`). It sits in `models/` beside the grokking
family's transformer, below the layers that load any run's model (`models.loading`, `models.tl`);
the rest of the copy LM (its data, trainer and measures) is in `grokscope.lm`, which re-exports
this module as `grokscope.lm.llama`.

RMSNorm before attention and MLP, rotary positions on queries and keys (the rotate-half layout
of GPT-NeoX and Hugging Face Llama: dimension i pairs with i + d_head/2), a SwiGLU MLP
(silu(x W_gate) * (x W_in)) W_out, no biases, tied or untied embeddings, attention and residual
dropout. Parameter names follow TransformerLens where it has them: `embed.W_E [d_vocab, d_model]`,
`blocks.{l}.attn.W_Q/W_K/W_V [n_heads, d_model, d_head]`, `W_O [n_heads, d_head, d_model]`,
`blocks.{l}.mlp.W_gate/W_in [d_model, d_mlp]`, `W_out [d_mlp, d_model]`, `blocks.{l}.ln1.w`,
`blocks.{l}.ln2.w`, `ln_final.w`, `unembed.W_U [d_model, d_vocab]` (absent when tied: then
W_U is `embed.W_E.T`).

Two paths compute the same function: without a cache, attention runs through
`F.scaled_dot_product_attention` (fused, the fast path for training); with a cache it is computed
explicitly so that `hook_attn_scores` and `hook_pattern` can be recorded under the same hook
names as `grokscope.models.transformer` (`blocks.0.attn.hook_pattern`, `cache["pattern", 0]`).
Dropout uses torch's global generator, which the LM trainer seeds per step, so a resumed run
replays the same masks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grokscope.config import ModelConfig
from grokscope.models.transformer import Cache, Embed, RMSNorm, Unembed, record


def rope_tables(n_pos: int, d_head: int, base: float, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """cos, sin [n_pos, d_head] for rotary embeddings; frequency base^(-2i/d_head) for pair i."""
    inv_freq = base ** (-torch.arange(0, d_head // 2, dtype=torch.float64) * 2 / d_head)
    angles = torch.arange(n_pos, dtype=torch.float64)[:, None] * inv_freq[None]  # [pos, d_head/2]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [batch, pos, head, d_head]: each pair (x_i, x_{i+d/2}) by angle pos * freq_i."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        if e % 2:
            raise ValueError("model.d_head must be even for rotary positions")
        self.W_Q = nn.Parameter(torch.empty(h, d, e))
        self.W_K = nn.Parameter(torch.empty(h, d, e))
        self.W_V = nn.Parameter(torch.empty(h, d, e))
        self.W_O = nn.Parameter(torch.empty(h, e, d))
        self.scale = 1.0 / math.sqrt(e)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: Cache | None, name: str, dropout_p: float) -> Tensor:
        """x [batch, pos, d_model] -> attention output [batch, pos, d_model]."""
        q = record(cache, f"{name}.hook_q", torch.einsum("bpd,hde->bphe", x, self.W_Q))
        k = record(cache, f"{name}.hook_k", torch.einsum("bpd,hde->bphe", x, self.W_K))
        v = record(cache, f"{name}.hook_v", torch.einsum("bpd,hde->bphe", x, self.W_V))
        q = record(cache, f"{name}.hook_rot_q", apply_rope(q, cos, sin))
        k = record(cache, f"{name}.hook_rot_k", apply_rope(k, cos, sin))
        if cache is None:
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               dropout_p=dropout_p, is_causal=True).transpose(1, 2)
        else:
            scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * self.scale
            n = scores.shape[-1]
            causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
            scores = record(cache, f"{name}.hook_attn_scores", scores.masked_fill(~causal, float("-inf")))
            pattern = record(cache, f"{name}.hook_pattern", scores.softmax(dim=-1))
            if dropout_p > 0:
                pattern = F.dropout(pattern, dropout_p)
            z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
        z = record(cache, f"{name}.hook_z", z)
        return torch.einsum("bqhe,hed->bqd", z, self.W_O)


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_gate = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))

    def forward(self, x: Tensor, cache: Cache | None, name: str) -> Tensor:
        pre = record(cache, f"{name}.hook_pre", x @ self.W_gate)  # TransformerLens: the gate
        pre_linear = record(cache, f"{name}.hook_pre_linear", x @ self.W_in)
        post = record(cache, f"{name}.hook_post", F.silu(pre) * pre_linear)
        return post @ self.W_out


class LlamaBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = RMSNorm(cfg.d_model, eps=1e-5)
        self.attn = LlamaAttention(cfg)
        self.ln2 = RMSNorm(cfg.d_model, eps=1e-5)
        self.mlp = SwiGLU(cfg)


class Llama(nn.Module):
    """Decoder-only Llama-style transformer; see the module docstring."""

    def __init__(self, cfg: ModelConfig, d_vocab: int, n_ctx: int):
        super().__init__()
        self.cfg, self.d_vocab, self.n_ctx = cfg, d_vocab, n_ctx
        self.embed = Embed(d_vocab, cfg.d_model)
        self.blocks = nn.ModuleList(LlamaBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_final = RMSNorm(cfg.d_model, eps=1e-5)
        self.unembed = None if cfg.tie_embeddings else Unembed(cfg.d_model, d_vocab)
        cos, sin = rope_tables(n_ctx, cfg.d_head, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @property
    def W_U(self) -> Tensor:
        """[d_model, d_vocab]: the unembedding (the embedding's transpose when tied)."""
        return self.embed.W_E.T if self.unembed is None else self.unembed.W_U

    def init_weights(self, seed: int) -> None:
        """N(0, init_std^2) for every matrix (default 1/sqrt(d_model)), norm gains 1.

        The output projections W_O and W_out get std / sqrt(2 n_layers) (GPT-2's rule), so the
        residual stream's variance does not grow with depth.
        """
        g = torch.Generator().manual_seed(seed)
        std = self.cfg.init_std or 1.0 / math.sqrt(self.cfg.d_model)
        with torch.no_grad():
            for name, prm in self.named_parameters():
                leaf = name.rsplit(".", 1)[-1]
                if leaf == "w":
                    prm.fill_(1.0)
                    continue
                s = std / math.sqrt(2 * self.cfg.n_layers) if leaf in ("W_O", "W_out") else std
                prm.copy_(torch.randn(prm.shape, generator=g) * s)

    def forward(self, tokens: Tensor, cache: Cache | None = None) -> Tensor:
        """tokens [batch, pos] -> logits [batch, pos, d_vocab]."""
        n_pos = tokens.shape[1]
        if n_pos > self.n_ctx:
            raise ValueError(f"sequence of {n_pos} tokens is longer than the context ({self.n_ctx})")
        cos, sin = self.rope_cos[:n_pos], self.rope_sin[:n_pos]
        p_attn = self.cfg.attn_dropout if self.training else 0.0
        p_resid = self.cfg.resid_dropout if self.training else 0.0
        # F.embedding, not W_E[tokens]: with more than one CPU thread the backward of advanced indexing
        # accumulates repeated tokens' gradients in a varying order, so identical runs differ in the last bits.
        x = record(cache, "hook_embed", F.embedding(tokens, self.embed.W_E))
        for layer, block in enumerate(self.blocks):
            name = f"blocks.{layer}"
            x = record(cache, f"{name}.hook_resid_pre", x)
            attn_out = block.attn(block.ln1(x), cos, sin, cache, f"{name}.attn", p_attn)
            x = x + record(cache, f"{name}.hook_attn_out", F.dropout(attn_out, p_resid) if p_resid else attn_out)
            x = record(cache, f"{name}.hook_resid_mid", x)
            mlp_out = block.mlp(block.ln2(x), cache, f"{name}.mlp")
            x = x + record(cache, f"{name}.hook_mlp_out", F.dropout(mlp_out, p_resid) if p_resid else mlp_out)
            x = record(cache, f"{name}.hook_resid_post", x)
        x = self.ln_final(x, cache, "ln_final")
        return x @ self.W_U

    def run_with_cache(self, tokens: Tensor) -> tuple[Tensor, Cache]:
        cache = Cache()
        logits = self.forward(tokens, cache)
        return logits, cache


def build_llama(cfg: ModelConfig, d_vocab: int, n_ctx: int, seed: int) -> Llama:
    model = Llama(cfg, d_vocab, n_ctx)
    model.init_weights(seed)
    return model


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
