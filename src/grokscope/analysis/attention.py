"""Attention heads of a modular-arithmetic model (Nanda et al. 2023, Appendix C.1.2-C.1.3).

The paper's fit (C.1.3): the pre-softmax score from `=` to the token `a` is a lookup table on a
(the query is always `=`), and it is well approximated by one wave, s(a) ~ alpha cos(w a) +
beta sin(w a) + const. `score_fits` finds, per head, the frequency whose cos/sin pair holds the
largest share of the centred score's variance, and returns that share (the FVE), alpha and beta.
The paper's mainline: 99.0%, 95.2%, 99.1% and 92.4%.

With the attention from `=` to itself trivial (the paper: 0.1-0.4% per head, App. A.1;
`self_attention` here), the attention to a is sigmoid(s(a) - s(b)), and the paper replaces the
sigmoid by a line (97.5% of the variance). `sigmoid_linear_fve` is that fit: the share of the
variance of the attention to a, over the (a, b) grid, explained by a least-squares line in
s(a) - s(b).

A second, named measure (`pattern_*` in the summary) fits the post-softmax attention from `=`
to `a` over the whole (a, b) grid by the 2D block {const, cos k, sin k}^2 of one frequency: it
needs no assumption that the score depends on a alone, so it also serves deeper layers.

Plain functions over tensors; no I/O.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from grokscope.analysis import fourier as fr


def wave_fit(s: Tensor, F: Tensor) -> dict:
    """Best single-frequency fit of s [p]: {freq, alpha, beta, fve} with s ~ alpha cos + beta sin + c."""
    p = F.shape[0]
    x = s.double() - s.double().mean()
    total = x.pow(2).sum()
    coef = F.double() @ x  # coordinates on the orthonormal rows
    energy = fr.freq_norms(coef, p).pow(2)
    k = int(energy.argmax()) + 1
    rows = fr.freq_rows(p, k)
    # orthonormal row = wave / sqrt(p/2) (sqrt(p) for the Nyquist wave)
    scale = math.sqrt(p) if len(rows) == 1 else math.sqrt(p / 2)
    alpha = float(coef[rows[0]] / scale)
    beta = float(coef[rows[1]] / scale) if len(rows) == 2 else 0.0
    fve = float(energy[k - 1] / total) if total > 0 else 0.0
    return {"freq": k, "alpha": alpha, "beta": beta, "fve": fve}


def score_fits(scores: Tensor, F: Tensor) -> list[dict]:
    """scores [n_heads, p, p]: pre-softmax score from `=` to `a` over the (a, b) grid -> one fit per
    head of its mean over b, with `b_spread`: the share of the score's variance that depends on b
    (zero in the first layer, where the score is a function of a alone)."""
    out = []
    for h in range(scores.shape[0]):
        g = scores[h].double()
        s = g.mean(dim=1)
        gc = g - g.mean()
        total = gc.pow(2).sum()
        spread = float((g - s[:, None]).pow(2).sum() / total) if total > 0 else 0.0
        out.append({**wave_fit(s, F), "b_spread": spread})
    return out


def sigmoid_linear_fve(score_a: Tensor, score_b: Tensor, attn_a: Tensor) -> float | None:
    """FVE of attn_a by the least-squares line in score_a - score_b (any matching shapes); None
    when attn_a does not vary (std below 1e-6: a fit to float noise would mean nothing)."""
    x = (score_a.double() - score_b.double()).flatten()
    y = attn_a.double().flatten()
    yc = y - y.mean()
    total = yc.pow(2).sum()
    if total <= 1e-12 * y.numel():
        return None
    xc = x - x.mean()
    sxx = xc.pow(2).sum()
    slope = (xc * yc).sum() / sxx if sxx > 0 else torch.zeros((), dtype=torch.float64)
    return float(1 - (yc - slope * xc).pow(2).sum() / total)
