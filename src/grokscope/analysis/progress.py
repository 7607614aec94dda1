"""Progress measures over training, one row per checkpoint (Nanda et al. 2023, Section 5.1).

With the key frequencies K fixed (found on the final checkpoint) and L the [p*p, p] logits of a
checkpoint over every input:
- restricted loss: L_R = P_K L + mean_inputs(L) (P_K L has zero mean over inputs), cross-entropy
  on all valid inputs, and on the train and test inputs alone; restricted accuracy likewise;
- excluded loss: L_E = L - P_K L on the train set, for all of K and for each k in K alone;
- the paper's model-independent variant (Appendix C.2, footnote 3): the excluded loss of every
  frequency alone, maximised over frequencies (`excluded_loss_max`, and the frequency that gives
  it). It needs no key frequencies, so it serves runs that find none (weight decay 0, Figure 26);
- Gini of the W_E and W_L spectra per frequency (circuits.GINI_BASIS);
- the sum of squared weights; the coefficient of each cos(w_k(a+b-c)) term in L.

Cost: P_K is never formed. U [p*p, 2|K|] holds the unit cos/sin(w_k(a+b)) directions, so
P_K L = U (U^T L) is two thin matmuls, and the cos(w(a+b-c)) coefficients come from U^T L too
(fourier.cos_abc_coefficients): no p^3 cube. Logits come from the model's tabulated
last-position pass, one call for all p*p inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from grokscope.analysis import circuits as ci
from grokscope.analysis import fourier as fr
from grokscope.models.loss import sum_sq_weights
from grokscope.models.transformer import Transformer


@dataclass
class Context:
    """What every checkpoint's measures share: the grid, K, the basis and the K directions."""

    data: ci.ModularData
    ks: list[int]
    F: Tensor  # [p, p] Fourier basis
    U: Tensor  # [p*p, m] unit directions of K (m = 2|K| for odd p)
    cols: dict[int, list[int]]  # frequency -> its columns in U
    U_all: Tensor  # [p*p, M] the directions of every frequency, for the footnote's variant
    cols_all: dict[int, list[int]]


def direction_columns(p: int, ks: list[int]) -> dict[int, list[int]]:
    """frequency -> its columns in `fourier.sum_directions(p, ks)`."""
    cols, j = {}, 0
    for k in ks:
        n = len(fr.freq_rows(p, k))
        cols[k] = list(range(j, j + n))
        j += n
    return cols


def make_context(data: ci.ModularData, ks: list[int]) -> Context:
    p = data.p
    F, _ = fr.fourier_basis(p)
    every = list(range(1, fr.n_freqs(p) + 1))
    return Context(data, list(ks), F, fr.sum_directions(p, ks, data.sign), direction_columns(p, ks),
                   fr.sum_directions(p, every, data.sign), direction_columns(p, every))


@torch.no_grad()
def grid_logits(model: Transformer, data: ci.ModularData) -> Tensor:
    """Logits at `=` for all p*p inputs: [p*p, p] float64, in one forward pass."""
    model.eval()
    return model.forward_last(data.all_x).double()


def per_input(L: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-input cross-entropy (float64) and correctness of logits [n, p] against labels [n]:
    one logsumexp serves the all/train/test means."""
    L = L.double()
    loss = L.logsumexp(-1) - L.gather(-1, y[:, None]).squeeze(-1)
    return loss, (L.argmax(-1) == y).double()


def _means(loss: Tensor, ok: Tensor, mask: Tensor) -> tuple[float, float]:
    return float(loss[mask].mean()), float(ok[mask].mean())


def restricted_excluded(L: Tensor, ctx: Context) -> dict[str, float]:
    """Restricted loss/accuracy (all valid, train, test) and excluded loss (train; all K and each k)."""
    d = ctx.data
    y, v, tr, te = d.all_y, d.valid_mask, d.train_mask, d.test_mask
    C = ctx.U.T @ L  # [m, p]: L's coordinates along the K directions
    proj = ctx.U @ C
    loss, ok = per_input(proj + L.mean(dim=0, keepdim=True), y)
    row: dict[str, float] = {}
    row["restricted_loss"], row["restricted_acc"] = _means(loss, ok, v)
    row["restricted_loss_train"], row["restricted_acc_train"] = _means(loss, ok, tr)
    if te.any():
        row["restricted_loss_test"], row["restricted_acc_test"] = _means(loss, ok, te)
    Ltr, ytr = L[tr], y[tr]
    row["excluded_loss"], row["excluded_acc"] = ci.loss_acc(Ltr - proj[tr], ytr)
    Utr = ctx.U[tr]
    for k, cols in ctx.cols.items():
        row[f"excluded_loss_k{k}"], _ = ci.loss_acc(Ltr - Utr[:, cols] @ C[cols], ytr)
    row["excluded_loss_max"], row["excluded_loss_max_freq"] = excluded_loss_max(L, ctx)
    return row


def excluded_loss_max(L: Tensor, ctx: Context) -> tuple[float, int]:
    """The largest train loss after removing one frequency's (a+b) directions, and that frequency."""
    tr, y = ctx.data.train_mask, ctx.data.all_y[ctx.data.train_mask]
    C = ctx.U_all.T @ L
    Ltr, Utr = L[tr], ctx.U_all[tr]
    best, best_k = -1.0, 0
    for k, cols in ctx.cols_all.items():
        loss, _ = ci.loss_acc(Ltr - Utr[:, cols] @ C[cols], y)
        if loss > best:
            best, best_k = loss, k
    return best, best_k


def progress_row(model: Transformer, ctx: Context) -> dict[str, float]:
    """Every progress measure of the checkpoint currently loaded into `model`."""
    d, p = ctx.data, ctx.data.p
    L = grid_logits(model, d)
    y, tr, te = d.all_y, d.train_mask, d.test_mask
    row: dict[str, float] = {}
    loss, ok = per_input(L, y)
    row["train_loss"], row["train_acc"] = _means(loss, ok, tr)
    if te.any():
        row["test_loss"], row["test_acc"] = _means(loss, ok, te)
    row.update(restricted_excluded(L, ctx))
    coefs = fr.cos_abc_coefficients(L, p, ctx.ks, d.sign)
    for k, c in zip(ctx.ks, coefs.tolist(), strict=True):
        row[f"coef_k{k}"] = c
    params = ci.weights(model)
    row["gini_W_E"] = ci.spectrum_gini(ci.embed_spectrum(params["embed.W_E"], ctx.F), p)
    W_L = ci.model_wl(model, p)
    row["gini_W_L"] = ci.spectrum_gini(ci.wl_spectrum(W_L, ctx.F), p) if W_L is not None else None
    row["weight_norm"] = sum_sq_weights(params.values())
    return row
