"""A transformer built by hand to compute (a + b) mod p by Fourier multiplication.

Known answer for the analysis tests: its key frequencies are exactly the ones chosen, each MLP
neuron reads a single frequency, and its logits are A * sum_k cos(w_k(a+b-c)) up to small terms.

Construction (1 layer, 2 heads, GELU MLP, no LayerNorm), residual dimensions:
    tok[k]  cos(w_k x), sin(w_k x) of the token            (W_E, number tokens only)
    a[k]    cos(w_k a), sin(w_k a)  at `=`                  (head 0 copies tok from position 0)
    b[k]    cos(w_k b), sin(w_k b)  at `=`                  (head 1 copies tok from position 1)
    pos     one indicator per position                      (W_pos)
    out[k]  two logit dimensions read by W_U as cos(w_k c), -sin(w_k c)
Head h's query reads the `=` indicator and its key the indicator of position h, with a large
score, so it attends (almost) only to that position. Neuron (k, theta, s) has pre-activation
eps * (cos(w_k a + theta) + s cos(w_k b + theta)); for small eps, GELU(z) ~ z/2 + z^2/sqrt(2 pi),
so the difference of the s = +1 and s = -1 neurons is ~ 4 eps^2 cos(w_k a + theta) cos(w_k b + theta)
/ sqrt(2 pi), and reading it out with weight cos(2 theta + w_k c) summed over evenly spaced theta
leaves ~ cos(w_k(a+b-c)) (the linear and other terms cancel over theta).
"""

from __future__ import annotations

import math

import torch

from grokscope.analysis.circuits import ModularData
from grokscope.config import ModelConfig
from grokscope.models.transformer import Transformer, build
from grokscope.tasks.modular import all_pairs, labels

N_PHASES = 8  # theta = 2 pi j / 8: harmonics 1..4 of theta cancel in the readout


def fourier_model(p: int, ks: list[int], eps: float = 0.3, amp: float = 12.0, sign: int = 1) -> Transformer:
    """A model whose logits are ~ amp * sum_k cos(w_k(a + sign*b - c)) (see module docstring).

    sign = -1 stores b's wave as cos(-w b), sin(-w b), so the model computes a - b.
    """
    nk = len(ks)
    tok, a0, b0, pos0, out0 = 0, 2 * nk, 4 * nk, 6 * nk, 6 * nk + 3
    d_model = 8 * nk + 3
    n_neurons = nk * N_PHASES * 2
    cfg = ModelConfig(n_layers=1, d_model=d_model, n_heads=2, d_head=2 * nk, d_mlp=n_neurons, act_fn="gelu")
    model = build(cfg, d_vocab=p + 1, d_vocab_out=p, n_ctx=3, seed=0)
    x = torch.arange(p, dtype=torch.float64)
    c = torch.arange(p, dtype=torch.float64)
    with torch.no_grad():
        for prm in model.parameters():
            prm.zero_()
        W_E = torch.zeros(p + 1, d_model, dtype=torch.float64)
        for i, k in enumerate(ks):
            w = 2 * math.pi * k / p
            W_E[:p, tok + 2 * i] = torch.cos(w * x)
            W_E[:p, tok + 2 * i + 1] = torch.sin(w * x)
        model.embed.W_E.copy_(W_E)
        for j in range(3):
            model.pos_embed.W_pos[j, pos0 + j] = 1.0
        attn = model.blocks[0].attn
        score = 40.0 * math.sqrt(2 * nk)  # after the 1/sqrt(d_head) scale: logit gap 40
        for h in (0, 1):
            attn.W_Q[h, pos0 + 2, 0] = score
            attn.W_K[h, pos0 + h, 0] = 1.0
            slot = a0 if h == 0 else b0
            for j in range(2 * nk):
                attn.W_V[h, tok + j, j] = 1.0
                flip = sign if (h == 1 and j % 2 == 1) else 1  # sin(-w b) = -sin(w b)
                attn.W_O[h, j, slot + j] = float(flip)
        mlp = model.blocks[0].mlp
        n = 0
        for i, k in enumerate(ks):
            w = 2 * math.pi * k / p
            for j in range(N_PHASES):
                th = 2 * math.pi * j / N_PHASES
                for s in (1.0, -1.0):
                    # cos(x + th) = cos x cos th - sin x sin th
                    mlp.W_in[a0 + 2 * i, n] = eps * math.cos(th)
                    mlp.W_in[a0 + 2 * i + 1, n] = -eps * math.sin(th)
                    mlp.W_in[b0 + 2 * i, n] = s * eps * math.cos(th)
                    mlp.W_in[b0 + 2 * i + 1, n] = -s * eps * math.sin(th)
                    # readout s * cos(2 th + w c) = s * (cos 2th cos wc - sin 2th sin wc)
                    mlp.W_out[n, out0 + 2 * i] = s * math.cos(2 * th)
                    mlp.W_out[n, out0 + 2 * i + 1] = s * math.sin(2 * th)
                    n += 1
            model.unembed.W_U[out0 + 2 * i] = torch.cos(w * c).float()
            model.unembed.W_U[out0 + 2 * i + 1] = -torch.sin(w * c).float()
        # scale the readout so each frequency's logit wave has amplitude ~amp:
        # per phase pair 4 eps^2/sqrt(2 pi) * 1/2 (the cos(x+y+2th) half), summed over N_PHASES
        gain = 4 * eps**2 / math.sqrt(2 * math.pi) * 0.5 * N_PHASES / 2
        mlp.W_out.mul_(amp / gain)
    return model


def grid_data(p: int, op: str = "add", frac_train: float = 0.5, seed: int = 0) -> ModularData:
    """The modular task's full grid with a seeded train split."""
    a, b = all_pairs(p)
    x = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    y = labels(a, b, p, op, seed)
    g = torch.Generator().manual_seed(seed)
    train = torch.zeros(p * p, dtype=torch.bool)
    train[torch.randperm(p * p, generator=g)[: int(frac_train * p * p)]] = True
    sign = -1 if op == "sub" else 1
    return ModularData(p, sign, x, y, train, torch.ones(p * p, dtype=torch.bool))
