"""Fused per-example loops of the tabulated step (models/tabulated.py), compiled with numba.

Each loop makes one pass over its [n, d_mlp] operand where torch would make several (gather,
add, ReLU; mask, gather-dot, softmax backward; a float64 loss in ten elementwise passes), which
matters because every such pass streams megabytes through the cache. The matrix products stay in
torch (MKL). Every loop writes disjoint outputs per parallel iteration and sums in a fixed order,
so results do not depend on the thread count.

Shapes: n examples, K key positions, H heads, V tokens, u query tokens, m = d_mlp, c = d_vocab.
Tables are row-major `tab [K, H, V, f]` and
`shared [u, H + 1, f]` (head h attending to the query itself, then the query's own residual).
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np
from numba import njit, prange

# numba's OpenMP layer. It is a second OpenMP runtime beside torch's (numba's omppool links the
# system libgomp.so.1.0.0, which the loader does not match to torch's bundled libgomp.so.1), but
# its workers spin briefly and then yield: with numba's own `workqueue` pool the workers of the
# two pools fought over the 2 cores and a step took 31 ms instead of 21 (and 31 against 22 when
# remeasured). Pointing numba at torch's runtime (LD_LIBRARY_PATH) changed the step by less than
# this machine's noise, so no such trick is played.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "omp"

_JIT = {"parallel": True, "fastmath": True, "cache": True, "nogil": True}
_JIT_SERIAL = {"fastmath": True, "cache": True, "nogil": True}


def set_threads(n: int) -> None:
    """Use n threads in the kernels (torch's own count is set apart: the runtimes are separate)."""
    try:  # start numba's OpenMP layer, or learn that it cannot load
        _start_pool(np.zeros(2))
    except Exception:  # numba found no OpenMP runtime it can use: its own pool still works
        numba.config.THREADING_LAYER = "workqueue"
        _start_pool(np.zeros(2))
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


@njit(**_JIT)
def _start_pool(x):  # pragma: no cover - compiled
    for i in prange(len(x)):
        x[i] = i


@njit(**_JIT)
def gather_relu(order, P, tok, inv, tab_in, sh_in, tab_u, sh_u, post, direct):  # pragma: no cover - compiled
    """post[i] = relu(sum of P-weighted rows of tab_in/sh_in); direct[i] likewise from tab_u/sh_u.

    P [n, K+1, H] attention of the final position (entry K is itself); tok [n, K]; inv [n].
    Examples are visited in `order` (sorted by token), so neighbours share table rows in cache.
    """
    n, K = tok.shape
    H = P.shape[2]
    for idx in prange(n):
        i = order[idx]
        q = inv[i]
        out, out_u = post[i], direct[i]
        out[:] = sh_in[q, H]
        out_u[:] = sh_u[q, H]
        for h in range(H):
            _axpy(P[i, K, h], sh_in[q, h], out)
            _axpy(P[i, K, h], sh_u[q, h], out_u)
        for k in range(K):
            t = tok[i, k]
            for h in range(H):
                _axpy(P[i, k, h], tab_in[k, h, t], out)
                _axpy(P[i, k, h], tab_u[k, h, t], out_u)
        for j in range(len(out)):
            out[j] = max(out[j], 0.0)


@njit(inline="always", **_JIT_SERIAL)
def _axpy(w, x, y):  # pragma: no cover - compiled
    for j in range(len(y)):
        y[j] += w * x[j]


@njit(inline="always", **_JIT_SERIAL)
def _dot(x, y, acc):  # pragma: no cover - compiled
    """acc + x . y, accumulated in acc's type."""
    for j in range(len(x)):
        acc += x[j] * y[j]
    return acc


@njit(**_JIT)
def cross_entropy_finish(e, logits, mx, labels, tiny, g, losses):  # pragma: no cover - compiled
    """Per-example float64 cross-entropy into losses [n] and the gradient of their mean into g.

    e [n, c] float64 = exp(logits - mx) (torch's vectorised exp); mx [n, 1] the row maxima.
    g = (softmax - onehot) / n is stored in g's dtype with entries below `tiny` (the smallest
    normal float32, or 0) set to zero: subnormals carry no signal and slow every later product
    that touches them.
    """
    n, c = e.shape
    inv_n = 1.0 / n
    for i in prange(n):
        s = 0.0
        for j in range(c):
            s += e[i, j]
        y = labels[i]
        losses[i] = mx[i, 0] + math.log(s) - np.float64(logits[i, y])
        scale = inv_n / s
        for j in range(c):
            v = e[i, j] * scale
            if j == y:
                v -= inv_n
            g[i, j] = v if abs(v) >= tiny else 0.0


@njit(**_JIT)
def backward_rows(d_post, post, g, order, P, tok, inv, tab_in, sh_in, tab_u, sh_u, d_s):  # pragma: no cover
    """ReLU backward in place (d_post becomes d_pre), then the attention scores' gradient d_s.

    d_s [n, K+1, H]: softmax backward of dL/dP[i, k, h] = d_pre[i] . row_in + g[i] . row_u,
    with the dot products accumulated in the tables' dtype, as a plain model's GEMMs would.
    """
    n, K = tok.shape
    H = P.shape[2]
    for idx in prange(n):
        i = order[idx]
        q = inv[i]
        d_pre, gi, out = d_post[i], g[i], post[i]
        for j in range(len(d_pre)):
            if out[j] <= 0.0:
                d_pre[j] = 0.0
        d_p = np.zeros((K + 1, H), dtype=P.dtype)
        for h in range(H):
            d_p[K, h] = _dot(gi, sh_u[q, h], _dot(d_pre, sh_in[q, h], d_p[K, h]))
        for k in range(K):
            t = tok[i, k]
            for h in range(H):
                d_p[k, h] = _dot(gi, tab_u[k, h, t], _dot(d_pre, tab_in[k, h, t], d_p[k, h]))
        for h in range(H):
            dot = d_p[0, 0] * 0.0
            for k in range(K + 1):
                dot += P[i, k, h] * d_p[k, h]
            for k in range(K + 1):
                d_s[i, k, h] = P[i, k, h] * (d_p[k, h] - dot)


@njit(**_JIT)
def scatter_rows(d_pre, g, P, d_s, inv, t_start, t_examples, K, d_tab_in, d_tab_u, d_scores):  # pragma: no cover
    """Gradients of the per-token rows and scores: a sum over the examples that read each row.

    t_start [K*V + 1] / t_examples: the examples with token v at key position k, for row k*V + v,
    in ascending order. d_tab_* [K, H, V, f]; d_scores [u, K, H, V].
    """
    n_kv = len(t_start) - 1
    V = n_kv // K
    H = P.shape[2]
    for r in prange(n_kv):
        k, v = r // V, r % V
        for e in range(t_start[r], t_start[r + 1]):
            i = t_examples[e]
            for h in range(H):
                _axpy(P[i, k, h], d_pre[i], d_tab_in[k, h, v])
                _axpy(P[i, k, h], g[i], d_tab_u[k, h, v])
                d_scores[inv[i], k, h, v] += d_s[i, k, h]
