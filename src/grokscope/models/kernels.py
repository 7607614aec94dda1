"""Fused per-example loops of the tabulated step (models/tabulated.py), compiled with numba.

Each loop makes one pass over its [n, d_mlp] operand where torch would make several (gather,
add, ReLU; mask, gather-dot, softmax backward; a float64 loss in ten elementwise passes), which
matters because every such pass streams megabytes through the cache. The matrix products stay in
torch (MKL), except the thin sums over all examples of the shared rows' gradients (shared_sums).
Every loop writes disjoint outputs per parallel iteration and sums in a fixed order, so results
do not depend on the thread count.

Shapes: n examples, K key positions, H heads, V tokens, u query tokens, m = d_mlp, c = d_vocab.
Tables are row-major `tab [H, K, V, f]` and `shared [u, H + 1, f]` (head h attending to the query
itself, then the query's own residual).
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np
from numba import njit, prange

from grokscope.models.jit import kernel as _kernel

# numba's OpenMP layer, which runs on torch's own OpenMP runtime: torch is imported first, so its
# bundled libgomp.so.1 is in the global symbol scope, and numba's omppool binds GOMP_parallel and
# the thread queries there (LD_DEBUG=bindings; only omp_get_supported_active_levels, which that
# libgomp lacks, comes from the system's), so the kernels' parallel regions are torch's. With
# numba's own `workqueue` pool the two pools' workers fought over the 2 cores: a step took 31 ms
# instead of 21 (31 against 22 when remeasured).
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "omp"

_JIT = {"parallel": True, "fastmath": True, "cache": True, "nogil": True}
_JIT_SERIAL = {"fastmath": True, "cache": True, "nogil": True}
# The loss's kernels keep NaN and inf meaningful (fastmath without nnan/ninf): a diverged run must
# log a NaN loss, as torch's amax and logsumexp would, not a finite-looking number.
_JIT_LOSS = {**_JIT, "fastmath": {"nsz", "arcp", "contract", "afn", "reassoc"}}

def set_threads(n: int) -> None:
    """Use n threads in the kernels (numba keeps its own count, apart from torch's)."""
    try:  # start numba's OpenMP layer, or learn that it cannot load
        _start_pool(np.zeros(2))
    except Exception:  # numba found no OpenMP runtime it can use: its own pool still works
        numba.config.THREADING_LAYER = "workqueue"
        _start_pool(np.zeros(2))
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


@_kernel(_JIT)
def _start_pool(x):  # pragma: no cover - compiled
    for i in prange(len(x)):
        x[i] = i


@_kernel(_JIT)
def gather_rows(P, tok, inv, tab_in, sh_in, tab_u, sh_u, relu, post, direct):  # pragma: no cover - compiled
    """post[i] = the sum of P-weighted rows of tab_in/sh_in, through a ReLU if `relu` (otherwise
    the pre-activation, for the caller's activation); direct[i] likewise from tab_u/sh_u, never
    clipped.

    P [n, K+1, H] attention of the final position (entry K is itself); tok [n, K]; inv [n].
    The examples come sorted by token (tabulated.Layout), so neighbours share table rows in cache.
    """
    n, K = tok.shape
    H = P.shape[2]
    for i in prange(n):
        q = inv[i]
        if K == 2 and H == 4:
            _weighted_rows_k2h4(P[i], tok[i], sh_in[q], tab_in, post[i])
            _weighted_rows_k2h4(P[i], tok[i], sh_u[q], tab_u, direct[i])
        else:
            _weighted_rows(P[i], tok[i], sh_in[q], tab_in, post[i])
            _weighted_rows(P[i], tok[i], sh_u[q], tab_u, direct[i])
        if relu:
            out = post[i]
            for j in range(len(out)):
                out[j] = max(out[j], 0.0)


@njit(inline="always", **_JIT_SERIAL)
def _weighted_rows(p, t, sh, tab, out):  # pragma: no cover - compiled
    """out = sh[H] + sum_h p[K, h] sh[h] + sum_{k, h} p[k, h] tab[h, k, t[k]], four rows a pass."""
    K, H = len(t), p.shape[1]
    out[:] = sh[H]
    h = 0
    while h + 4 <= H:
        _axpy4(p[K, h], p[K, h + 1], p[K, h + 2], p[K, h + 3], sh[h], sh[h + 1], sh[h + 2], sh[h + 3], out)
        h += 4
    for hr in range(h, H):
        _axpy(p[K, hr], sh[hr], out)
    for k in range(K):
        v = t[k]
        h = 0
        while h + 4 <= H:
            _axpy4(p[k, h], p[k, h + 1], p[k, h + 2], p[k, h + 3],
                   tab[h, k, v], tab[h + 1, k, v], tab[h + 2, k, v], tab[h + 3, k, v], out)
            h += 4
        for hr in range(h, H):
            _axpy(p[k, hr], tab[hr, k, v], out)


@njit(inline="always", **_JIT_SERIAL)
def _weighted_rows_k2h4(p, t, sh, tab, out):  # pragma: no cover - compiled
    """_weighted_rows for the mainline's K = 2, H = 4, in one pass over out instead of three.

    Kept beside the general loop because it is the mainline's speed: timed alone on the
    mainline step's blocks (1 thread), gather_rows took 2.1-2.7 ms a step with it against
    3.2-3.4 ms without. The terms are written in _weighted_rows' order: on those blocks the two
    gave the same bits."""
    a0, a1, a2, a3 = tab[0, 0, t[0]], tab[1, 0, t[0]], tab[2, 0, t[0]], tab[3, 0, t[0]]
    b0, b1, b2, b3 = tab[0, 1, t[1]], tab[1, 1, t[1]], tab[2, 1, t[1]], tab[3, 1, t[1]]
    s0, s1, s2, s3, own = sh[0], sh[1], sh[2], sh[3], sh[4]
    ws0, ws1, ws2, ws3 = p[2, 0], p[2, 1], p[2, 2], p[2, 3]
    wa0, wa1, wa2, wa3 = p[0, 0], p[0, 1], p[0, 2], p[0, 3]
    wb0, wb1, wb2, wb3 = p[1, 0], p[1, 1], p[1, 2], p[1, 3]
    for j in range(len(out)):
        out[j] = (own[j] + ((ws0 * s0[j] + ws1 * s1[j]) + (ws2 * s2[j] + ws3 * s3[j]))
                  + ((wa0 * a0[j] + wa1 * a1[j]) + (wa2 * a2[j] + wa3 * a3[j]))
                  + ((wb0 * b0[j] + wb1 * b1[j]) + (wb2 * b2[j] + wb3 * b3[j])))


@njit(inline="always", **_JIT_SERIAL)
def _axpy(w, x, y):  # pragma: no cover - compiled
    for j in range(len(y)):
        y[j] += w * x[j]


@njit(inline="always", **_JIT_SERIAL)
def _add(x, y):  # pragma: no cover - compiled
    for j in range(len(y)):
        y[j] += x[j]


@njit(inline="always", **_JIT_SERIAL)
def _add4(x0, x1, x2, x3, y):  # pragma: no cover - compiled
    for j in range(len(y)):
        y[j] += (x0[j] + x1[j]) + (x2[j] + x3[j])


@njit(inline="always", **_JIT_SERIAL)
def _axpy4(w0, w1, w2, w3, x0, x1, x2, x3, y):  # pragma: no cover - compiled
    """y += w0 x0 + ... + w3 x3 in one pass over y."""
    for j in range(len(y)):
        y[j] += (w0 * x0[j] + w1 * x1[j]) + (w2 * x2[j] + w3 * x3[j])


@njit(inline="always", **_JIT_SERIAL)
def _dot(x, y, acc):  # pragma: no cover - compiled
    """acc + x . y, accumulated in acc's type."""
    for j in range(len(x)):
        acc += x[j] * y[j]
    return acc


@njit(inline="always", **_JIT_LOSS)
def _row_max(row):  # pragma: no cover - compiled
    """(the row's maximum, whether it holds a NaN). In the row's dtype (exact), as a select and a
    separate NaN flag, which vectorise, where one NaN-aware compare-and-branch did not (1.7x
    faster a block)."""
    top, nan = row[0], False
    for j in range(len(row)):
        x = row[j]
        top = x if x > top else top
        nan |= x != x
    return top, nan


@njit(inline="always", **_JIT_LOSS)
def _first_max(row, m):  # pragma: no cover - compiled
    """torch.argmax's choice: the first j with row[j] == m, or the first NaN (m is NaN if the row
    has one)."""
    first = 0
    while first < len(row) - 1:
        x = row[first]
        if x == m or x != x:
            break
        first += 1
    return first


# Cephes' expf: exp(x) = 2^k p(r), x = k ln 2 + r, |r| <= ln2 / 2, p a degree-7 minimax polynomial
# (within about 1 ulp of the true value). Written out so that it vectorises: numba's math.exp is a
# scalar libm call, and no vector math library is available to it here.
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)
_EXP_P = tuple(np.float32(v) for v in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                                       1.6666665459e-1, 5.0000001201e-1))
_EXP_MIN = np.float32(-87.33654)  # exp below this is not a normal float32: it is stored as 0


@_kernel(_JIT_LOSS)
def cross_entropy_rows(logits, direct, labels, tiny, n_batch, g, losses, correct):  # pragma: no cover - compiled
    """The float32 loss of logits + direct, one row at a time: into losses [n] the float64
    cross-entropy, into correct [n] whether the label is the first of the row's maxima
    (torch.argmax's choice, the first NaN if there is one), and into g [n, c] the gradient of the
    mean loss of a batch of n_batch examples (this may be one block of it).

    exp(logits - max) is computed in float32, by a vectorised expf (above), and summed in float64:
    a float32 exp is exact to float32 rounding per term, as the logits themselves are, and the
    float64 sum keeps the loss's precision after grokking (a loss of 1e-9 is the sum of the wrong
    classes' terms, not 1 minus the right one's). A row with a NaN or an infinite maximum gets a
    NaN loss and gradient. g = (softmax - onehot) / n_batch is stored with entries below `tiny`
    set to zero: subnormals carry no signal and slow every later product that touches them.
    `logits` is scratch (its rows end as the exponentials), and row i of g holds 2^k while the row
    is worked on: no other buffer is needed, and each row stays in L1.
    One pass does what would otherwise take three (shift by the maximum, exp, finish), each a
    pass over [n, c] with its own thread fork: 0.76 ms for the mainline step's four blocks,
    against 1.3-1.6 ms for the three.
    """
    n, c = logits.shape
    inv_n = 1.0 / n_batch
    p0, p1, p2, p3, p4, p5 = _EXP_P
    for i in prange(n):
        row, d, gi = logits[i], direct[i], g[i]
        for j in range(c):
            row[j] += d[j]
        top, nan = _row_max(row)
        y = labels[i]
        correct[i] = _first_max(row, np.nan if nan else top) == y
        t = np.float64(top)
        if nan or not math.isfinite(t):
            losses[i] = np.nan
            for j in range(c):
                gi[j] = np.nan
            continue
        label_logit = np.float64(row[y])
        bits = gi.view(np.int32)
        for j in range(c):
            x = np.float32(np.float64(row[j]) - t)  # as torch would round logits - max
            xc = max(x, _EXP_MIN)
            k = math.floor(xc * _LOG2E + np.float32(0.5))
            r = (xc - k * _LN2_HI) - k * _LN2_LO
            p = (((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5) * (r * r) + r + np.float32(1.0)
            row[j] = p if x >= _EXP_MIN else np.float32(0.0)
            bits[j] = (np.int32(k) + np.int32(127)) << np.int32(23)  # the float32 2^k
        s = 0.0
        for j in range(c):
            e = row[j] * gi[j]
            row[j] = e
            s += np.float64(e)
        losses[i] = t + math.log(s) - label_logit
        scale = inv_n / s
        for j in range(c):
            v = np.float64(row[j]) * scale
            if j == y:
                v -= inv_n
            gi[j] = 0.0 if abs(v) < tiny else v


@_kernel(_JIT)
def backward_rows(d_post, post, g, P, tok, inv, tab_in, sh_in, tab_u, sh_u, relu, d_s):  # pragma: no cover
    """If `relu`, the ReLU's backward in place (d_post becomes d_pre; otherwise d_post is d_pre
    already, from the caller's activation), then the attention scores' gradient d_s.

    d_s [n, K+1, H]: softmax backward of dL/dP[i, k, h] = d_pre[i] . row_in + g[i] . row_u,
    with the dot products accumulated in the tables' dtype, as a plain model's GEMMs would.
    (One row per dot: four rows a pass, as in gather_rows, is 1.2x slower here. The shared rows'
    sums stay in their own pass (shared_sums): done here, per chunk, they would save only 0.3 ms of
    a 29 ms step for the bookkeeping they add.)
    """
    n, K = tok.shape
    H = P.shape[2]
    for i in prange(n):
        q = inv[i]
        d_pre, gi, out = d_post[i], g[i], post[i]
        if relu:
            for j in range(len(d_pre)):
                if out[j] <= 0.0:
                    d_pre[j] = 0.0
        d_p = np.zeros((K + 1, H), dtype=P.dtype)
        for h in range(H):
            d_p[K, h] = _dot(gi, sh_u[q, h], _dot(d_pre, sh_in[q, h], d_p[K, h]))
        for k in range(K):
            t = tok[i, k]
            for h in range(H):
                d_p[k, h] = _dot(gi, tab_u[h, k, t], _dot(d_pre, tab_in[h, k, t], d_p[k, h]))
        for h in range(H):
            dot = d_p[0, 0] * 0.0
            for k in range(K + 1):
                dot += P[i, k, h] * d_p[k, h]
            for k in range(K + 1):
                d_s[i, k, h] = P[i, k, h] * (d_p[k, h] - dot)


@_kernel(_JIT)
def scatter_rows(d_pre, g, P, d_s, inv, t_start, t_examples, K, d_tab_in, d_tab_u, d_scores):  # pragma: no cover
    """Gradients of the per-token rows and scores: a sum over the examples that read each row.

    t_start [K*V + 1] / t_examples: the examples with token v at key position k, for row k*V + v,
    in ascending order. d_tab_* [H, K, V, f]; d_scores [u, K, H, V].
    """
    n_kv = len(t_start) - 1
    V = n_kv // K
    H = P.shape[2]
    for r in prange(n_kv):
        k, v = r // V, r % V
        first, end = t_start[r], t_start[r + 1]
        while first + 4 <= end:  # four examples per pass over each row (a load and store of it)
            i0, i1, i2, i3 = t_examples[first], t_examples[first + 1], t_examples[first + 2], t_examples[first + 3]
            w0, w1, w2, w3 = P[i0, k], P[i1, k], P[i2, k], P[i3, k]
            for h in range(H):
                _axpy4(w0[h], w1[h], w2[h], w3[h], d_pre[i0], d_pre[i1], d_pre[i2], d_pre[i3], d_tab_in[h, k, v])
                _axpy4(w0[h], w1[h], w2[h], w3[h], g[i0], g[i1], g[i2], g[i3], d_tab_u[h, k, v])
            first += 4
        for e in range(first, end):
            i = t_examples[e]
            w = P[i, k]
            for h in range(H):
                _axpy(w[h], d_pre[i], d_tab_in[h, k, v])
                _axpy(w[h], g[i], d_tab_u[h, k, v])
        for e in range(t_start[r], end):
            i = t_examples[e]
            for h in range(H):
                d_scores[inv[i], k, h, v] += d_s[i, k, h]


@_kernel(_JIT)
def shared_sums(d_pre, g, P, chunk_start, chunk_q, parts_in, parts_u, out_in, out_u):  # pragma: no cover
    """Gradients of the shared rows: out_in [u, H + 1, m] (float64) += for each query token the sum
    over its examples of P[i, K, h] d_pre[i] (row h < H, the head attending to the query itself)
    and of d_pre[i] (row H, the query's own residual); out_u [u, H + 1, c] likewise from g.

    Chunks of examples (chunk_start, each of one query token chunk_q) are summed in the operands'
    dtype into parts_* [n_chunks, H + 1, f], then the chunks in float64 in a fixed order: a float32
    sum of thousands of nearly cancelling terms loses digits, and a thin float64 GEMM is slow.
    """
    K, H = P.shape[1] - 1, P.shape[2]
    for ch in prange(len(chunk_start) - 1):
        a_in, a_u = parts_in[ch], parts_u[ch]
        a_in[:] = 0.0
        a_u[:] = 0.0
        f, end = chunk_start[ch], chunk_start[ch + 1]
        while f + 4 <= end:  # four examples per pass over each sum
            w0, w1, w2, w3 = P[f, K], P[f + 1, K], P[f + 2, K], P[f + 3, K]
            for h in range(H):
                _axpy4(w0[h], w1[h], w2[h], w3[h], d_pre[f], d_pre[f + 1], d_pre[f + 2], d_pre[f + 3], a_in[h])
                _axpy4(w0[h], w1[h], w2[h], w3[h], g[f], g[f + 1], g[f + 2], g[f + 3], a_u[h])
            _add4(d_pre[f], d_pre[f + 1], d_pre[f + 2], d_pre[f + 3], a_in[H])
            _add4(g[f], g[f + 1], g[f + 2], g[f + 3], a_u[H])
            f += 4
        for i in range(f, end):
            p = P[i, K]
            for h in range(H):
                _axpy(p[h], d_pre[i], a_in[h])
                _axpy(p[h], g[i], a_u[h])
            _add(d_pre[i], a_in[H])
            _add(g[i], a_u[H])
    for r in prange(H + 1):
        for ch in range(len(chunk_q)):
            q = chunk_q[ch]
            for j in range(out_in.shape[2]):
                out_in[q, r, j] += parts_in[ch, r, j]
            for j in range(out_u.shape[2]):
                out_u[q, r, j] += parts_u[ch, r, j]
