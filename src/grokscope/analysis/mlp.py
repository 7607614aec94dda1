"""The MLP layer of a modular-arithmetic model read as the paper reads it (Nanda et al. 2023, 4.2-4.4).

- MLP FVE (Section 4.2, Table 1 and Table 5's "MLP FVE" column): W_L's output axis in the
  Fourier basis gives, for each key frequency k, two directions in neuron space, u_cos,k = W_L
  c_k and u_sin,k = W_L s_k (c_k, s_k: the unit cos/sin rows of the basis). The MLP activations
  projected on them, A u_cos,k and A u_sin,k, should each be a multiple of cos(w_k(a+b)) and
  sin(w_k(a+b)). The FVE of a component is the share of its (centred) variance that the single
  term explains; Table 5 reports their mean and standard deviation.
- Ablations (Section 4.4): each explained neuron replaced by its degree-2 polynomial (the 3x3
  block of its frequency in the 2D Fourier basis); every neuron restricted to its
  cos/sin(w_k(a+b)) terms in the key frequencies; the activations projected onto the 2|K| W_L
  directions, or onto their null space.
- The final skip connection (Table 6): the residual stream that bypasses the last MLP
  zero-ablated or replaced by its mean over inputs.

Every ablation recomputes the logits from the last layer's input and the (modified) neuron
activations, logits = (resid_mid + A W_out + b_out) W_U, so it holds for one- and two-layer models
without normalisation. Plain functions over tensors; no I/O.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from grokscope.analysis import fourier as fr


def wl_directions(W_L: Tensor, F: Tensor, ks: list[int]) -> tuple[Tensor, list[tuple[int, str]]]:
    """[d_mlp, m]: W_L's components along the cos/sin rows of each key frequency, with (k, 'cos'|'sin') labels."""
    p = F.shape[0]
    cols, labels = [], []
    for k in ks:
        for row, kind in zip(fr.freq_rows(p, k), ("cos", "sin"), strict=False):
            cols.append(W_L.double() @ F[row].double())
            labels.append((k, kind))
    if not cols:
        return torch.zeros(W_L.shape[0], 0, dtype=torch.float64), []
    return torch.stack(cols, dim=1), labels


def single_term_fve(x: Tensor, term: Tensor) -> float:
    """Share of the variance of x [n] explained by a + b * term (least squares with an intercept)."""
    xc = x.double() - x.double().mean()
    tc = term.double() - term.double().mean()
    total = xc.pow(2).sum()
    if total <= 0 or tc.pow(2).sum() <= 0:
        return 0.0
    return float((xc @ tc).pow(2) / (tc.pow(2).sum() * total))


def input_waves(p: int, k: int, sign: int = 1) -> tuple[Tensor, Tensor]:
    """cos(w_k(a + sign*b)) and sin(...) over the p*p inputs in lexicographic order."""
    a = torch.arange(p, dtype=torch.float64).repeat_interleave(p)
    b = torch.arange(p, dtype=torch.float64).repeat(p)
    s = 2 * math.pi * k / p * (a + sign * b)
    return torch.cos(s), torch.sin(s)


def mlp_fve(post: Tensor, W_L: Tensor, F: Tensor, ks: list[int], sign: int = 1) -> list[dict]:
    """Per key-frequency component: {freq, kind, fve} of A u explained by cos/sin(w_k(a+b)) (Table 1)."""
    p = F.shape[0]
    U, labels = wl_directions(W_L, F, ks)
    proj = post.double() @ U  # [p*p, m]
    rows = []
    for j, (k, kind) in enumerate(labels):
        c, s = input_waves(p, k, sign)
        rows.append({"freq": k, "kind": kind, "fve": single_term_fve(proj[:, j], c if kind == "cos" else s)})
    return rows


def logits_from_mlp(resid_mid: Tensor, post: Tensor, W_out: Tensor, b_out: Tensor, W_U: Tensor) -> Tensor:
    """Logits at `=` [p*p, d_vocab_out] from the last layer's input and its neuron activations."""
    return (resid_mid.double() + post.double() @ W_out.double() + b_out.double()) @ W_U.double()


def project_grids(post: Tensor, F: Tensor, keep: Tensor) -> Tensor:
    """Each neuron's p x p grid restricted to the 2D Fourier components `keep` [p, p, d_mlp] bool."""
    p = F.shape[0]
    grids = post.double().T.reshape(-1, p, p).permute(1, 2, 0)  # [p, p, d_mlp]
    hat = fr.fourier_2d(grids, F)
    hat = torch.where(keep, hat, torch.zeros((), dtype=hat.dtype))
    return fr.inverse_fourier_2d(hat, F).permute(2, 0, 1).reshape(-1, p * p).T


def polynomial_ablation(post: Tensor, F: Tensor, freq: Tensor, explained: Tensor) -> Tensor:
    """Explained neurons replaced by their degree-2 polynomial in their own frequency (Section 4.4);
    the other neurons untouched. freq [d_mlp] 1-based, explained [d_mlp] bool."""
    p = F.shape[0]
    rf = fr.row_freq(p)
    block = ((rf[None, :] == freq[:, None]) | (rf[None, :] == 0))  # [d_mlp, p]
    keep = (block[:, :, None] & block[:, None, :]).permute(1, 2, 0)  # [p, p, d_mlp]
    approx = project_grids(post, F, keep)
    return torch.where(explained[None, :], approx, post.double())


def sum_term_ablation(post: Tensor, ks: list[int], sign: int = 1) -> Tensor:
    """Every neuron restricted to its mean plus its cos/sin(w_k(a+b)) terms for k in K (Section 4.4)."""
    p = int(round(math.sqrt(post.shape[0])))
    U = fr.sum_directions(p, ks, sign)
    mean = post.double().mean(0, keepdim=True)
    return mean + fr.project(post.double() - mean, U)


def direction_ablation(post: Tensor, U: Tensor, null: bool = False) -> Tensor:
    """Activations projected onto the span of the neuron-space directions U [d_mlp, m] (or its
    orthogonal complement when null)."""
    if U.shape[1] == 0:
        return post.double() * (1.0 if null else 0.0)
    Q, _ = torch.linalg.qr(U.double())
    onto = post.double() @ Q @ Q.T
    return post.double() - onto if null else onto
