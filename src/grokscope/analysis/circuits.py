"""Reverse-engineering one checkpoint of a modular-arithmetic model (Nanda et al. 2023, Section 4).

Measures: the embedding and neuron-logit (W_L) spectra; the key frequencies; per-neuron FVE by
frequency; W_L's residual outside the key directions; the fit of the logits by cos(w(a+b-c))
terms; ablations in the 2D Fourier basis of the logits; the MLP-level measures and ablations of
Sections 4.2-4.4 (analysis/mlp.py); each attention head's single-frequency fit (analysis/attention.py).

Key frequencies, the paper's rule (Appendix C.2: "we perform a DFT on the neuron-logit map W_L,
then take the frequencies with nontrivial coefficients"): the share of W_L's Fourier energy
(output axis, constant row excluded) held by each frequency; a frequency is key when its share is
at least `KEY_RATIO` times the even share 1/n_freqs. A spectrum with no structure (random or
memorising weights) has every share near the even one and so no key frequency.
A second rule, `neurons`, reads them through the neurons instead: a neuron is explained when
one frequency holds more than 0.85 of its activation variance (`FVE_THRESHOLD`); each explained
neuron is weighted by what it sends to the logits, var(neuron) * ||W_L[n]||^2, and a frequency is
key when its explained neurons carry at least `MIN_SHARE` of the total over all neurons.
Attention-only models have no W_L: there the share of a frequency is the share of the (centred)
logits' variance lying in its cos/sin(w(a+b)) directions, with the threshold of the paper's rule.

Neuron FVE follows the paper (Section 4.3): a neuron's frequency is the key frequency whose 2D
block explains most of its variance, and it is explained above 0.85; the maximum over all
frequencies is kept as `neuron_fve_all_freqs`.

Functions take tensors and return tensors or plain numbers; `reverse_engineer` runs the model
once over all p*p inputs and assembles the summary. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from grokscope.analysis import attention as at
from grokscope.analysis import fourier as fr
from grokscope.analysis import mlp
from grokscope.config import RunConfig
from grokscope.models.loss import loss_and_acc as loss_acc
from grokscope.models.transformer import Transformer
from grokscope.tasks import modular

FVE_THRESHOLD = 0.85  # the paper (Section 4.3): a neuron "is explained" by one frequency above this share
MIN_SHARE = 0.02  # `neurons` rule: a key frequency's explained neurons carry >= 2% of the neuron->logit variance
KEY_RATIO = 3.0  # paper's rule: a key frequency holds >= 3x the even share of W_L's Fourier energy
KEY_RULES = ("wl", "neurons")


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


def modular_data(cfg: RunConfig) -> ModularData:
    """A modular run's full input grid and split, rebuilt from its config and seed."""
    m = modular.make(cfg.task, cfg.seed).meta
    return ModularData(cfg.task.p, direction_sign(cfg.task.op), m["all_x"], m["all_y"], m["train_mask"],
                       m["valid_mask"])


def direction_sign(op: str) -> int:
    """Which combination of a and b the Fourier algorithm rotates by: a-b for sub, else a+b."""
    return -1 if op == "sub" else 1


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


def wl_freq_shares(W_L: Tensor, F: Tensor) -> Tensor:
    """[n_freqs]: each frequency's share of W_L's Fourier energy along its output axis (constant row excluded)."""
    e = fr.freq_norms(wl_spectrum(W_L, F), F.shape[0]).pow(2)
    total = e.sum()
    return e / total if total > 0 else e


def embed_freq_shares(e_spec: Tensor, p: int) -> Tensor:
    """[n_freqs]: each frequency's share of W_E's Fourier energy (constant row excluded), from
    `embed_spectrum`."""
    e = fr.freq_norms(e_spec, p).pow(2)
    total = e.sum()
    return e / total if total > 0 else e


def spectrum_gini(row_norms: Tensor, p: int) -> float:
    """Gini of a spectrum given per basis row, taken per frequency (see GINI_BASIS)."""
    return gini(fr.freq_norms(row_norms, p))


def neuron_gini(var: Tensor, W_L: Tensor) -> float:
    """Gini over the d_mlp neurons of c_n = std(activation) x |W_L row centred over the outputs|,
    what each neuron sends to the logits: near 1 when a few neurons carry them.

    The neuron-basis counterpart of the Fourier Ginis, for Appendix D.1's reading of the L1
    penalty (sparse in neurons, not in frequencies). var [d_mlp]: each neuron's activation
    variance; W_L [d_mlp, p]."""
    return gini(var.clamp(min=0).sqrt() * centre_outputs(W_L).norm(dim=1))


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


def neuron_frequencies(fve: Tensor, threshold: float = FVE_THRESHOLD,
                       ks: list[int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(freq [n] 1-based, best FVE [n], explained [n] bool) from fve [n_freqs, n].

    ks: choose each neuron's frequency among these only (the paper's "one of the key
    frequencies"); None: among all. With ks empty no neuron is explained.
    """
    if ks is not None:
        if not ks:
            n = fve.shape[1]
            return torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=fve.dtype), torch.zeros(n, dtype=torch.bool)
        sel = torch.tensor(sorted(ks)) - 1
        best, idx = fve[sel].max(dim=0)
        return sel[idx] + 1, best, best > threshold
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


def key_threshold(rule: str, p: int) -> float:
    """The share a frequency needs to be key under `rule` (module docstring)."""
    if rule not in KEY_RULES:
        raise ValueError(f"unknown key-frequency rule {rule!r}; choose one of {', '.join(KEY_RULES)}")
    return KEY_RATIO / fr.n_freqs(p) if rule == "wl" else MIN_SHARE


KEY_RULE_TEXT = {
    "wl": (f"the paper's (Appendix C.2): DFT of W_L along its output axis; key = frequencies holding "
           f">= {KEY_RATIO:g}x the even share (1/n_freqs) of its non-constant energy"),
    "neurons": (f"neurons with max_k FVE_k > {FVE_THRESHOLD}, weighted by var * |W_L row|^2; key = "
                f"frequencies holding >= {MIN_SHARE} of that weight"),
    "logits": (f"attention-only: key = frequencies holding >= {KEY_RATIO:g}x the even share of the centred "
               "logits' energy in their cos/sin(w(a+b)) directions"),
}


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
    key = freq_set_mask(p, ks)
    nonkey = ~key
    nonkey[0, 0] = False  # keep the constant term
    zeros = [(f"remove key {k}", freq_set_mask(p, [k])) for k in ks]
    zeros += [("remove all key", key), ("remove all non-key", nonkey)]
    return loss_rows([("none", L.double())] + [(name, ablate_2d(L, F, z)) for name, z in zeros], data)


# ------------------------------------------------------------------------------- the model
@dataclass
class Grid:
    """One forward pass over all p*p inputs, at the `=` position."""

    L: Tensor  # logits [p*p, p] float64
    post: Tensor | None  # the last layer's MLP activations [p*p, d_mlp], None when attention-only
    resid_mid: Tensor | None  # the last layer's residual stream before its MLP [p*p, d_model]
    attn: Tensor  # attention from `=` to `a` [n_layers*n_heads, p, p]
    scores: Tensor  # the same before the softmax [n_layers*n_heads, p, p]
    attn_self: Tensor  # attention from `=` to itself [n_layers*n_heads, p, p]
    scores_b: Tensor  # the pre-softmax score from `=` to `b` [n_layers*n_heads, p, p]


@torch.no_grad()
def run_grid(model: Transformer, data: ModularData) -> Grid:
    """Run the model once over every input and keep what the measures read."""
    model.eval()
    logits, cache = model.run_with_cache(data.all_x)
    n_layers, p = model.cfg.n_layers, data.p
    last = f"blocks.{n_layers - 1}"
    post = None if model.cfg.attn_only else cache["post", n_layers - 1][:, -1].double()
    mid = None if model.cfg.attn_only else cache[f"{last}.hook_resid_mid"][:, -1].double()

    def per_head(hook: str, key: int) -> Tensor:
        x = [cache[f"blocks.{layer}.attn.{hook}"][:, :, -1, key] for layer in range(n_layers)]
        return torch.cat(x, dim=1).T.reshape(-1, p, p).double()  # [layers*heads, p, p]

    return Grid(logits[:, -1].double(), post, mid, per_head("hook_pattern", 0), per_head("hook_attn_scores", 0),
                per_head("hook_pattern", -1), per_head("hook_attn_scores", 1))


def weights(model: Transformer) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


def model_wl(model: Transformer, p: int) -> Tensor | None:
    """The last layer's neuron-logit map, or None for an attention-only model."""
    if model.cfg.attn_only:
        return None
    return neuron_logit_map(model.blocks[-1].mlp.W_out.detach(), model.unembed.W_U.detach(), p)


def neuron_grid_fve(post: Tensor, F: Tensor) -> tuple[Tensor, Tensor]:
    """(fve [n_freqs, d_mlp], var [d_mlp]) of each neuron's p x p activation grid."""
    p = F.shape[0]
    return grid_fve(post.T.reshape(-1, p, p).permute(1, 2, 0), F)


def neuron_shares(post: Tensor, W_L: Tensor, F: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(shares [n_freqs], fve [n_freqs, d_mlp], var [d_mlp]): the `neurons` rule's shares."""
    fve, var = neuron_grid_fve(post, F)
    weight = var * centre_outputs(W_L).pow(2).sum(1)  # what each neuron sends to the logits
    return neuron_freq_shares(fve, weight), fve, var


def rule_shares(g: Grid, W_L: Tensor | None, data: ModularData, F: Tensor, rule: str) -> tuple[str, Tensor]:
    """(the rule actually applied, per-frequency shares) -- attention-only models fall back to the logits."""
    if g.post is None or W_L is None:
        return "logits", logit_freq_shares(g.L, data.p, data.sign)
    if rule == "wl":
        return "wl", wl_freq_shares(W_L, F)
    key_threshold(rule, data.p)  # validates the name
    return "neurons", neuron_shares(g.post, W_L, F)[0]


def keys_from(applied: str, shares: Tensor, p: int) -> list[int]:
    return key_frequencies(shares, key_threshold("wl" if applied == "logits" else applied, p))


def find_key_frequencies(model: Transformer, data: ModularData, rule: str = "wl") -> list[int]:
    """Only the key frequencies of the loaded checkpoint (the rule in the module docstring)."""
    F, _ = fr.fourier_basis(data.p)
    applied, shares = rule_shares(run_grid(model, data), model_wl(model, data.p), data, F, rule)
    return keys_from(applied, shares, data.p)


def loss_rows(cases: list[tuple[str, Tensor]], data: ModularData) -> list[dict]:
    """[{name, loss, acc, test_loss, test_acc}] for named logits [p*p, p] (all valid inputs, and test)."""
    y, v, t = data.all_y, data.valid_mask, data.test_mask
    rows = []
    for name, La in cases:
        loss, acc = loss_acc(La[v], y[v])
        tl, ta = loss_acc(La[t], y[t]) if t.any() else (None, None)
        rows.append({"name": name, "loss": loss, "acc": acc, "test_loss": tl, "test_acc": ta})
    return rows


def mlp_ablations(model: Transformer, g: Grid, W_L: Tensor, F: Tensor, ks: list[int], freq: Tensor,
                  explained: Tensor, data: ModularData) -> tuple[list[dict], list[dict]]:
    """Section 4.4's neuron and direction ablations, and Table 6's final skip-connection ablations."""
    assert g.post is not None and g.resid_mid is not None
    last = model.blocks[-1].mlp
    W_out, b_out, W_U = last.W_out.detach(), last.b_out.detach(), model.unembed.W_U.detach()[:, : data.p]

    def logits(post: Tensor, mid: Tensor | None = None) -> Tensor:
        return mlp.logits_from_mlp(g.resid_mid if mid is None else mid, post, W_out, b_out, W_U)

    U, _ = mlp.wl_directions(W_L, F, ks)
    neurons = [
        ("none", logits(g.post)),
        ("explained neurons -> degree-2 polynomial of their frequency",
         logits(mlp.polynomial_ablation(g.post, F, freq, explained))),
        ("all neurons -> key cos/sin(w(a+b)) terms", logits(mlp.sum_term_ablation(g.post, ks, data.sign))),
        ("activations projected onto the W_L key directions", logits(mlp.direction_ablation(g.post, U))),
        ("activations projected onto their null space", logits(mlp.direction_ablation(g.post, U, null=True))),
    ]
    mid = g.resid_mid
    skip = [
        ("none", logits(g.post)),
        ("final skip connection zero-ablated", logits(g.post, torch.zeros_like(mid))),
        ("final skip connection mean-ablated", logits(g.post, mid.mean(0, keepdim=True).expand_as(mid))),
    ]
    return loss_rows(neurons, data), loss_rows(skip, data)


def reverse_engineer(model: Transformer, data: ModularData, ks: list[int] | None = None,
                     n_show: int = 8, key_rule: str = "wl") -> tuple[dict, dict[str, Tensor]]:
    """Analyse one checkpoint. Returns (summary fields, figure arrays); see analysis/__init__.py.

    ks: the key frequencies to use; None finds them on this checkpoint by `key_rule`.
    """
    p, sign = data.p, data.sign
    key_threshold(key_rule, p)
    F, _ = fr.fourier_basis(p)
    g = run_grid(model, data)
    L, post = g.L, g.post
    W_L = model_wl(model, p)
    e_spec = embed_spectrum(model.embed.W_E.detach(), F)
    out: dict = {}
    figs: dict[str, Tensor] = {"embed_spectrum": e_spec}

    # key frequencies: the chosen rule, and every other rule's answer beside it
    applied, shares = rule_shares(g, W_L, data, F, key_rule)
    found = keys_from(applied, shares, p)
    ks = found if ks is None else sorted(ks)
    out["key_frequencies"] = ks
    out["key_frequencies_found_here"] = found
    out["key_rule"] = KEY_RULE_TEXT[applied]
    out["key_rule_name"] = applied
    out["frequency_shares"] = {int(k) + 1: float(s) for k, s in enumerate(shares) if s > 0.005}
    fve = var = None
    if post is not None and W_L is not None:
        n_shares, fve, var = neuron_shares(post, W_L, F)
        w_shares = wl_freq_shares(W_L, F)
        out["key_frequencies_wl"] = key_frequencies(w_shares, key_threshold("wl", p))
        out["key_frequencies_neurons"] = key_frequencies(n_shares, key_threshold("neurons", p))
        out["wl_frequency_shares"] = {int(k) + 1: float(s) for k, s in enumerate(w_shares) if s > 0.005}
    else:
        out["key_frequencies_wl"] = out["key_frequencies_neurons"] = None
        out["wl_frequency_shares"] = None

    # neurons: the paper's FVE (best key frequency), and the best over all frequencies beside it
    if fve is not None and var is not None and W_L is not None:
        freq, best, explained = neuron_frequencies(fve, ks=ks)
        _, best_all, explained_all = neuron_frequencies(fve)
        out["neuron_fve"] = float(explained.double().mean())
        out["neurons_explained"] = int(explained.sum())
        out["neuron_fve_mean"] = float(best.mean())
        out["neuron_fve_all_freqs"] = float(explained_all.double().mean())
        out["neuron_fve_all_freqs_mean"] = float(best_all.mean())
        # the share of the neuron->logit weight (var * |W_L row|^2) on neurons explained by any
        # frequency: during cleanup many small leftover neurons are unexplained but carry little
        weight = var * centre_outputs(W_L).pow(2).sum(1)
        out["gini_neurons"] = neuron_gini(var, W_L)
        out["neuron_fve_weighted"] = float(neuron_freq_shares(fve, weight).sum())
        comps = mlp.mlp_fve(post, W_L, F, ks, sign)
        vals = torch.tensor([c["fve"] for c in comps], dtype=torch.float64)
        out["mlp_fve"] = float(vals.mean()) if len(comps) else None
        out["mlp_fve_std"] = float(vals.std(correction=0)) if len(comps) else None
        out["mlp_fve_components"] = comps
        out["mlp_ablations"], out["skip_ablations"] = mlp_ablations(model, g, W_L, F, ks, freq, explained, data)
    else:
        for key in ("neuron_fve", "neurons_explained", "neuron_fve_mean", "neuron_fve_all_freqs",
                    "neuron_fve_all_freqs_mean", "neuron_fve_weighted", "gini_neurons", "mlp_fve", "mlp_fve_std"):
            out[key] = None
        out["mlp_fve_components"] = out["mlp_ablations"] = out["skip_ablations"] = []

    # spectra and Gini
    out["gini_W_E"] = spectrum_gini(e_spec, p)
    # the paper counts W_E's frequencies by eye (Fig. 3); the same threshold as W_L's key rule
    out["embed_frequencies"] = key_frequencies(embed_freq_shares(e_spec, p), key_threshold("wl", p))
    out["gini_W_E_rows"] = gini(e_spec[1:])
    if W_L is not None:
        w_spec = wl_spectrum(W_L, F)
        figs["wl_spectrum"] = w_spec
        out["gini_W_L"] = spectrum_gini(w_spec, p)
        out["gini_W_L_rows"] = gini(w_spec[1:])
        out["wl_residual"] = wl_residual(W_L, F, ks)
    else:
        out["gini_W_L"] = out["gini_W_L_rows"] = out["wl_residual"] = None
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

    # attention heads: the paper's fit of the pre-softmax score (C.1.3), and the post-softmax
    # pattern's single-frequency block share beside it
    fits = at.score_fits(g.scores, F)
    afve, avar = grid_fve(g.attn.permute(1, 2, 0), F)
    afreq, abest, _ = neuron_frequencies(afve)
    n_heads = model.cfg.n_heads
    out["attention_heads"] = [
        {"head": f"{h // n_heads}.{h % n_heads}", **fits[h],
         "self_attention": float(g.attn_self[h].mean()),
         "sigmoid_linear_fve": at.sigmoid_linear_fve(g.scores[h], g.scores_b[h], g.attn[h]),
         "pattern_freq": int(afreq[h]), "pattern_fve": float(abest[h]),
         "std": float((avar[h] / (p * p)).sqrt())}
        for h in range(g.attn.shape[0])
    ]
    figs["attention"] = g.attn

    if post is not None and fve is not None and var is not None and W_L is not None:
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
        # wl_share: how local W_L is to each cluster - the share of its neurons' W_L rows'
        # Fourier energy at the cluster's own frequency
        out["clusters"] = [
            {"freq": int(k), "neurons": int(((freq == k) & explained).sum()),
             "share": float(shares[k - 1]) if k <= len(shares) else 0.0,
             "wl_share": float(wl_freq_shares(W_L[(freq == k) & explained], F)[k - 1])}
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
        "key_frequencies": out["key_frequencies"], "logit_fve": out["logit_fve"], "mlp_fve": out["mlp_fve"],
        "mlp_fve_std": out["mlp_fve_std"], "neuron_fve": out["neuron_fve"], "neuron_fve_mean": out["neuron_fve_mean"],
        "neuron_fve_weighted": out["neuron_fve_weighted"],
        "loss_key_removed": abl["remove all key"]["loss"], "loss_nonkey_removed": abl["remove all non-key"]["loss"],
    }]
    return {"key_frequencies": key_rows, "ablations": out["ablations"], "attention_heads": out["attention_heads"],
            "model": summary, "mlp_fve": out["mlp_fve_components"], "mlp_ablations": out["mlp_ablations"],
            "skip_ablations": out["skip_ablations"]}
