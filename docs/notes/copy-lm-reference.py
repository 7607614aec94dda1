"""A reference outside grokscope's model code, for the search in docs/notes/copy-lm-search.md.

A minimal attention-only transformer written from scratch in plain PyTorch (pre-RMSNorm, no
biases; learned absolute or rotary positions; optional GELU MLP) trained on the windows of a
grokscope text config (`grokscope.lm.text`), batch 16, AdamW (0.9, 0.95), 100 warmup steps,
gradient clip 1. Every 250 steps it prints the training loss and, per layer, the largest
prefix-matching and previous-token attention of a head on repeated random sequences (the same
definitions as `grokscope.lm.induction`). One torch thread.

    CFG=config.yaml python docs/notes/copy-lm-reference.py learned|rope STEPS LR [N_LAYERS] [mlp]
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from grokscope import config as C  # noqa: E402
from grokscope.lm.text import prepare, sample_windows  # noqa: E402

torch.set_num_threads(1)
torch.manual_seed(0)
POS, STEPS, LR = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
N_LAYERS = int(sys.argv[4]) if len(sys.argv) > 4 else 2
MLP = len(sys.argv) > 5 and sys.argv[5] == "mlp"
CTX, D, H, E, BATCH, S = 128, 64, 4, 16, 16, 40

cfg = C.resolve(yaml.safe_load(open(os.environ["CFG"])))
data = prepare(cfg.task)
V = data.vocab_size
inv = 10000 ** (-torch.arange(0, E // 2).float() * 2 / E)
ang = torch.arange(CTX)[:, None] * inv[None]
COS, SIN = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()


def rotate(x: torch.Tensor) -> torch.Tensor:
    """Rotary positions on x [batch, head, pos, e] (rotate-half layout)."""
    half, n = x.shape[-1] // 2, x.shape[-2]
    return x * COS[:n] + torch.cat([-x[..., half:], x[..., :half]], -1) * SIN[:n]


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(D, 3 * H * E, bias=False)
        self.o = nn.Linear(H * E, D, bias=False)
        self.norm = nn.RMSNorm(D)
        if MLP:
            self.norm2 = nn.RMSNorm(D)
            self.mlp = nn.Sequential(nn.Linear(D, 4 * D, bias=False), nn.GELU(), nn.Linear(4 * D, D, bias=False))

    def forward(self, x: torch.Tensor, patterns: list | None) -> torch.Tensor:
        b, p, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, p, 3, H, E).permute(2, 0, 3, 1, 4)
        if POS == "rope":
            q, k = rotate(q), rotate(k)
        causal = torch.ones(p, p, dtype=torch.bool).tril()
        att = ((q @ k.transpose(-1, -2)) / math.sqrt(E)).masked_fill(~causal, float("-inf")).softmax(-1)
        if patterns is not None:
            patterns.append(att)
        x = x + self.o((att @ v).transpose(1, 2).reshape(b, p, H * E))
        return x + self.mlp(self.norm2(x)) if MLP else x


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.pos = nn.Embedding(CTX, D)
        self.blocks = nn.ModuleList(Block() for _ in range(N_LAYERS))
        self.norm = nn.RMSNorm(D)
        self.unembed = nn.Linear(D, V, bias=False)

    def forward(self, t: torch.Tensor, patterns: list | None = None) -> torch.Tensor:
        x = self.embed(t) + (self.pos(torch.arange(t.shape[1])) if POS == "learned" else 0)
        for block in self.blocks:
            x = block(x, patterns)
        return self.unembed(self.norm(x))


model = Model()
opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), weight_decay=0.0)
gen = torch.Generator().manual_seed(0)
half = torch.stack([torch.randperm(V, generator=torch.Generator().manual_seed(i))[:S] for i in range(8)])
rep = torch.cat([half, half], 1)  # repeated random sequences, distinct tokens within a half
i = torch.arange(1, S)
t0 = time.time()
for step in range(1, STEPS + 1):
    for group in opt.param_groups:
        group["lr"] = LR * min(1.0, step / 100)
    x = sample_windows(data.train, BATCH, CTX + 1, gen)
    loss = F.cross_entropy(model(x[:, :-1]).reshape(-1, V), x[:, 1:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if step % 250 == 0:
        with torch.no_grad():
            pats: list = []
            model(rep, pats)
            pm = [round(p[:, :, S + i - 1, i].mean((0, 2)).max().item(), 3) for p in pats]
            pt = [round(p[:, :, i, i - 1].mean((0, 2)).max().item(), 3) for p in pats]
        print(f"{step} loss {loss.item():.3f} prefix_matching {pm} previous_token {pt} {time.time() - t0:.0f}s",
              flush=True)
