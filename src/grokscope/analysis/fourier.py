"""Fourier tools over Z_p: the basis, 1D/2D transforms, the cos/sin(w(a+b)) directions, P_K.

docs/measures.md, "Fourier basis". The basis F is a p x p orthonormal matrix whose rows are, in order: the constant
1/sqrt(p); then for k = 1..(p-1)//2 the pair cos(w_k x), sin(w_k x) (w_k = 2 pi k / p), each
scaled to unit norm. For even p one more row is needed: the Nyquist wave (-1)^x, named
"cos p/2"; its frequency p/2 has no sine. Frequency k's rows are 2k-1 (cos) and 2k (sin).

Everything here is a plain function of tensors; nothing reads a run. The p^3 cube of
cos(w(a+b-c)) terms is never built for all frequencies at once: `cos_abc_term` makes one
frequency's [p*p, p] slice, and the fits in circuits.py/progress.py work through the
factorisation cos(w(a+b-c)) = cos(w(a+b)) cos(wc) + sin(w(a+b)) sin(wc).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def n_freqs(p: int) -> int:
    """Number of frequencies k >= 1 in the basis: (p-1)/2 for odd p, p/2 for even p (incl. Nyquist)."""
    return p // 2


def fourier_basis(p: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, list[str]]:
    """F [p, p] (rows orthonormal) and its row names ("const", "cos k", "sin k", ...)."""
    x = torch.arange(p, dtype=torch.float64)
    rows, names = [torch.ones(p, dtype=torch.float64)], ["const"]
    for k in range(1, (p - 1) // 2 + 1):
        w = 2 * math.pi * k / p
        rows += [torch.cos(w * x), torch.sin(w * x)]
        names += [f"cos {k}", f"sin {k}"]
    if p % 2 == 0:  # the Nyquist wave (-1)^x; its sine is identically zero
        rows.append(torch.cos(math.pi * x))
        names.append(f"cos {p // 2}")
    F = torch.stack(rows)
    F = F / F.norm(dim=1, keepdim=True)
    return F.to(dtype), names


def row_freq(p: int) -> Tensor:
    """[p] long: the frequency of each basis row (0 for the constant row)."""
    idx = torch.arange(p)
    return (idx + 1) // 2


def freq_rows(p: int, k: int) -> list[int]:
    """Basis rows of frequency k: [2k-1, 2k], or [p-1] for the Nyquist frequency of even p."""
    if not 1 <= k <= n_freqs(p):
        raise ValueError(f"frequency {k} is outside 1..{n_freqs(p)} for p={p}")
    return [2 * k - 1] if 2 * k == p else [2 * k - 1, 2 * k]


def fourier_1d(x: Tensor, F: Tensor, dim: int = 0) -> Tensor:
    """Transform along `dim` (length p): out[..., i, ...] = sum_x F[i, x] x[..., x, ...]."""
    return torch.movedim(torch.tensordot(F.to(x.dtype), x, dims=([1], [dim])), 0, dim)


def fourier_2d(T: Tensor, F: Tensor) -> Tensor:
    """T [p, p, ...] over the input grid (a, b) -> T_hat[i, j, ...] = sum_ab F[i,a] F[j,b] T[a,b,...]."""
    F = F.to(T.dtype)
    return torch.einsum("ia,ab...,jb->ij...", F, T, F)


def inverse_fourier_2d(T_hat: Tensor, F: Tensor) -> Tensor:
    """Inverse of `fourier_2d` (F is orthonormal, so its inverse is its transpose)."""
    F = F.to(T_hat.dtype)
    return torch.einsum("ia,ij...,jb->ab...", F, T_hat, F)


def freq_norms(row_values: Tensor, p: int) -> Tensor:
    """Per-frequency norms c_k = sqrt(cos_k^2 + sin_k^2) from per-row values [p, ...] -> [n_freqs, ...].

    The constant row is dropped: Gini and key frequencies are about which waves are used.
    """
    sq = row_values.pow(2)
    out = torch.zeros((n_freqs(p),) + tuple(sq.shape[1:]), dtype=sq.dtype)
    out.index_add_(0, row_freq(p)[1:] - 1, sq[1:])
    return out.sqrt()


def sum_directions(p: int, ks: list[int], sign: int = 1, dtype: torch.dtype = torch.float64) -> Tensor:
    """U [p*p, m]: unit vectors cos(w_k(a + sign*b)), sin(w_k(a + sign*b)) for k in ks, inputs in
    lexicographic (a, b) order. sign=+1 gives the paper's (a+b); sign=-1 serves a-b. The columns are
    orthonormal; the Nyquist sine (even p) is zero and is left out, so m = 2|K| for odd p.
    """
    a = torch.arange(p, dtype=torch.float64).repeat_interleave(p)
    b = torch.arange(p, dtype=torch.float64).repeat(p)
    s = a + sign * b
    cols = []
    for k in ks:
        w = 2 * math.pi * k / p
        cols.append(torch.cos(w * s))
        if 2 * k != p:
            cols.append(torch.sin(w * s))
    if not cols:
        return torch.zeros(p * p, 0, dtype=dtype)
    U = torch.stack(cols, dim=1)
    return (U / U.norm(dim=0, keepdim=True)).to(dtype)


def projector(U: Tensor) -> Tensor:
    """P_K = U U^T [p*p, p*p]. For tests and small p only: use `project` on real logits."""
    return U @ U.T


def project(L: Tensor, U: Tensor) -> Tensor:
    """P_K L without forming P_K: U (U^T L); L [p*p, ...] (rows = inputs)."""
    return U @ (U.T @ L)


def output_waves(p: int, ks: list[int], dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """cos(w_k c), sin(w_k c) for c in 0..p-1: two [len(ks), p] tensors."""
    c = torch.arange(p, dtype=torch.float64)
    w = torch.tensor([2 * math.pi * k / p for k in ks], dtype=torch.float64)[:, None]
    return torch.cos(w * c).to(dtype), torch.sin(w * c).to(dtype)


def cos_abc_term(p: int, k: int, sign: int = 1, dtype: torch.dtype = torch.float64) -> Tensor:
    """One frequency's term cos(w_k(a + sign*b - c)) as [p*p, p] (a p^3 slice; build one at a time)."""
    a = torch.arange(p, dtype=torch.float64).repeat_interleave(p)
    b = torch.arange(p, dtype=torch.float64).repeat(p)
    c = torch.arange(p, dtype=torch.float64)
    w = 2 * math.pi * k / p
    return torch.cos(w * ((a + sign * b)[:, None] - c[None, :])).to(dtype)


def cos_abc_coefficients(L: Tensor, p: int, ks: list[int], sign: int = 1) -> Tensor:
    """Least-squares coefficients of L [p*p, p] on the terms cos(w_k(a+b-c)), k in ks -> [len(ks)].

    The terms are mutually orthogonal over the (a, b, c) cube, so each coefficient is
    <L, T_k> / <T_k, T_k>, and <L, T_k> = sum_c cos(w_k c) (cos_k . L)[c] + sin(w_k c) (sin_k . L)[c]
    with cos_k, sin_k the unnormalised (a+b) waves: no cube is formed.
    """
    if not ks:
        return torch.zeros(0, dtype=torch.float64)
    L = L.double()
    a = torch.arange(p, dtype=torch.float64).repeat_interleave(p)
    b = torch.arange(p, dtype=torch.float64).repeat(p)
    s = a + sign * b
    w = torch.tensor([2 * math.pi * k / p for k in ks], dtype=torch.float64)
    cs, sn = torch.cos(w[None] * s[:, None]), torch.sin(w[None] * s[:, None])  # [p*p, |K|]
    oc, os_ = output_waves(p, ks)  # [|K|, p]
    dot = ((cs.T @ L) * oc).sum(1) + ((sn.T @ L) * os_).sum(1)
    # ||T_k||^2 = sum over the cube of cos^2 = p^3/2 (p^3 for the Nyquist wave)
    norm2 = torch.tensor([p**3 if 2 * k == p else p**3 / 2 for k in ks], dtype=torch.float64)
    return dot / norm2


def cos_abc_fit(coefs: Tensor, p: int, ks: list[int], sign: int = 1) -> Tensor:
    """Fitted logits sum_k coef_k cos(w_k(a+b-c)) as [p*p, p], built as a rank-2|K| product."""
    if not ks:
        return torch.zeros(p * p, p, dtype=torch.float64)
    a = torch.arange(p, dtype=torch.float64).repeat_interleave(p)
    b = torch.arange(p, dtype=torch.float64).repeat(p)
    s = a + sign * b
    w = torch.tensor([2 * math.pi * k / p for k in ks], dtype=torch.float64)
    cs, sn = torch.cos(w[None] * s[:, None]), torch.sin(w[None] * s[:, None])
    oc, os_ = output_waves(p, ks)
    return (cs * coefs) @ oc + (sn * coefs) @ os_
