"""Reverse-engineering one checkpoint of a modular-arithmetic model (Nanda et al. 2023, Section 4).

Measures: the embedding and neuron-logit (W_L) spectra; per-neuron FVE by frequency and each
neuron's frequency; the key frequencies (rule below); W_L's residual outside the key directions;
the fit of the logits by cos(w(a+b-c)) terms; ablations in the 2D Fourier basis of the logits;
each attention head's single-frequency fit.

Key-frequency rule (ours; the paper reads them off the W_E and W_L spectra, Section 4.1 and
Appendix C.2; docs/measures.md, 'Key frequencies', compares the two): a neuron is
explained when one frequency holds more than 0.85 of its activation variance (`FVE_THRESHOLD`).
Each explained neuron is weighted by what it sends to the logits, var(neuron) * ||W_L[n]||^2
(W_L centred over outputs), so a cluster that does not reach the output does not count. A
frequency is key when its explained neurons carry at least `MIN_SHARE` of the total over all
neurons. Random and memorising models have almost no explained neurons, so they get no key
frequency whatever p is. Attention-only models have no neurons: there the share of a frequency is
the share of the (centred) logits' variance lying in its cos/sin(w(a+b)) directions, with the
same threshold.

Functions take tensors and return tensors or plain numbers; `reverse_engineer` runs the model
once over all p*p inputs and assembles the summary. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from grokscope.analysis import fourier as fr
from grokscope.models.transformer import Transformer

FVE_THRESHOLD = 0.85  # the paper (Section 4.3): a neuron "is explained" by one frequency above this share
MIN_SHARE = 0.02  # key frequency: its explained neurons carry >= 2% of the neuron->logit variance


@dataclass
class ModularData:
    """The full input grid of a modular task, in lexicographic (a, b) order (index a*p + b)."""

    p: int
    sign: int  # +1: the waves are in a+b; -1: in a-b (op "sub")
    all_x: Tensor  # [p*p, 3] long
    all_y: Tensor  # [p*p] long
    train_mask: Tensor  # [p*p] bool
    valid_mask: Tensor  # [p*p] bool (b = 0 is invalid for division)

    @property
    def test_mask(self) -> Tensor:
        return self.valid_mask & ~self.train_mask


def direction_sign(op: str) -> int:
    """Which combination of a and b the Fourier algorithm rotates by: a-b for sub, else a+b."""
    return -1 if op == "sub" else 1


# ------------------------------------------------------------------------------- losses
def loss_acc(logits: Tensor, labels: Tensor) -> tuple[float, float]:
    """Float64 cross-entropy and accuracy of logits [n, p] against labels [n]."""
    lg = logits.double()
    loss = (lg.logsumexp(-1) - lg.gather(-1, labels[:, None]).squeeze(-1)).mean()
    acc = (lg.argmax(-1) == labels).double().mean()
    return float(loss), float(acc)


# ------------------------------------------------------------------------------- spectra
def embed_spectrum(W_E: Tensor, F: Tensor) -> Tensor:
    """[p]: norm over d_model of F @ W_E[:p] (one value per basis row)."""
    p = F.shape[0]
    return (F @ W_E[:p].double()).norm(dim=1)


def neuron_logit_map(W_out: Tensor, W_U: Tensor, p: int) -> Tensor:
    """W_L = W_out @ W_U[:, :p]: [d_mlp, p]."""
    return W_out.double() @ W_U[:, :p].double()


def wl_spectrum(W_L: Tensor, F: Tensor) -> Tensor:
    """[p]: norm over neurons of W_L transformed along its output axis (W_L @ F^T)."""
    return (W_L @ F.T).norm(dim=0)


def wl_residual(W_L: Tensor, F: Tensor, ks: list[int]) -> float:
    """Relative Frobenius norm of W_L outside the cos/sin rows of K on the output axis.

    The constant output row is left out of both norms: adding the same value to every logit
    changes nothing, so it is not part of what W_L computes.
    """
    p = F.shape[0]
    C = W_L @ F.T  # [d_mlp, p]: coefficients per basis row
    keep = torch.zeros(p, dtype=torch.bool)
    for k in ks:
        keep[fr.freq_rows(p, k)] = True
    total = C[:, 1:].norm()
    if total == 0:
        return 0.0
    return float(C[:, ~keep][:, 1:].norm() / total) if (~keep)[1:].any() else 0.0


def gini(c: Tensor) -> float:
    """Hurley-Rickard Gini of non-negative c [N]: 1 - 2 sum_k (c_k/|c|_1)(N - k + 1/2)/N, k ascending."""
    c = c.double().flatten().sort().values
    n, total = c.numel(), c.sum()
    if total <= 0:
        return 0.0
    k = torch.arange(1, n + 1, dtype=torch.float64)
    return float(1 - 2 * ((c / total) * (n - k + 0.5) / n).sum())


GINI_BASIS = ("per frequency: c_k = sqrt(cos_k^2 + sin_k^2) of the Fourier component norms, "
              "k = 1..(p-1)/2 (N = (p-1)/2; constant row excluded; for even p the Nyquist row is "
              "its own frequency, N = p/2)")


def spectrum_gini(row_norms: Tensor, p: int) -> float:
    """Gini of a spectrum given per basis row, taken per frequency (see GINI_BASIS)."""
    return gini(fr.freq_norms(row_norms, p))


# ------------------------------------------------------------------------------- neurons
def block_masks(p: int) -> Tensor:
    """[n_freqs, p] float: row i belongs to frequency k's block {const, cos k, sin k}."""
    rf = fr.row_freq(p)
    M = torch.zeros(fr.n_freqs(p), p, dtype=torch.float64)
    for k in range(1, fr.n_freqs(p) + 1):
        M[k - 1] = ((rf == k) | (rf == 0)).double()
    return M


def grid_fve(grids: Tensor, F: Tensor) -> tuple[Tensor, Tensor]:
    """Per-frequency FVE of functions on the (a, b) grid.

    grids [p, p, n] -> (fve [n_freqs, n], var [n]); var is the centred sum of squares. FVE_k is
    the share of the centred function's energy in the 2D Fourier block {const, cos k, sin k}^2
    (its (0, 0) term is zero after centring).
    """
    p = F.shape[0]
    g = grids.double()
    g = g - g.mean(dim=(0, 1), keepdim=True)
    S = fr.fourier_2d(g, F).pow(2)  # [p, p, n]
    var = S.sum(dim=(0, 1))
    M = block_masks(p)
    block = torch.einsum("ki,ijn,kj->kn", M, S, M)
    fve = block / var.clamp_min(1e-300)
    return fve, var


def neuron_frequencies(fve: Tensor, threshold: float = FVE_THRESHOLD) -> tuple[Tensor, Tensor, Tensor]:
    """(freq [n] 1-based, best FVE [n], explained [n] bool) from fve [n_freqs, n]."""
    best, idx = fve.max(dim=0)
    return idx + 1, best, best > threshold


def neuron_freq_shares(fve: Tensor, weight: Tensor, threshold: float = FVE_THRESHOLD) -> Tensor:
    """[n_freqs]: share of the total neuron weight carried by explained neurons of each frequency."""
    freq, _, explained = neuron_frequencies(fve, threshold)
    shares = torch.zeros(fve.shape[0], dtype=torch.float64)
    shares.index_add_(0, freq[explained] - 1, weight.double()[explained])
    total = weight.double().sum()
    return shares / total if total > 0 else shares


def logit_freq_shares(L: Tensor, p: int, sign: int = 1) -> Tensor:
    """[n_freqs]: share of the centred logits' energy in each frequency's (a+b) directions.

    L [p*p, p] is centred over outputs (a per-input constant does not change the softmax) and
    over inputs.
    """
    Lc = L.double() - L.double().mean(dim=1, keepdim=True)
    Lc = Lc - Lc.mean(dim=0, keepdim=True)
    U = fr.sum_directions(p, list(range(1, fr.n_freqs(p) + 1)), sign)
    coeff = (U.T @ Lc).pow(2).sum(1)  # per direction
    total = Lc.pow(2).sum()
    shares = torch.zeros(fr.n_freqs(p), dtype=torch.float64)
    col_freq = [k for k in range(1, fr.n_freqs(p) + 1) for _ in fr.freq_rows(p, k)]
    shares.index_add_(0, torch.tensor(col_freq) - 1, coeff)
    return shares / total if total > 0 else shares


def key_frequencies(shares: Tensor, min_share: float = MIN_SHARE) -> list[int]:
    """Frequencies (1-based, ascending) whose share reaches min_share (module docstring)."""
    return [int(k) + 1 for k in (shares >= min_share).nonzero().flatten().tolist()]


# ------------------------------------------------------------------------------- logits
def centre_outputs(L: Tensor) -> Tensor:
    return L - L.mean(dim=-1, keepdim=True)


def logit_fit(L: Tensor, p: int, ks: list[int], sign: int = 1) -> tuple[Tensor, float, Tensor]:
    """Regress L [p*p, p] on cos(w_k(a+b-c)), k in K -> (coefs [|K|], FVE, fitted logits [p*p, p]).

    L is centred per input over the outputs first (the terms have zero mean over c, and a
    per-input constant does not change the softmax); FVE is 1 - |resid|^2 / |L_centred|^2.
    """
    Lc = centre_outputs(L.double())
    coefs = fr.cos_abc_coefficients(Lc, p, ks, sign)
    fit = fr.cos_abc_fit(coefs, p, ks, sign)
    total = Lc.pow(2).sum()
    fve = float(1 - (Lc - fit).pow(2).sum() / total) if total > 0 else 0.0
    return coefs, fve, fit


def freq_set_mask(p: int, ks: list[int]) -> Tensor:
    """[p, p] bool over 2D Fourier components (i, j): every non-constant index has a frequency in
    ks, and (i, j) is not (const, const). This is "frequency set ks" in the logits' 2D basis."""
    rf = fr.row_freq(p)
    ok = torch.zeros(p, dtype=torch.bool)
    ok[0] = True
    for k in ks:
        ok |= rf == k
    M = ok[:, None] & ok[None, :]
    M[0, 0] = False
    return M


def ablate_2d(L: Tensor, F: Tensor, zero: Tensor) -> Tensor:
    """Zero the 2D Fourier components `zero` [p, p] bool of L [p*p, p] (per output) and invert."""
    p = F.shape[0]
    L_hat = fr.fourier_2d(L.double().view(p, p, -1), F)
    L_hat[zero] = 0.0
    return fr.inverse_fourier_2d(L_hat, F).reshape(p * p, -1)


def ablations(L: Tensor, F: Tensor, ks: list[int], data: ModularData) -> list[dict]:
    """Loss and accuracy (all valid inputs, and test) after ablating frequencies in the logits'
    2D Fourier basis: none, each key frequency, all key frequencies, all non-key frequencies."""
    p = F.shape[0]
    y, v, t = data.all_y, data.valid_mask, data.test_mask
    key = freq_set_mask(p, ks)
    cases: list[tuple[str, Tensor | None]] = [("none", None)]
    cases += [(f"remove key {k}", freq_set_mask(p, [k])) for k in ks]
    cases += [("remove all key", key)]
    nonkey = ~key
    nonkey[0, 0] = False  # keep the constant term
    cases += [("remove all non-key", nonkey)]
    rows = []
    for name, zero in cases:
        La = L.double() if zero is None else ablate_2d(L, F, zero)
        loss, acc = loss_acc(La[v], y[v])
        tl, ta = loss_acc(La[t], y[t]) if t.any() else (None, None)
        rows.append({"name": name, "loss": loss, "acc": acc, "test_loss": tl, "test_acc": ta})
    return rows


# ------------------------------------------------------------------------------- the model
@torch.no_grad()
def run_grid(model: Transformer, data: ModularData) -> tuple[Tensor, Tensor | None, Tensor]:
    """One forward pass over all p*p inputs -> (logits [p*p, p] at `=`, the last layer's MLP
    activations at `=` [p*p, d_mlp] or None, attention from `=` to `a` [n_layers*n_heads, p, p])."""
    model.eval()
    logits, cache = model.run_with_cache(data.all_x)
    L = logits[:, -1].double()
    n_layers = model.cfg.n_layers
    post = None if model.cfg.attn_only else cache["post", n_layers - 1][:, -1].double()
    p = data.p
    pats = [cache[f"blocks.{layer}.attn.hook_pattern"][:, :, -1, 0] for layer in range(n_layers)]
    attn = torch.cat(pats, dim=1).T.reshape(-1, p, p).double()  # [layers*heads, p, p]
    return L, post, attn


def weights(model: Transformer) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


def model_wl(model: Transformer, p: int) -> Tensor | None:
    """The last layer's neuron-logit map, or None for an attention-only model."""
    if model.cfg.attn_only:
        return None
    return neuron_logit_map(model.blocks[-1].mlp.W_out.detach(), model.unembed.W_U.detach(), p)


def frequency_shares(L: Tensor, post: Tensor | None, W_L: Tensor | None, data: ModularData,
                     F: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(shares [n_freqs], neuron fve [n_freqs, d_mlp] or None, neuron var [d_mlp] or None): the
    per-frequency shares the key rule reads (module docstring), from neurons when there are any."""
    p = data.p
    if post is None or W_L is None:
        return logit_freq_shares(L, p, data.sign), None, None
    fve, var = grid_fve(post.T.reshape(-1, p, p).permute(1, 2, 0), F)
    weight = var * centre_outputs(W_L).pow(2).sum(1)  # what each neuron sends to the logits
    return neuron_freq_shares(fve, weight), fve, var


def find_key_frequencies(model: Transformer, data: ModularData) -> list[int]:
    """Only the key frequencies of the loaded checkpoint (the rule in the module docstring)."""
    F, _ = fr.fourier_basis(data.p)
    L, post, _ = run_grid(model, data)
    shares, _, _ = frequency_shares(L, post, model_wl(model, data.p), data, F)
    return key_frequencies(shares)


def reverse_engineer(model: Transformer, data: ModularData, ks: list[int] | None = None,
                     n_show: int = 8) -> tuple[dict, dict[str, Tensor]]:
    """Analyse one checkpoint. Returns (summary fields, figure arrays); see analysis/__init__.py.

    ks: the key frequencies to use; None finds them on this checkpoint.
    """
    p, sign = data.p, data.sign
    F, _ = fr.fourier_basis(p)
    L, post, attn = run_grid(model, data)
    W_L = model_wl(model, p)
    e_spec = embed_spectrum(model.embed.W_E.detach(), F)
    out: dict = {}
    figs: dict[str, Tensor] = {"embed_spectrum": e_spec}

    # neurons: FVE per frequency, weighted by what each neuron sends to the logits
    shares, fve, var = frequency_shares(L, post, W_L, data, F)
    if fve is not None:
        freq, best, explained = neuron_frequencies(fve)
        out["neuron_fve"] = float(explained.double().mean())
        out["neurons_explained"] = int(explained.sum())
        out["neuron_fve_mean"] = float(best.mean())
        # the same share weighted by what each neuron sends to the logits (var * |W_L row|^2):
        # during cleanup many small leftover neurons are unexplained but carry little
        out["neuron_fve_weighted"] = float(shares.sum())
        out["key_rule"] = (f"neurons with max_k FVE_k > {FVE_THRESHOLD}, weighted by var * |W_L row|^2; "
                           f"key = frequencies holding >= {MIN_SHARE} of that weight")
    else:
        out["neuron_fve"] = None
        out["neurons_explained"] = None
        out["neuron_fve_mean"] = None
        out["neuron_fve_weighted"] = None
        out["key_rule"] = (f"attention-only: key = frequencies holding >= {MIN_SHARE} of the centred "
                           "logits' energy in their cos/sin(w(a+b)) directions")
    found = key_frequencies(shares)
    ks = found if ks is None else sorted(ks)
    out["key_frequencies"] = ks
    out["key_frequencies_found_here"] = found
    out["frequency_shares"] = {int(k) + 1: float(s) for k, s in enumerate(shares) if s > 0.005}

    # spectra and Gini
    out["gini_W_E"] = spectrum_gini(e_spec, p)
    if W_L is not None:
        w_spec = wl_spectrum(W_L, F)
        figs["wl_spectrum"] = w_spec
        out["gini_W_L"] = spectrum_gini(w_spec, p)
        out["wl_residual"] = wl_residual(W_L, F, ks)
    else:
        out["gini_W_L"] = out["wl_residual"] = None
    out["gini_basis"] = GINI_BASIS

    # logits: losses, cos(w(a+b-c)) fit, 2D Fourier norms, ablations
    y, v, t, tr = data.all_y, data.valid_mask, data.test_mask, data.train_mask
    out["train_loss"], out["train_acc"] = loss_acc(L[tr], y[tr])
    out["test_loss"], out["test_acc"] = loss_acc(L[t], y[t]) if t.any() else (None, None)
    out["loss_all"], out["acc_all"] = loss_acc(L[v], y[v])
    coefs, lfve, fit = logit_fit(L, p, ks, sign)
    out["logit_fve"] = lfve
    out["logit_coefs"] = {int(k): float(c) for k, c in zip(ks, coefs, strict=True)}
    out["logit_fit_loss"], out["logit_fit_acc"] = loss_acc(fit[v], y[v])
    figs["logit_fourier_norm"] = fr.fourier_2d(L.view(p, p, p), F).norm(dim=-1)
    out["ablations"] = ablations(L, F, ks, data)

    # attention heads: single-frequency fit of the attention from `=` to `a`
    afve, avar = grid_fve(attn.permute(1, 2, 0), F)
    afreq, abest, _ = neuron_frequencies(afve)
    n_heads = model.cfg.n_heads
    out["attention_heads"] = [
        {"head": f"{h // n_heads}.{h % n_heads}", "freq": int(afreq[h]), "fve": float(abest[h]),
         "std": float((avar[h] / (p * p)).sqrt())}
        for h in range(attn.shape[0])
    ]
    figs["attention"] = attn

    if post is not None and fve is not None:
        acts = post.T.reshape(-1, p, p)  # [d_mlp, p, p]
        ids = show_neurons(freq, var, explained, ks, n_show)
        figs["neuron_ids"] = ids
        figs["neuron_acts"] = acts[ids]
        figs["neuron_fourier"] = fr.fourier_2d(acts[ids].permute(1, 2, 0), F).permute(2, 0, 1)
        figs["neuron_fve"] = best
        figs["neuron_freq"] = freq
        cl_freq, members = largest_cluster(freq, explained)
        if cl_freq is not None:
            figs["cluster_wl_fourier"] = (W_L[members] @ F.T).T  # [p, m]
            figs["cluster_freq"] = torch.tensor(cl_freq)
        out["clusters"] = [
            {"freq": int(k), "neurons": int(((freq == k) & explained).sum()),
             "share": float(shares[k - 1]) if k <= len(shares) else 0.0}
            for k in sorted(set(freq[explained].tolist()))
        ]
    else:
        out["clusters"] = []
    out["tables"] = paper_tables(out, e_spec, figs.get("wl_spectrum"), p)
    return out, figs


def show_neurons(freq: Tensor, var: Tensor, explained: Tensor, ks: list[int], n: int) -> Tensor:
    """Neurons to draw: the largest-variance explained neuron of each key frequency, then the
    largest-variance neurons left."""
    chosen: list[int] = []
    for k in ks:
        idx = ((freq == k) & explained).nonzero().flatten()
        if len(idx):
            chosen.append(int(idx[var[idx].argmax()]))
    for i in var.argsort(descending=True).tolist():
        if len(chosen) >= min(n, len(var)):
            break
        if i not in chosen:
            chosen.append(i)
    return torch.tensor(chosen[: max(n, len(ks))], dtype=torch.long)


def largest_cluster(freq: Tensor, explained: Tensor) -> tuple[int | None, Tensor]:
    if not explained.any():
        return None, torch.zeros(0, dtype=torch.long)
    counts = torch.bincount(freq[explained])
    k = int(counts.argmax())
    return k, ((freq == k) & explained).nonzero().flatten()


def paper_tables(out: dict, e_spec: Tensor, w_spec: Tensor | None, p: int) -> dict[str, list[dict]]:
    """The paper's tables as lists of rows: key frequencies, ablations, heads, model summary."""
    e_freq = fr.freq_norms(e_spec, p)
    w_freq = fr.freq_norms(w_spec, p) if w_spec is not None else None
    abl = {r["name"]: r for r in out["ablations"]}
    key_rows = []
    for k in out["key_frequencies"]:
        cl = next((c for c in out.get("clusters", []) if c["freq"] == k), None)
        key_rows.append({
            "freq": k,
            "neurons": cl["neurons"] if cl else 0,
            "share": out["frequency_shares"].get(k, 0.0),
            "embed_norm": float(e_freq[k - 1]),
            "wl_norm": float(w_freq[k - 1]) if w_freq is not None else None,
            "logit_coef": out["logit_coefs"].get(k),
            "loss_without": abl[f"remove key {k}"]["loss"],
        })
    summary = [{
        "test_loss": out["test_loss"], "gini_W_E": out["gini_W_E"], "gini_W_L": out["gini_W_L"],
        "key_frequencies": out["key_frequencies"], "logit_fve": out["logit_fve"],
        "neuron_fve": out["neuron_fve"], "neuron_fve_mean": out["neuron_fve_mean"],
        "neuron_fve_weighted": out["neuron_fve_weighted"],
        "loss_key_removed": abl["remove all key"]["loss"], "loss_nonkey_removed": abl["remove all non-key"]["loss"],
    }]
    return {"key_frequencies": key_rows, "ablations": out["ablations"], "attention_heads": out["attention_heads"],
            "model": summary}
