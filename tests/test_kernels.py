"""Each numba kernel of models/kernels.py against a straightforward numpy/torch answer, and the
tabulated step (models/tabulated.py, docs/fast-step.md) with more key positions than the
mainline's `a b =` against the plain model.

Every expected value is computed here, in float64 from the same inputs, by the obvious method
(einsum, np.add.at, torch autograd, np.exp, torch.logsumexp), never by the kernel itself. Inputs
are small, seeded and random; each shape is chosen to reach a code path: the mainline's K = 2,
H = 4 one-pass rows (`_weighted_rows_k2h4`), the four-heads-a-pass loops with and without
remainders (H = 3, 8), a single key position and head; the ReLU inside the kernels and, for other
activations, without it. The float64 loss of the step (models/loss.py, torch) is checked here too.
The arrays have the dtypes and layouts the step passes (C-contiguous float32/float64, int64
indices), so numba's cache serves the signatures the other tests compile.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grokscope.config import ModelConfig
from grokscope.models import kernels, tabulated
from grokscope.models.loss import (
    FLOAT32_TINY,
    cross_entropy64,
    loss_and_acc,
    per_example_and_gradient,
)
from grokscope.models.reference import ReferenceTransformer, reference_loss
from grokscope.models.transformer import build


@pytest.fixture(autouse=True)
def _ieee_subnormals():
    """The references (np.exp, np.spacing near the smallest normal) need IEEE subnormals; a
    training run earlier in this process leaves flush-to-zero on (setup_torch), which the
    training step sets again for itself."""
    torch.set_flush_denormal(False)
    yield

F32_EPS = float(np.finfo(np.float32).eps)  # 1.19e-7


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _problem(seed: int, n: int, K: int, H: int, V: int, u: int, m: int, c: int, dtype) -> dict:
    """Random tables [H, K, V, f] / shared rows [u, H + 1, f], tokens, sorted query indices and a
    softmax pattern [n, K + 1, H], in `dtype` (all C-contiguous, as tabulated._kernel_args gives)."""
    r = _rng(seed)
    s = r.normal(size=(n, K + 1, H)) * 2
    P = np.exp(s - s.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    return {
        "P": P.astype(dtype),
        "tok": r.integers(0, V, (n, K)).astype(np.int64),
        "inv": np.sort(r.integers(0, u, n)).astype(np.int64),
        "tab_in": r.normal(size=(H, K, V, m)).astype(dtype),
        "sh_in": r.normal(size=(u, H + 1, m)).astype(dtype),
        "tab_u": r.normal(size=(H, K, V, c)).astype(dtype),
        "sh_u": r.normal(size=(u, H + 1, c)).astype(dtype),
    }


def _weighted_rows_ref(P, tok, inv, tab, sh) -> np.ndarray:
    """[n, f] float64: sh[q, H] + sum_h P[i, K, h] sh[q, h] + sum_{k, h} P[i, k, h] tab[h, k, tok[i, k]]."""
    P, tab, sh = P.astype(np.float64), tab.astype(np.float64), sh.astype(np.float64)
    n, K = tok.shape
    H = P.shape[2]
    out = sh[inv, H] + np.einsum("nh,nhf->nf", P[:, K], sh[inv, :H])
    for k in range(K):
        out += np.einsum("nh,hnf->nf", P[:, k], tab[:, k, tok[:, k]])
    return out


def _abs_scale(P, tok, inv, tab, sh) -> np.ndarray:
    """The same sum of |terms|: the bound a rounding error in any order scales with."""
    return _weighted_rows_ref(np.abs(P), tok, inv, np.abs(tab), np.abs(sh))


# (K, H): the mainline's one-pass rows; H = 3 (remainder loop only); H = 8 (two four-head passes);
# one key position and one head; K = 5 (more key positions than the mainline).
SHAPES = [(2, 4), (2, 3), (3, 8), (1, 1), (5, 4)]


# ------------------------------------------------------------------------------------ gather_rows
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("K", "H"), SHAPES)
def test_gather_rows_is_the_relu_of_pattern_weighted_table_rows(K, H, dtype):
    n, V, u, m, c = 37, 5, 3, 19, 11
    p = _problem(10 * K + H, n, K, H, V, u, m, c, dtype)
    post, direct = np.full((n, m), np.nan, dtype), np.full((n, c), np.nan, dtype)
    args = (p["P"], p["tok"], p["inv"], p["tab_in"], p["sh_in"], p["tab_u"], p["sh_u"])
    kernels.gather_rows(*args, True, post, direct)
    pre = _weighted_rows_ref(p["P"], p["tok"], p["inv"], p["tab_in"], p["sh_in"])
    want_direct = _weighted_rows_ref(p["P"], p["tok"], p["inv"], p["tab_u"], p["sh_u"])
    # float64: a few ulps of the terms' magnitude; float32: a few float32 ulps of it
    rel = 1e-14 if dtype == np.float64 else 8 * F32_EPS
    tol_in = rel * _abs_scale(p["P"], p["tok"], p["inv"], p["tab_in"], p["sh_in"])
    tol_u = rel * _abs_scale(p["P"], p["tok"], p["inv"], p["tab_u"], p["sh_u"])
    assert (np.abs(post - np.maximum(pre, 0.0)) <= tol_in).all()
    assert (np.abs(direct - want_direct) <= tol_u).all()
    # ReLU exactly: negative pre-activations become 0, the direct logits are not clipped
    assert (post[pre < -tol_in] == 0).all() and (pre < -tol_in).any()
    assert (direct < 0).any()
    # without the ReLU (other activations): the pre-activation itself, the same bits where positive
    got_pre, direct2 = np.full((n, m), np.nan, dtype), np.full((n, c), np.nan, dtype)
    kernels.gather_rows(*args, False, got_pre, direct2)
    assert (np.abs(got_pre - pre) <= tol_in).all() and (got_pre < 0).any()
    assert np.array_equal(np.maximum(got_pre, 0), post) and np.array_equal(direct2, direct)


# ---------------------------------------------------------------------------------- backward_rows
def _backward_ref(p: dict, d_post: np.ndarray, g: np.ndarray, relu: bool = True):
    """(post, d_pre, d_s) by torch autograd in float64 through the real softmax: scores S with
    softmax(S) = P, post = relu(pre) (or pre itself), and L = <d_post, post> + <g, direct>;
    d_pre = dL/dpre and d_s = dL/dS. (For float32 P, S = log P: its softmax is P / sum P, equal
    to float32 rounding.)"""
    t = {k: torch.from_numpy(v) for k, v in p.items()}
    S = torch.log(t["P"].double()).requires_grad_(True)
    P = S.softmax(1)
    n, K = t["tok"].shape
    H = P.shape[2]

    def rows(tab, sh):
        tab, sh = tab.double(), sh.double()
        q = t["inv"]
        out = sh[q, H] + torch.einsum("nh,nhf->nf", P[:, K], sh[q, :H])
        for k in range(K):
            out = out + torch.einsum("nh,hnf->nf", P[:, k], tab[:, k, t["tok"][:, k]])
        return out

    pre = rows(t["tab_in"], t["sh_in"])
    direct = rows(t["tab_u"], t["sh_u"])
    post = torch.relu(pre) if relu else pre
    loss = (torch.from_numpy(d_post).double() * post).sum() + (torch.from_numpy(g).double() * direct).sum()
    d_S, d_pre = torch.autograd.grad(loss, [S, pre])
    return post.detach().numpy(), d_pre.numpy(), d_S.numpy()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("K", "H"), SHAPES)
def test_backward_rows_is_the_relu_and_softmax_backward_of_the_gather(K, H, dtype):
    n, V, u, m, c = 29, 4, 2, 17, 7
    p = _problem(100 + 10 * K + H, n, K, H, V, u, m, c, dtype)
    r = _rng(7)
    d_post, g = r.normal(size=(n, m)).astype(dtype), r.normal(size=(n, c)).astype(dtype)
    post64, want_d_pre, want_d_s = _backward_ref(p, d_post, g)
    post = post64.astype(dtype)
    assert (post == 0).any() and (post > 0).any()  # the mask does something
    got_d_pre, d_s = d_post.copy(), np.full((n, K + 1, H), np.nan, dtype)
    tables = (p["P"], p["tok"], p["inv"], p["tab_in"], p["sh_in"], p["tab_u"], p["sh_u"])
    kernels.backward_rows(got_d_pre, post, g, *tables, True, d_s)
    # the ReLU backward in place, exactly: d_post where post > 0, else 0
    assert np.array_equal(got_d_pre, np.where(post > 0, d_post, 0).astype(dtype))
    # d_s: each dL/dP entry is a dot of m + c terms of size ~1, then the softmax backward
    scale = np.abs(want_d_s).max()
    tol = 1e-12 if dtype == np.float64 else 2e-6  # (float32: observed 1-2e-7)
    assert np.abs(d_s - want_d_s).max() <= tol * scale, np.abs(d_s - want_d_s).max() / scale
    assert np.abs(d_s.sum(1)).max() <= 10 * tol * scale  # a softmax's gradient sums to zero over positions
    # without the ReLU (other activations: the caller passes d_pre): no mask, the same softmax backward
    _, want_d_pre, want_d_s = _backward_ref(p, d_post, g, relu=False)
    assert np.array_equal(want_d_pre, d_post.astype(np.float64))
    got_d_pre, d_s = d_post.copy(), np.full((n, K + 1, H), np.nan, dtype)
    kernels.backward_rows(got_d_pre, post, g, *tables, False, d_s)
    assert np.array_equal(got_d_pre, d_post)
    scale = np.abs(want_d_s).max()
    assert np.abs(d_s - want_d_s).max() <= tol * scale, np.abs(d_s - want_d_s).max() / scale


# ----------------------------------------------------------------------------------- scatter_rows
def _kv_index(tok: np.ndarray, V: int) -> tuple[np.ndarray, np.ndarray]:
    """t_start [K*V + 1], t_examples: the examples (ascending) with token v at key position k."""
    n, K = tok.shape
    start, examples = [0], []
    for k in range(K):
        for v in range(V):
            examples += np.nonzero(tok[:, k] == v)[0].tolist()
            start.append(len(examples))
    return np.array(start, np.int64), np.array(examples, np.int64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("K", "H"), SHAPES)
def test_scatter_rows_sums_each_rows_gradient_over_the_examples_that_read_it(K, H, dtype):
    n, V, u, m, c = 83, 6, 3, 13, 9
    p = _problem(200 + 10 * K + H, n, K, H, V, u, m, c, dtype)
    tok = p["tok"]
    tok[:, 0] = np.where(tok[:, 0] == 2, 3, tok[:, 0])  # row (0, 2) is read by no example
    r = _rng(11)
    d_pre, g = r.normal(size=(n, m)).astype(dtype), r.normal(size=(n, c)).astype(dtype)
    d_s = r.normal(size=(n, K + 1, H)).astype(dtype)
    t_start, t_examples = _kv_index(tok, V)
    counts = np.diff(t_start)
    assert (counts == 0).any() and (counts % 4 != 0).any() and (counts >= 8).any()  # every loop runs
    # the kernel adds to its outputs: start them non-zero
    d_tab_in, d_tab_u = r.normal(size=(H, K, V, m)).astype(dtype), r.normal(size=(H, K, V, c)).astype(dtype)
    d_scores = r.normal(size=(u, K, H, V)).astype(dtype)
    want_in, want_u, want_sc = d_tab_in.astype(np.float64), d_tab_u.astype(np.float64), d_scores.astype(np.float64)
    abs_in, abs_u = np.abs(want_in), np.abs(want_u)
    P64, dp64, g64 = p["P"].astype(np.float64), d_pre.astype(np.float64), g.astype(np.float64)
    for k in range(K):
        for h in range(H):
            np.add.at(want_in[h, k], tok[:, k], P64[:, k, h, None] * dp64)
            np.add.at(want_u[h, k], tok[:, k], P64[:, k, h, None] * g64)
            np.add.at(abs_in[h, k], tok[:, k], np.abs(P64[:, k, h, None] * dp64))
            np.add.at(abs_u[h, k], tok[:, k], np.abs(P64[:, k, h, None] * g64))
            np.add.at(want_sc[:, k, h], (p["inv"], tok[:, k]), d_s[:, k, h].astype(np.float64))
    kernels.scatter_rows(d_pre, g, p["P"], d_s, p["inv"], t_start, t_examples, K, d_tab_in, d_tab_u, d_scores)
    rel = 1e-14 if dtype == np.float64 else 32 * F32_EPS  # a float32 sum of < 64 terms: (n - 1) eps / 2 bounds it
    assert (np.abs(d_tab_in - want_in) <= rel * abs_in).all()
    assert (np.abs(d_tab_u - want_u) <= rel * abs_u).all()
    assert np.abs(d_scores - want_sc).max() <= rel * 10 * (1 + np.abs(want_sc).max())
    # the row nobody read is untouched, bit for bit
    assert np.array_equal(d_tab_in[:, 0, 2], want_in[:, 0, 2].astype(dtype))


# ----------------------------------------------------------------------------------- shared_sums
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("K", "H"), SHAPES)
def test_shared_sums_are_float64_sums_over_each_query_tokens_examples(K, H, dtype):
    n, u, m, c = 71, 4, 13, 9
    p = _problem(300 + 10 * K + H, n, K, H, 3, u, m, c, dtype)
    inv = p["inv"]
    inv[inv == 2] = 1  # query token 2 has no examples: its rows keep their start values
    r = _rng(13)
    d_pre, g = r.normal(size=(n, m)).astype(dtype), r.normal(size=(n, c)).astype(dtype)
    # chunks as tabulated.make_layout cuts them: every 7 examples (4 + 3: both loops) and where
    # the query token changes
    cuts = np.unique(np.concatenate([np.arange(0, n, 7), np.nonzero(inv[1:] != inv[:-1])[0] + 1]))
    chunk_start = np.append(cuts, n).astype(np.int64)
    chunk_q = inv[chunk_start[:-1]].copy()
    parts_in = np.empty((len(chunk_q), H + 1, m), dtype)
    parts_u = np.empty((len(chunk_q), H + 1, c), dtype)
    out_in, out_u = r.normal(size=(u, H + 1, m)), r.normal(size=(u, H + 1, c))  # float64, added to
    want_in, want_u = out_in.copy(), out_u.copy()
    abs_in, abs_u = np.zeros_like(out_in), np.zeros_like(out_u)
    P64 = p["P"][:, K].astype(np.float64)
    for x, want, absx in ((d_pre, want_in, abs_in), (g, want_u, abs_u)):
        x = x.astype(np.float64)
        for q in range(u):
            sel = inv == q
            want[q, :H] += np.einsum("nh,nf->hf", P64[sel], x[sel])
            want[q, H] += x[sel].sum(0)
            absx[q, :H] += np.einsum("nh,nf->hf", P64[sel], np.abs(x[sel]))
            absx[q, H] += np.abs(x[sel]).sum(0)
    start_in, start_u = out_in.copy(), out_u.copy()
    kernels.shared_sums(d_pre, g, p["P"], chunk_start, chunk_q, parts_in, parts_u, out_in, out_u)
    rel = 1e-14 if dtype == np.float64 else 8 * F32_EPS  # float32 only within a chunk of <= 7
    assert (np.abs(out_in - want_in) <= rel * (abs_in + np.abs(start_in))).all()
    assert (np.abs(out_u - want_u) <= rel * (abs_u + np.abs(start_u))).all()
    assert np.array_equal(out_in[2], start_in[2])


def test_shared_sums_keep_float64_precision_across_chunks():
    # 4,096 float32 terms of ~1e4 in multiples of 1/8 whose total cancels to a few hundred: every
    # partial sum of one chunk (64 terms, as tabulated.CHUNK) is a float32 integer multiple of 1/8
    # below 2^24 / 8, so exact in any order, and the chunks are added in float64: the kernel's sum
    # is exact. A float32 running sum of all the terms reaches 2e7, where float32's spacing is 2.
    n, H, m = 4096, 4, 5
    r = _rng(17)
    half = (1e4 + r.integers(-800, 800, (n // 2, m)) / 8).astype(np.float32)
    d_pre = np.concatenate([half, -half + (r.integers(-8, 8, (n // 2, m)) / 8).astype(np.float32)])
    P = np.full((n, 2, H), 0.5, np.float32)
    chunk_start = np.arange(0, n + 1, 64, dtype=np.int64)
    chunk_q = np.zeros(len(chunk_start) - 1, np.int64)
    out_in, out_u = np.zeros((1, H + 1, m)), np.zeros((1, H + 1, 3))
    g = np.zeros((n, 3), np.float32)
    parts = [np.empty((len(chunk_q), H + 1, f), np.float32) for f in (m, 3)]
    kernels.shared_sums(d_pre, g, P, chunk_start, chunk_q, *parts, out_in, out_u)
    want = d_pre.astype(np.float64).sum(0)  # exact: integers times 1/8, far below 2^53
    assert np.array_equal(out_in[0, H], want)
    assert np.array_equal(out_in[0, :H], np.broadcast_to(0.5 * want, (H, m)))
    assert not np.array_equal(np.cumsum(d_pre, 0, dtype=np.float32)[-1], want)  # float32 alone is not
    assert (out_u == 0).all()


# ------------------------------------------------------------------- the float64 loss (models/loss.py)
def _labels_with_ties(r, logits, c):
    """Labels, with rows 0-9 tied between classes 2 and 6 at the maximum: rows 0-4 labelled 6 (the
    later of the tie: wrong for torch.argmax), 5-9 labelled 2 (the first: right)."""
    labels = r.integers(0, c, len(logits)).astype(np.int64)
    logits[:10, 2] = logits[:10, 6] = logits[:10].max(1) + 1.0
    labels[:5], labels[5:10] = 6, 2
    return labels


def test_float64_rows_are_torchs_cross_entropy_with_its_gradient():
    # The tabulated step's loss for a model that is not float32 (models/loss.per_example_and_gradient)
    # against torch's own cross-entropy and autograd: per-example loss, the gradient of the mean
    # over a larger batch, first-maximum accuracy with planted ties, and a NaN row.
    r = _rng(23)
    n, c, n_batch = 60, 17, 250
    logits = r.normal(size=(n, c)) * np.logspace(-1, 2.6, n)[:, None]  # spreads up to ~1,500
    labels = _labels_with_ties(r, logits, c)
    logits[11, 4] = logits[11, 9] = np.nan
    labels[11] = 4
    lt, yt = torch.from_numpy(logits), torch.from_numpy(labels)
    losses, correct, g = per_example_and_gradient(lt, yt, n_batch)
    assert losses.dtype == g.dtype == torch.float64 and correct.dtype == torch.bool
    x = lt.clone().requires_grad_(True)
    want_loss = F.cross_entropy(x, yt, reduction="none")
    (want_loss.sum() / n_batch).backward()
    ok = torch.ones(n, dtype=torch.bool)
    ok[11] = False
    assert torch.allclose(losses[ok], want_loss.detach()[ok], rtol=1e-13, atol=1e-13)
    # p = exp(logit - logsumexp) carries the rounding of the logsumexp, |lse| ulps: relative to p,
    # and absolute in (p - 1) / n_batch at the label, which cancels when p is near 1
    lse = torch.logsumexp(lt, 1, keepdim=True).abs()
    tol = 1e-12 * x.grad.abs() + 4 * np.finfo(np.float64).eps * (1 + lse) / n_batch * F.one_hot(yt, c)
    assert ((g - x.grad).abs() <= tol)[ok].all()
    assert torch.equal(correct[ok], (lt.argmax(1) == yt)[ok])
    assert not correct[:5].any() and correct[5:10].all()  # the first maximum, as torch.argmax
    assert torch.isnan(losses[11]) and torch.isnan(g[11]).all()  # a NaN row stays NaN
    assert correct[11] and lt[11].argmax() == 4  # torch.argmax picks the first NaN
    # a float32 model's gradient would be cast with its subnormals zeroed (loss.cast_gradient)
    _, _, g32 = per_example_and_gradient(lt[ok].float() * 60, yt[ok], n_batch)
    assert g32.dtype == torch.float32 and ((g32 == 0) | (g32.abs() >= FLOAT32_TINY)).all() and (g32 == 0).any()


# ----------------------------------------------------------------------------- cross_entropy_rows
def test_cross_entropy_rows_exponentials_are_within_an_ulp_of_exp():
    # The rows are scratch and end as exp(logits - max) (documented): with the maximum 0 and no
    # direct logits, that is exp of the inputs themselves, over float32 exp's whole normal range.
    n, c = 64, 512
    x = -np.linspace(0, 90, n * (c - 1)).reshape(n, c - 1)
    logits = np.concatenate([np.zeros((n, 1)), x], 1).astype(np.float32)
    logits[0, 1:8] = [-1e-7, -1e-30, -0.5, -np.log(2), -1, -87.0, -87.5]
    labels = np.zeros(n, np.int64)
    lg = logits.copy()
    g, losses, correct = np.empty((n, c), np.float32), np.empty(n), np.empty(n, np.bool_)
    kernels.cross_entropy_rows(lg, np.zeros((n, c), np.float32), labels, FLOAT32_TINY, n, g, losses, correct)
    want = np.exp(logits.astype(np.float64))
    normal = want >= FLOAT32_TINY
    ulps = np.abs(lg[normal] - want[normal]) / np.spacing(want[normal].astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 1.5, ulps.max()
    # below float32's normal range the exponential is stored as 0 (the kernel's _EXP_MIN)
    assert (lg[logits < -87.34] == 0).all() and (logits < -87.34).any()
    assert lg[0, 0] == 1.0 and correct.all()


def test_cross_entropy_rows_is_the_float64_loss_of_the_float32_logits():
    r = _rng(29)
    n, c, n_batch = 80, 31, 300
    logits = (r.normal(size=(n, c)) * np.logspace(-1, 2.3, n)[:, None]).astype(np.float32)
    direct = r.normal(size=(n, c)).astype(np.float32)
    direct[:10] = 0
    labels = _labels_with_ties(r, logits, c)
    logits[12, 3] = logits[12, 8] = np.nan
    logits[13, 0] = logits[13, 5] = np.inf
    labels[12:14] = 3, 0
    logits[14, :] = -np.inf
    direct[14] = 0
    total = logits + direct  # float32, as the kernel adds them
    g, losses, correct = np.empty((n, c), np.float32), np.empty(n), np.empty(n, np.bool_)
    kernels.cross_entropy_rows(logits.copy(), direct, labels, FLOAT32_TINY, n_batch, g, losses, correct)
    ok = np.ones(n, bool)
    ok[12:15] = False
    # documented: logits - max is rounded to float32 (as torch's float32 subtraction would), and
    # from there it is float64: exp, sum, log, the gradient
    t = torch.from_numpy(total[ok]).double()
    y = torch.from_numpy(labels[ok])
    top = t.max(1, keepdim=True).values
    x = (t - top).float().double()
    want_loss = top[:, 0] + x.exp().sum(1).log() - t.gather(1, y[:, None])[:, 0]
    # the float32 exponentials carry ~1 ulp each
    assert np.allclose(losses[ok], want_loss.numpy(), rtol=2 * F32_EPS, atol=2 * F32_EPS)
    assert not np.allclose(losses[ok], want_loss.numpy() * (1 + 8 * F32_EPS), rtol=2 * F32_EPS, atol=2 * F32_EPS)
    want_g = ((x.softmax(1) - F.one_hot(y, c)) / n_batch).numpy()
    normal, sub = np.abs(want_g) > 1.01 * FLOAT32_TINY, np.abs(want_g) < 0.99 * FLOAT32_TINY
    got = g[ok].astype(np.float64)
    assert (np.abs(got - want_g)[normal] <= 4 * F32_EPS * np.abs(want_g)[normal]).all()
    assert sub.any() and (got[sub] == 0).all()  # no subnormal survives
    assert np.array_equal(correct[ok], (t.argmax(1) == y).numpy())
    assert not correct[:5].any() and correct[5:10].all()
    for i in (12, 13, 14):  # NaN, +inf maximum, no finite entry: NaN loss and gradient
        assert np.isnan(losses[i]) and np.isnan(g[i]).all(), i
    tt = torch.from_numpy(total)
    assert correct[12] and tt[12].argmax() == 3  # torch.argmax picks the first NaN, and so does the kernel
    assert correct[13] and tt[13].argmax() == 0  # and the first +inf


# ------------------------------------------------------------------------- _TablesFn, general K
def test_tables_backward_matches_finite_differences_with_five_key_positions():
    # The hand-written _TablesFn.backward (docs/fast-step.md) against torch.autograd.gradcheck's
    # central differences in float64: every table's gradient to every parameter, two query tokens,
    # K = 5 key positions in a context of 7 (W_pos's last row unused: its gradient is zero).
    torch.manual_seed(0)
    V, d, n_ctx, H, e, m, c, K = 5, 4, 7, 2, 3, 6, 5, 5
    shapes = [(V, d), (n_ctx, d), (H, d, e), (H, d, e), (H, d, e), (H, e, d), (d, m), (m,), (m, d), (d,), (d, c)]
    params = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    uniq = torch.tensor([1, 3])
    fn = lambda *ps: tabulated._TablesFn.apply(uniq, K, 0.7, *ps)  # noqa: E731
    assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-8, rtol=1e-6)
    # and the forward against the per-(position, token) definitions
    W_E, W_pos, W_Q, W_K, W_V, W_O, W_in, b_in, W_out, b_out, W_U = (p.detach() for p in params)
    scores, self_scores, tab_in, tab_u, sh_in, sh_u, W_LT = (t.detach() for t in fn(*params))
    x_q = W_E[uniq] + W_pos[K]  # [u, d]
    x_k = W_E[None] + W_pos[:K, None]  # [K, V, d]
    want = 0.7 * torch.einsum("kvd,hde,hfe,uf->ukhv", x_k, W_K, W_Q, x_q)
    assert torch.allclose(scores, want, rtol=1e-12, atol=1e-12)
    assert torch.allclose(self_scores, 0.7 * torch.einsum("ud,hde,hfe,uf->uh", x_q, W_K, W_Q, x_q), atol=1e-12)
    head_k = torch.einsum("kvd,hde,hef->hkvf", x_k, W_V, W_O)  # each head's output per key token
    assert torch.allclose(tab_in, (head_k @ W_in).reshape(-1, m), atol=1e-12)
    assert torch.allclose(tab_u, (head_k @ W_U).reshape(-1, c), atol=1e-12)
    head_q = torch.einsum("ud,hde,hef->uhf", x_q, W_V, W_O)
    assert torch.allclose(sh_in.view(2, H + 1, m), torch.cat([head_q @ W_in, (x_q @ W_in + b_in)[:, None]], 1),
                          atol=1e-12)
    assert torch.allclose(sh_u.view(2, H + 1, c), torch.cat([head_q @ W_U, ((x_q + b_out) @ W_U)[:, None]], 1),
                          atol=1e-12)
    assert torch.allclose(W_LT, (W_out @ W_U).T, atol=1e-12)


# ------------------------------------------------------------------- the whole step, general K
def _model(n_ctx: int, n_heads: int, act: str, seed: int):
    cfg = ModelConfig(d_model=24, n_heads=n_heads, d_head=8, d_mlp=40, act_fn=act)
    return build(cfg, 13, 11, n_ctx, seed=seed)


def _grads(model, loss_fn) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model)
    loss.backward()
    return loss.item(), {k: p.grad.double().clone() for k, p in model.named_parameters()}


REF_NAMES = {"embed.W_E": "W_E", "pos_embed.W_pos": "W_pos", "unembed.W_U": "W_U"}
REF_NAMES |= {f"blocks.0.attn.{k}": k for k in ("W_Q", "W_K", "W_V", "W_O")}
REF_NAMES |= {f"blocks.0.mlp.{k}": k for k in ("W_in", "b_in", "W_out", "b_out")}


# (n_ctx, input length, heads, activation): K = 5 with the four-head kernel paths; K = 4 in a
# longer context (the unused positions' W_pos rows get zero gradient); K = 1; GELU, K = 6 (the
# kernels without their ReLU, torch's GELU and its backward between them)
LONG = [(6, 6, 4, "relu"), (9, 5, 3, "relu"), (4, 2, 4, "relu"), (7, 7, 2, "gelu")]


@pytest.mark.parametrize(("n_ctx", "n_pos", "n_heads", "act"), LONG)
def test_tabulated_step_with_other_key_counts_equals_the_plain_model_in_float64(n_ctx, n_pos, n_heads, act):
    model = _model(n_ctx, n_heads, act, seed=n_pos).double()
    gen = torch.Generator().manual_seed(n_pos)
    x = torch.randint(0, 13, (300, n_pos), generator=gen)  # every position random: many query tokens
    y = torch.randint(0, 11, (300,), generator=gen)
    ref = ReferenceTransformer(13, 11, n_ctx, d_model=24, n_heads=n_heads, d_head=8, d_mlp=40, act_fn=act).double()
    ref.load_tl_state(model.state_dict())
    model.zero_grad(set_to_none=True)
    truth_loss = reference_loss(ref(x)[:, -1], y)
    truth_loss.backward()
    loss, fast = _grads(model, lambda mo: mo.loss_last(x, y))
    assert abs(loss - truth_loss.item()) <= 1e-12 * truth_loss.item()
    for name, ref_name in REF_NAMES.items():
        want = getattr(ref, ref_name).grad
        assert (fast[name] - want).abs().max() <= 1e-10 * want.abs().max(), name
    assert (fast["pos_embed.W_pos"][n_pos:] == 0).all()
    with torch.no_grad():  # the evaluation paths: logits, and loss and first-maximum accuracy
        want_logits = ref(x)[:, -1]
        assert torch.allclose(model.forward_last(x), want_logits, rtol=0, atol=1e-12)
        ((ev_loss, ev_acc),) = model.loss_and_acc_last([(x, y)])
        plain_loss, plain_acc = loss_and_acc(want_logits, y)
        assert abs(ev_loss - plain_loss) <= 1e-12 * plain_loss and ev_acc == plain_acc


def test_tabulated_step_with_five_key_positions_in_float32_is_float32_accurate():
    # The float32 kernels on the general-K path (gather_rows's general rows, cross_entropy_rows),
    # against float64 truth; the plain float32 model's own error is the yardstick.
    model = _model(6, 4, "relu", seed=1)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 13, (300, 6), generator=gen)
    y = torch.randint(0, 11, (300,), generator=gen)
    truth_loss, truth = _grads(copy.deepcopy(model).double(), lambda mo: cross_entropy64(mo(x)[:, -1], y))
    plain_loss, plain = _grads(model, lambda mo: cross_entropy64(mo(x)[:, -1], y))
    loss, fast = _grads(model, lambda mo: mo.loss_last(x, y))
    assert abs(loss - truth_loss) <= max(4 * abs(plain_loss - truth_loss), 1e-6)
    for name, t in truth.items():
        err_fast, err_plain = (fast[name] - t).abs().max(), (plain[name] - t).abs().max()
        assert err_fast <= max(4 * err_plain, 1e-6 * t.abs().max()), (name, err_fast, err_plain)
