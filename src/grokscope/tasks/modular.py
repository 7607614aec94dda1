"""Modular arithmetic, the grokking paper's task (Nanda et al. 2023, Section 3).

Inputs are `a b =` (tokens 0..p-1 are numbers, token p is `=`); the label, read at the `=`
position, is (a op b) mod p over p classes. The train set is a seeded random `frac_train` share of
all p*p pairs; the test set is the rest. `all_x` lists every pair in lexicographic (a, b) order,
which is the order the Fourier analysis expects.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grokscope.config import ConfigError, ModularTask
from grokscope.tasks.base import TaskData


def labels(a: Tensor, b: Tensor, p: int, op: str, seed: int = 0) -> Tensor:
    """(a op b) mod p, elementwise. Division is a * b^(p-2) (Fermat); b == 0 maps to 0."""
    if op == "add":
        return (a + b) % p
    if op == "sub":
        return (a - b) % p
    if op == "mul":
        return (a * b) % p
    if op == "div":
        inv = torch.tensor([pow(int(x), p - 2, p) for x in range(p)])
        return (a * inv[b]) % p
    if op == "poly":
        return (a * a + a * b + b * b) % p
    if op == "rand":
        g = torch.Generator().manual_seed(10_000 + seed)
        table = torch.randint(0, p, (p, p), generator=g)
        return table[a, b]
    raise ValueError(f"unknown op {op!r}")


def all_pairs(p: int) -> tuple[Tensor, Tensor]:
    """Every (a, b) in lexicographic order: index = a * p + b."""
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    return a, b


def make(cfg: ModularTask, seed: int) -> TaskData:
    p = cfg.p
    a, b = all_pairs(p)
    x = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    y = labels(a, b, p, cfg.op, seed)
    if cfg.op == "div":  # b = 0 has no inverse: those pairs belong to neither split
        keep = b != 0
    else:
        keep = torch.ones_like(a, dtype=torch.bool)
    idx = keep.nonzero().squeeze(1)
    g = torch.Generator().manual_seed(seed)
    idx = idx[torch.randperm(len(idx), generator=g)]
    n_train = int(cfg.frac_train * len(idx))  # floor: p=113, 0.3 -> 3830 as in the paper
    if not 0 < n_train < len(idx):
        raise ConfigError(f"task.frac_train={cfg.frac_train} of {len(idx)} pairs leaves "
                          f"{'no train' if n_train == 0 else 'no test'} pairs; raise task.p or move frac_train")
    train_idx, test_idx = idx[:n_train].sort().values, idx[n_train:].sort().values
    train_mask = torch.zeros(p * p, dtype=torch.bool)
    train_mask[train_idx] = True
    return TaskData(
        train_x=x[train_idx],
        train_y=y[train_idx, None],
        test_x=x[test_idx],
        test_y=y[test_idx, None],
        label_pos=[2],
        d_vocab=p + 1,
        d_vocab_out=p,
        n_ctx=3,
        meta={"p": p, "op": cfg.op, "all_x": x, "all_y": y, "train_mask": train_mask, "valid_mask": keep},
    )
