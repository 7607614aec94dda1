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
from grokscope.models.loss import per_example, sum_sq_weights
from grokscope.models.transformer import Transformer


@dataclass
class Context:
    """What every checkpoint's measures share: the grid, K, the basis and the K directions."""

    data: ci.ModularData
    ks: list[int]
    F: Tensor  # [p, p] Fourier basis
    U: Tensor  # [p*p, m] unit directions of K (m = 2|K| for odd p)
    cols: dict[int, list[int]]  # frequency -> its columns in U
    W_all: Tensor | None  # [p*p, n_freqs, 2] every frequency's cos/sin(w(a+b)) directions (footnote 3's
    # variant); None when p > MAX_P_EXCLUDED_MAX


def frequency_pairs(p: int, sign: int) -> Tensor:
    """[p*p, n_freqs, 2]: each frequency's two unit (a+b) directions; the Nyquist frequency of even
    p has one, and a zero column beside it."""
    ks = list(range(1, fr.n_freqs(p) + 1))
    U, cols = fr.sum_directions(p, ks, sign), direction_columns(p, ks)
    W = torch.zeros(p * p, len(ks), 2, dtype=U.dtype)
    for i, k in enumerate(ks):
        W[:, i, : len(cols[k])] = U[:, cols[k]]
    return W


def direction_columns(p: int, ks: list[int]) -> dict[int, list[int]]:
    """frequency -> its columns in `fourier.sum_directions(p, ks)`."""
    cols, j = {}, 0
    for k in ks:
        n = len(fr.freq_rows(p, k))
        cols[k] = list(range(j, j + n))
        j += n
    return cols


# footnote 3's variant costs about 0.15 p^4 exponentials per checkpoint (every frequency, every train
# input, every output): 2.4e7 at p = 113, 3.9e9 at p = 401, where it would outweigh the rest
MAX_P_EXCLUDED_MAX = 150


def make_context(data: ci.ModularData, ks: list[int]) -> Context:
    p = data.p
    F, _ = fr.fourier_basis(p)
    return Context(data, list(ks), F, fr.sum_directions(p, ks, data.sign), direction_columns(p, ks),
                   frequency_pairs(p, data.sign) if p <= MAX_P_EXCLUDED_MAX else None)


@torch.no_grad()
def grid_logits(model: Transformer, data: ci.ModularData) -> Tensor:
    """Logits at `=` for all p*p inputs: [p*p, p] float64, in one forward pass."""
    model.eval()
    return model.forward_last(data.all_x).double()


def _means(loss: Tensor, ok: Tensor, mask: Tensor) -> tuple[float, float]:
    return float(loss[mask].mean()), float(ok[mask].double().mean())


def restricted_excluded(L: Tensor, ctx: Context) -> dict[str, float]:
    """Restricted loss/accuracy (all valid, train, test) and excluded loss (train; all K and each k)."""
    d = ctx.data
    y, v, tr, te = d.all_y, d.valid_mask, d.train_mask, d.test_mask
    C = ctx.U.T @ L  # [m, p]: L's coordinates along the K directions
    proj = ctx.U @ C
    loss, ok = per_example(proj + L.mean(dim=0, keepdim=True), y)
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
    if ctx.W_all is not None:
        row["excluded_loss_max"], row["excluded_loss_max_freq"] = excluded_loss_max(L, ctx)
    return row


def excluded_loss_max(L: Tensor, ctx: Context, chunk: int = 8) -> tuple[float, int]:
    """The largest train loss after removing one frequency's (a+b) directions, and that frequency.

    Frequencies go through in chunks of `chunk` as one batched [chunk, n_train, p] tensor: a few
    large operations per checkpoint instead of several small ones per frequency. The ablated
    logits are taken in float32 (2-3x faster here; the loss's relative error stays near 1e-7).
    """
    assert ctx.W_all is not None
    tr = ctx.data.train_mask
    y = ctx.data.all_y[tr]
    W = ctx.W_all
    coef = torch.einsum("nfj,nc->fjc", W, L)  # [n_freqs, 2, p]
    Wtr, Ltr = W[tr], L[tr]
    losses = []
    for s in range(0, W.shape[1], chunk):
        part = (Ltr[None] - torch.einsum("nfj,fjc->fnc", Wtr[:, s:s + chunk], coef[s:s + chunk])).float()
        lse = part.logsumexp(-1)  # [f, n]
        picked = part.gather(-1, y[None, :, None].expand(part.shape[0], -1, 1)).squeeze(-1)
        losses.append((lse - picked).double().mean(1))
    loss = torch.cat(losses)
    i = int(loss.argmax())
    return float(loss[i]), i + 1


def progress_row(model: Transformer, ctx: Context) -> dict[str, float]:
    """Every progress measure of the checkpoint currently loaded into `model`."""
    d, p = ctx.data, ctx.data.p
    L = grid_logits(model, d)
    y, tr, te = d.all_y, d.train_mask, d.test_mask
    row: dict[str, float] = {}
    loss, ok = per_example(L, y)
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
