"""A straightforward transformer, written the way a researcher's notebook would write it.

It is the yardstick, not the product: `benchmarks/train_speed.py` times grokscope's step against
it, and the tests check that the optimised step computes the same loss and gradients. It runs
every position through nn.Linear-free einsums with standard autograd, loads the same
TransformerLens-named state dict, and supports the mainline family (1 layer, no LayerNorm, ReLU or GELU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ReferenceTransformer(nn.Module):
    def __init__(self, d_vocab: int, d_vocab_out: int, n_ctx: int, d_model: int = 128, n_heads: int = 4,
                 d_head: int = 32, d_mlp: int = 512, act_fn: str = "relu"):
        super().__init__()
        self.act = {"relu": F.relu, "gelu": F.gelu}[act_fn]
        self.W_E = nn.Parameter(torch.randn(d_vocab, d_model) / d_model**0.5)
        self.W_pos = nn.Parameter(torch.randn(n_ctx, d_model) / d_model**0.5)
        self.W_Q = nn.Parameter(torch.randn(n_heads, d_model, d_head) / d_model**0.5)
        self.W_K = nn.Parameter(torch.randn(n_heads, d_model, d_head) / d_model**0.5)
        self.W_V = nn.Parameter(torch.randn(n_heads, d_model, d_head) / d_model**0.5)
        self.W_O = nn.Parameter(torch.randn(n_heads, d_head, d_model) / d_model**0.5)
        self.W_in = nn.Parameter(torch.randn(d_model, d_mlp) / d_model**0.5)
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = nn.Parameter(torch.randn(d_mlp, d_model) / d_model**0.5)
        self.b_out = nn.Parameter(torch.zeros(d_model))
        self.W_U = nn.Parameter(torch.randn(d_model, d_vocab_out) / d_vocab**0.5)
        self.register_buffer("mask", torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.bool)))
        self.d_head = d_head

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens [batch, pos] -> logits [batch, pos, d_vocab_out]."""
        x = self.W_E[tokens] + self.W_pos[: tokens.shape[1]]
        q = torch.einsum("bpd,hde->bhpe", x, self.W_Q)
        k = torch.einsum("bpd,hde->bhpe", x, self.W_K)
        v = torch.einsum("bpd,hde->bhpe", x, self.W_V)
        scores = q @ k.transpose(-1, -2) / self.d_head**0.5
        n = tokens.shape[1]
        scores = scores.masked_fill(~self.mask[:n, :n], float("-inf"))
        z = scores.softmax(-1) @ v
        x = x + torch.einsum("bhpe,hed->bpd", z, self.W_O)
        x = x + self.act(x @ self.W_in + self.b_in) @ self.W_out + self.b_out
        return x @ self.W_U

    def load_tl_state(self, state: dict[str, Tensor]) -> None:
        """Copy a grokscope/TransformerLens 1-layer state dict into this model."""
        names = {"embed.W_E": "W_E", "pos_embed.W_pos": "W_pos", "unembed.W_U": "W_U"}
        for k in ("W_Q", "W_K", "W_V", "W_O"):
            names[f"blocks.0.attn.{k}"] = k
        for k in ("W_in", "b_in", "W_out", "b_out"):
            names[f"blocks.0.mlp.{k}"] = k
        with torch.no_grad():
            for src, dst in names.items():
                getattr(self, dst).copy_(state[src])


def reference_loss(logits_last: Tensor, labels: Tensor) -> Tensor:
    """The notebook's loss: float64 log-softmax cross-entropy at the final position."""
    logp = logits_last.double().log_softmax(-1)
    return -logp.gather(-1, labels[:, None]).mean()
