"""The 1-layer model at its final position: per-(position, token) tables and a hand-written backward.

The loss reads only the final position. In a 1-layer model without normalisation everything that
depends on one (position, token) pair can be tabulated once per step from the parameters:
attention scores, and each head's output pushed through W_in and W_U (one row of d_mlp + d_vocab
numbers per (key position, head, token)). The query position's own rows (its residual and each
head's attention to it) are shared by every example with the same query token (all of them in
the mainline, where it is `=`). Per example what remains is

    pattern = softmax over positions of gathered scores            [n, pos, head]
    [pre | direct] = sum of pattern-weighted table rows            [n, d_mlp + d_vocab]
    logits = direct + act(pre) @ W_L,   W_L = W_out W_U            [n, d_vocab]

(W_L is held transposed, [d_vocab, d_mlp]: timed alone, its three products ran 5-10% faster so.)

The per-example loops run as fused numba kernels (models/kernels.py), one pass over each
[n, d_mlp] operand, and the loss's forward and backward run together in blocks of examples
(`_blocks`): the loss computes its own gradient anyway, and a block's operands are used while they
are still in cache. ReLU is applied and differentiated inside the kernels; GELU and SiLU by torch
between the same kernels. Which table rows each example reads depends only on the tokens: it is a
`Layout`, built once per token batch (`make_layout`) and held by whoever reuses the batch (the
trainer builds its train and test sets' layouts when it sets up the data).

`build_tables` makes the tables from the parameters (small tensors: thousands of rows, not
examples), with its backward written out too. `TabulatedLoss` runs the per-example part
(gather, softmax, MLP, unembedding, float64 cross-entropy) forward and backward by hand, so no
activation is materialised twice and nothing per example goes through autograd. What remains
costly is what the loss needs: the three [n, d_mlp] x [d_mlp, d_vocab] products of
`act(pre) @ W_L` and its two gradients. `loss_and_accuracy` is the same forward for evaluation
(no graph, no float64 copy of the logits). None of this builds an autograd graph per example:
a caller that needs one uses the plain forward (Transformer.forward_last does).

Accuracy: sums over all examples (gradients of the shared rows and of the query's self-score)
are accumulated in float64: a float32 sum of thousands of nearly cancelling terms lost three
digits. The float64 loss's gradient is cast back to float32 with subnormals zeroed (see
models/loss.py). The derivation of every step is docs/fast-step.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from grokscope.models import kernels
from grokscope.models.loss import FLOAT32_TINY, per_example_and_gradient


@dataclass
class Tables:
    """Everything per (position, token) the final position reads; shapes for u query tokens,
    K = n_ctx - 1 key positions, H heads, V tokens, m = d_mlp, c = d_vocab_out.

    Row (h * K + k) * V + v of `tab_in` / `tab_u` is head h's output for token v at key position
    k, through W_in / W_U. Row q * (H + 1) + h of `shared_in` / `shared_u` is head h's output for
    query token q attending to itself; row q * (H + 1) + H is the query's own residual (with b_in
    / b_out).
    """

    scores: Tensor  # [u, K, H, V] query token u's attention score to token v at key position k
    self_scores: Tensor  # [u, H] its score to itself
    tab_in: Tensor  # [H*K*V, m], rows (h, k, v)
    tab_u: Tensor  # [H*K*V, c]
    shared_in: Tensor  # [u*(H+1), m]
    shared_u: Tensor  # [u*(H+1), c]
    W_LT: Tensor  # [c, m] the neuron-logit map W_out W_U, transposed

    def as_tuple(self) -> tuple[Tensor, ...]:
        return (self.scores, self.self_scores, self.tab_in, self.tab_u, self.shared_in, self.shared_u, self.W_LT)


CHUNK = 64  # examples summed in float32 before the float64 sum of the shared rows' gradients


@dataclass
class Layout:
    """The sparsity of one token batch: which table rows each example reads. It describes the
    tokens it was built from (`make_layout`); a batch whose tokens change needs a new one.

    Everything here, and every per-example tensor of the tabulated step, is in sorted order:
    example s is the batch's example perm[s], and the examples are sorted by their query token,
    then by their key tokens.
    Neighbours then read the same table rows and the kernels walk every [n, f] operand front to
    back: timed alone, the loops ran 1.3-1.6x faster than visiting, in sorted order, examples
    left where they lay.
    """

    n: int
    n_key: int  # K
    n_heads: int
    d_vocab: int
    uniq: Tensor  # [u] distinct query tokens
    inv: Tensor  # [n] each example's query token, as an index into uniq
    tok: Tensor  # [n, K] the key tokens
    perm: Tensor  # [n] sorted position -> the batch's example
    query: Tensor  # [n, u] one-hot of the query token
    score_idx: Tensor  # [n, K, H] flat index into Tables.scores
    kv_start: Tensor  # [K*V + 1] examples with token v at key position k: kv_examples[kv_start[k*V + v]:...]
    kv_examples: Tensor  # [n * K], ascending within each (k, v)
    chunk_start: Tensor  # [n_chunks + 1] runs of at most CHUNK examples with one query token


def make_layout(tokens: Tensor, n_heads: int, d_vocab: int) -> Layout:
    """The gather pattern of tokens [n, pos] (the last position is the query)."""
    n, n_pos = tokens.shape
    K, H, V = n_pos - 1, n_heads, d_vocab
    sort_key = torch.zeros(n, dtype=torch.int64)
    for k in range(K):  # (wraps for long contexts: the order then only helps less)
        sort_key = sort_key * V + tokens[:, k]
    perm = torch.argsort(sort_key, stable=True)
    perm = perm[torch.argsort(tokens[perm, K], stable=True)]  # the query token first, whatever K
    tokens = tokens[perm]
    uniq, inv = torch.unique(tokens[:, K], return_inverse=True)
    tok = tokens[:, :K].contiguous()
    heads = torch.arange(H)
    score_idx = ((inv[:, None, None] * K + torch.arange(K)[None, :, None]) * H + heads) * V + tok[:, :, None]
    kv = (torch.arange(K) * V + tok).reshape(-1)  # [n * K]
    examples = torch.arange(n).repeat_interleave(K)
    kv_order = torch.argsort(kv * n + examples)
    kv_start = torch.zeros(K * V + 1, dtype=torch.int64)
    kv_start[1:] = torch.bincount(kv, minlength=K * V).cumsum(0)
    # chunks for the shared rows' sums: cut every CHUNK examples and where the query token changes
    cuts = torch.cat([torch.arange(0, n, CHUNK), torch.nonzero(inv[1:] != inv[:-1]).flatten() + 1])
    chunk_start = torch.cat([torch.unique(cuts), torch.tensor([n])])
    return Layout(n=n, n_key=K, n_heads=H, d_vocab=V, uniq=uniq, inv=inv, tok=tok, perm=perm,
                  query=F.one_hot(inv, len(uniq)), score_idx=score_idx, kv_start=kv_start,
                  kv_examples=examples[kv_order], chunk_start=chunk_start)


def build_tables(model, uniq: Tensor, n_key: int) -> Tables:
    """Tables from the parameters of a tabulable Transformer (differentiable: see _TablesFn)."""
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    params = (model.embed.W_E, model.pos_embed.W_pos, attn.W_Q, attn.W_K, attn.W_V, attn.W_O, mlp.W_in, mlp.b_in,
              mlp.W_out, mlp.b_out, model.unembed.W_U)
    return Tables(*_TablesFn.apply(uniq, n_key, attn.scale, *params))


class _TablesFn(torch.autograd.Function):
    """Parameters -> the seven tables, with the backward written out.

    The products are broadcast matmuls over contiguous [H, K*V, .] blocks (einsum's permuted
    operands made them ~2x slower); autograd's own backward of the same graph spent as long
    again on views, permutes and gradient accumulation as on the products.
    """

    @staticmethod
    def forward(ctx, uniq, K, scale, W_E, W_pos, W_Q, W_K, W_V, W_O, W_in, b_in, W_out, b_out, W_U):  # type: ignore[override]
        V, d = W_E.shape
        resid = (W_E[None] + W_pos[:K, None]).reshape(K * V, d)  # [K*V, d] rows (k, v)
        x_q = W_E[uniq] + W_pos[K]  # [u, d]
        q = (x_q @ W_Q) * scale  # [H, u, e]
        keys, q_keys = resid @ W_K, x_q @ W_K  # [H, K*V, e], [H, u, e]
        values, q_values = resid @ W_V, x_q @ W_V
        # Each head's output through W_O and then W_in or W_U, as one d_head x f map per head:
        # contracting d_head first costs ~4x fewer FLOPs than d_model-wide head outputs. Batched
        # over heads only ([H, K*V, e] blocks): batching over (k, h) too made the products 2.5x slower.
        R_in, R_u = W_O @ W_in, W_O @ W_U  # [H, e, m], [H, e, c]
        own_u = x_q + b_out

        def rows(R: Tensor, own: Tensor) -> tuple[Tensor, Tensor]:
            tab = (values @ R).reshape(-1, R.shape[-1])  # rows (h, k, v)
            shared = torch.cat([(q_values @ R).transpose(0, 1), own[:, None]], dim=1)  # [u, H + 1, f]
            return tab, shared.reshape(-1, R.shape[-1])

        tab_in, shared_in = rows(R_in, x_q @ W_in + b_in)
        tab_u, shared_u = rows(R_u, own_u @ W_U)
        H, u = q.shape[0], q.shape[1]
        scores = (keys @ q.transpose(1, 2)).view(H, K, V, u).permute(3, 1, 0, 2).contiguous()  # [u, K, H, V]
        self_scores = (q * q_keys).sum(-1).T.contiguous()  # [u, H]
        ctx.save_for_backward(uniq, resid, x_q, q, keys, q_keys, values, q_values, R_in, R_u, own_u,
                              W_pos, W_Q, W_K, W_V, W_O, W_in, W_out, W_U)
        ctx.K, ctx.scale = K, scale
        return scores, self_scores, tab_in, tab_u, shared_in, shared_u, W_U.T @ W_out.T

    @staticmethod
    def backward(ctx, d_scores, d_self, d_tab_in, d_tab_u, d_sh_in, d_sh_u, d_W_LT):  # type: ignore[override]
        (uniq, resid, x_q, q, keys, q_keys, values, q_values, R_in, R_u, own_u,
         W_pos, W_Q, W_K, W_V, W_O, W_in, W_out, W_U) = ctx.saved_tensors
        K, scale = ctx.K, ctx.scale
        H, u, e = q.shape
        KV, d = resid.shape
        d_W_L = d_W_LT.T
        m, c = W_in.shape[1], W_U.shape[1]
        d_tab_in, d_tab_u = d_tab_in.reshape(H, KV, m), d_tab_u.reshape(H, KV, c)
        d_sh_in, d_sh_u = d_sh_in.reshape(u, H + 1, m), d_sh_u.reshape(u, H + 1, c)
        d_heads_in, d_own_in = d_sh_in[:, :H].transpose(0, 1), d_sh_in[:, H]  # [H, u, m], [u, m]
        d_heads_u, d_own_u = d_sh_u[:, :H].transpose(0, 1), d_sh_u[:, H]
        # readouts, head values
        vT, qvT = values.transpose(-1, -2), q_values.transpose(-1, -2)
        d_R_in = vT @ d_tab_in + qvT @ d_heads_in  # [H, e, m]
        d_R_u = vT @ d_tab_u + qvT @ d_heads_u
        d_values = d_tab_in @ R_in.transpose(-1, -2) + d_tab_u @ R_u.transpose(-1, -2)  # [H, K*V, e]
        d_q_values = d_heads_in @ R_in.transpose(-1, -2) + d_heads_u @ R_u.transpose(-1, -2)  # [H, u, e]
        # attention scores
        d_s = d_scores.permute(2, 1, 3, 0).reshape(H, KV, u)  # [H, K*V, u]
        d_keys = d_s @ q  # [H, K*V, e]
        d_self_hu = d_self.T[..., None]  # [H, u, 1]
        d_q = d_s.transpose(-1, -2) @ keys + d_self_hu * q_keys  # [H, u, e]
        d_q_keys = d_self_hu * q
        # weights
        W_O2 = W_O.reshape(H * e, d)
        d_W_O = d_R_in @ W_in.T + d_R_u @ W_U.T
        d_W_in = W_O2.T @ d_R_in.reshape(H * e, m) + x_q.T @ d_own_in
        d_W_U = W_O2.T @ d_R_u.reshape(H * e, c) + own_u.T @ d_own_u + W_out.T @ d_W_L
        d_own_x = d_own_u @ W_U.T  # [u, d]: the gradient of x_q + b_out
        d_W_Q = scale * (x_q.T @ d_q)
        d_W_K = x_q.T @ d_q_keys + resid.T @ d_keys
        d_W_V = x_q.T @ d_q_values + resid.T @ d_values
        d_x_q = ((scale * d_q) @ W_Q.transpose(-1, -2) + d_q_keys @ W_K.transpose(-1, -2)
                 + d_q_values @ W_V.transpose(-1, -2)).sum(0) + d_own_in @ W_in.T + d_own_x
        d_resid = (d_keys @ W_K.transpose(-1, -2) + d_values @ W_V.transpose(-1, -2)).sum(0).view(K, -1, d)  # [K, V, d]
        d_W_E = d_resid.sum(0).index_add_(0, uniq, d_x_q)
        d_W_pos = torch.zeros_like(W_pos)
        d_W_pos[:K] = d_resid.sum(1)
        d_W_pos[K] = d_x_q.sum(0)
        return (None, None, None, d_W_E, d_W_pos, d_W_Q, d_W_K, d_W_V, d_W_O, d_W_in, d_own_in.sum(0), d_W_L @ W_U.T,
                d_own_x.sum(0), d_W_U)


def _pattern(layout: Layout, scores: Tensor, self_scores: Tensor) -> Tensor:
    """Attention pattern of the final position: [n, K + 1, H] (the last entry is itself)."""
    s = torch.cat([scores.reshape(-1)[layout.score_idx], self_scores[layout.inv][:, None]], dim=1)
    return s.softmax(dim=1)


def _np(x: Tensor):
    return x.detach().numpy()


def _kernel_args(layout: Layout, t: Tables, pattern: Tensor) -> tuple:
    K, V, H, u = layout.n_key, layout.d_vocab, layout.n_heads, len(layout.uniq)
    return (_np(pattern), _np(layout.tok), _np(layout.inv), _np(t.tab_in).reshape(H, K, V, -1),
            _np(t.shared_in).reshape(u, H + 1, -1), _np(t.tab_u).reshape(H, K, V, -1),
            _np(t.shared_u).reshape(u, H + 1, -1))


# The activations the tabulated step applies in torch, between the kernels (ReLU is the kernels' own).
_ACT = {"gelu": F.gelu, "silu": F.silu}
_ACT_BACKWARD = {"gelu": torch.ops.aten.gelu_backward, "silu": torch.ops.aten.silu_backward}


def _gather(args: tuple, act: str, post: Tensor, direct: Tensor) -> tuple[Tensor | None, Tensor]:
    """Fill post with act(pre) and direct with the direct logits (kernels.gather_rows; args as
    _kernel_args gives them, for these rows). Returns (pre, post): pre is None for ReLU, whose
    kernel applies it in place; otherwise post is a new tensor and pre the filled buffer."""
    relu = act == "relu"
    kernels.gather_rows(*args, relu, _np(post), _np(direct))
    return (None, post) if relu else (post, _ACT[act](post))


@torch.no_grad()
def logits(layout: Layout, tables: Tables, act: str, keep: Tensor | None = None) -> Tensor:
    """Final-position logits [n, c] in the batch's order, without a graph; `keep` is an MLP
    dropout multiplier [n, d_mlp] (or None)."""
    pattern = _pattern(layout, tables.scores, tables.self_scores)
    n, m, c = layout.n, tables.tab_in.shape[1], tables.tab_u.shape[1]
    post, direct = pattern.new_empty(n, m), pattern.new_empty(n, c)
    _, post = _gather(_kernel_args(layout, tables, pattern), act, post, direct)
    keep = _sorted(layout, keep)
    if keep is not None:
        post = post * keep
    out = torch.empty_like(direct)
    out[layout.perm] = post @ tables.W_LT.T + direct
    return out


def _sorted(layout: Layout, x: Tensor | None) -> Tensor | None:
    """A per-example tensor of the batch in the layout's sorted order."""
    return None if x is None else x[layout.perm]


def _shared_grads(lay: Layout, pattern: Tensor, d_s: Tensor, d_pre: Tensor, g: Tensor) -> tuple[Tensor, ...]:
    """Gradients of what every example with the same query token reads, as float64 sums over its
    examples: its self-scores [u, H], and shared_in / shared_u [u*(H+1), f] (kernels.shared_sums)."""
    u, H1, starts, dtype = len(lay.uniq), lay.n_heads + 1, _np(lay.chunk_start), d_pre.dtype
    d_self = (lay.query.T.double() @ d_s[:, lay.n_key].double()).to(dtype)
    parts = [np.empty((len(starts) - 1, H1, x.shape[1]), _np(x).dtype) for x in (d_pre, g)]
    out = [torch.zeros(u, H1, x.shape[1], dtype=torch.float64) for x in (d_pre, g)]
    kernels.shared_sums(_np(d_pre), _np(g), _np(pattern), starts, _np(lay.inv)[starts[:-1]], *parts, *map(_np, out))
    return d_self, *(o.view(u * H1, -1).to(dtype) for o in out)


class TabulatedLoss(torch.autograd.Function):
    """Mean float64 cross-entropy of the final position, from the tables; backward by hand.

    forward(layout, labels, act, keep, *tables) -> float64 scalar; the gradients flow to the
    tables (and from there, through _TablesFn, to the parameters). They are computed with the
    loss (`_blocks`); backward only multiplies them by the incoming gradient when it is not 1 (a
    micro-batch's share in gradient accumulation, or a scaled loss).
    """

    @staticmethod
    def forward(ctx, layout: Layout, labels: Tensor, act: str, keep: Tensor | None,  # type: ignore[override]
                *tables: Tensor):
        labels, keep = _sorted(layout, labels), _sorted(layout, keep)
        loss, _, ctx.grads = _blocks(layout, Tables(*tables), labels, keep, act, any(ctx.needs_input_grad[4:]))
        return loss

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        scale = float(grad_out)
        grads = ctx.grads if scale == 1.0 else tuple(d * scale for d in ctx.grads)
        return None, None, None, None, *grads


BLOCK = 1024  # examples per block of the step: its [block, d_mlp] operands stay in cache


def _cross_entropy(lg: Tensor, direct: Tensor, labels: Tensor, n_batch: int, g: Tensor, losses: Tensor,
                   correct: Tensor) -> None:
    """The logits are lg + direct (lg is overwritten): per example into losses [b] the float64 loss,
    into correct [b] whether the label is the first maximum, and into g [b, c] the gradient of the
    mean loss of a batch of n_batch examples (this may be one block of it). Float32 takes the
    fused kernel (kernels.cross_entropy_rows); other dtypes (float64 in the tests) the same
    formulas in torch (models/loss.py)."""
    if lg.dtype == torch.float32:
        kernels.cross_entropy_rows(_np(lg), _np(direct), _np(labels), FLOAT32_TINY, n_batch, _np(g), _np(losses),
                                   _np(correct))
        return
    lg += direct
    for out, x in zip((losses, correct, g), per_example_and_gradient(lg, labels, n_batch), strict=True):
        out.copy_(x)


@torch.no_grad()
def loss_and_accuracy(layout: Layout, tables: Tables, labels: Tensor, act: str) -> tuple[float, float]:
    """Float64 mean loss and accuracy of the final position against labels [n] (evaluation: no
    dropout, no graph); the same numbers as loss_and_acc of `logits`, without the float64 copy of
    every logit."""
    loss, correct, _ = _blocks(layout, tables, _sorted(layout, labels), None, act, False)
    return float(loss), float(correct.double().mean())


def _blocks(lay: Layout, t: Tables, labels: Tensor, keep: Tensor | None, act: str, need_grad: bool):
    """The mean float64 loss, whether each example's label is its first maximum (in the layout's
    sorted order), and (if need_grad) the gradients of all seven tables, forward and backward
    together (the loss already computes g, its gradient), one block of examples at a time.

    Per block: gather the rows (post-activation), the neuron-logit product, the float64 loss and
    g, then at once the block's share of d_W_LT = g^T post, d_pre = act'(pre) (g W_L^T) and the
    scores' gradient, while the block's operands are still in cache. The post-activation is never
    held for the whole batch, which is also faster than a forward that saves post for a separate
    backward pass over it.
    """
    n, K, H, V = lay.n, lay.n_key, lay.n_heads, lay.d_vocab
    dtype, m, c = t.tab_in.dtype, t.tab_in.shape[1], t.tab_u.shape[1]
    pattern = _pattern(lay, t.scores, t.self_scores)
    P, tok, inv, *tabs = _kernel_args(lay, t, pattern)
    n_blocks, relu = -(-n // BLOCK), act == "relu"
    losses, correct = torch.empty(n, dtype=torch.float64), torch.empty(n, dtype=torch.bool)
    # g is needed whole for the backward; for the loss alone one block's worth is scratch
    g = torch.empty(n if need_grad else min(n, BLOCK), c, dtype=dtype)
    W_LT = t.W_LT.detach()
    if need_grad:
        d_pre, d_s = torch.empty(n, m, dtype=dtype), torch.empty_like(pattern)
        d_W_LT = torch.empty(n_blocks, c, m, dtype=dtype)

    def block(j: int) -> None:
        rows = slice(j * BLOCK, min(n, (j + 1) * BLOCK))
        b = rows.stop - rows.start
        post, direct, lg = torch.empty(b, m, dtype=dtype), torch.empty(b, c, dtype=dtype), torch.empty(b, c, dtype=dtype)
        pre, post = _gather((P[rows], tok[rows], inv[rows], *tabs), act, post, direct)
        if keep is not None:
            post.mul_(keep[rows])
        torch.mm(post, W_LT.T, out=lg)
        _cross_entropy(lg, direct, labels[rows], n, g[rows] if need_grad else g[:b], losses[rows], correct[rows])
        if not need_grad:
            return
        gb, db = g[rows], d_pre[rows]
        torch.mm(gb.T, post, out=d_W_LT[j])
        torch.mm(gb, W_LT, out=db)
        if keep is not None:
            db.mul_(keep[rows])
        if not relu:  # the kernel applies ReLU's backward itself
            db.copy_(_ACT_BACKWARD[act](db, pre))
        kernels.backward_rows(_np(db), _np(post), _np(gb), P[rows], tok[rows], inv[rows], *tabs, relu,
                              _np(d_s[rows]))

    for j in range(n_blocks):
        block(j)
    loss = losses.sum() / n
    if not need_grad:
        return loss, correct, None
    d_tab_in, d_tab_u = torch.zeros(H, K, V, m, dtype=dtype), torch.zeros(H, K, V, c, dtype=dtype)
    d_scores = torch.zeros(t.scores.shape, dtype=dtype)
    kernels.scatter_rows(_np(d_pre), _np(g), P, _np(d_s), inv, _np(lay.kv_start), _np(lay.kv_examples), K,
                         _np(d_tab_in), _np(d_tab_u), _np(d_scores))
    d_self, d_sh_in, d_sh_u = _shared_grads(lay, pattern, d_s, d_pre, g)
    return loss, correct, (d_scores, d_self, d_tab_in.view(-1, m), d_tab_u.view(-1, c), d_sh_in, d_sh_u,
                           _in_order(d_W_LT))


def _in_order(parts: Tensor) -> Tensor:
    """parts[0] + parts[1] + ... in that order (a reduction's order may follow the thread count)."""
    out = parts[0].clone()
    for p in parts[1:]:
        out += p
    return out


def tabulated_loss(tables: Tables, layout: Layout, labels: Tensor, act: str, keep: Tensor | None = None) -> Tensor:
    """Mean float64 cross-entropy at the final position; labels [n]."""
    return TabulatedLoss.apply(layout, labels, act, keep, *tables.as_tuple())
