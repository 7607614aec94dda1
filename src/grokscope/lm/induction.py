"""Induction heads and in-context learning: per-head scores (docs/measures.md, part 2; Olsson et al. 2022).

On a sequence made of two identical halves of s random tokens (positions 0..2s-1):
- prefix matching A[l, h]: mean attention from position s+i-1 to position i, i = 1..s-1 (from a
  token of the second half to the token that followed its earlier occurrence);
- copying EP[l, h] = sum(eig) / sum(|eig|) of the head's OV circuit W_E W_V W_O W_U (row-vector
  convention; in the paper's column convention W_U W_O W_V W_E). Its nonzero eigenvalues are
  those of the small d_head x d_head product W_O W_U W_E W_V, which is what is computed. The
  RMSNorm gains before the head (ln1.w) and before the unembedding (ln_final.w) are folded in;
  each token's RMS scaling is not (it depends on the input; the usual convention). EP = 1 when
  the circuit raises the logit of the token attended to, -1 when it lowers it, ~0 for a random
  circuit;
- induction: the induction score of Lv et al., the mean attention from each token of the second copy to
  the token after its earlier occurrence, i.e. Olsson et al.'s prefix matching A (kept under
  both names);
- induction_copying = A * EP: a head that attends like an induction head and also copies what it
  attends to (both of Olsson et al.'s criteria in one number);
- previous token: mean attention from position p to p-1 over the first half (random tokens, so
  no earlier occurrence competes).
The in-context-learning score is the late-token loss minus the early-token loss on held-out
text (Olsson et al.: the 500th minus the 50th token of 512), scaled to the context: negative when
later tokens, which see more context, are predicted better.
"""

from __future__ import annotations

import torch
from torch import Tensor


def repeated_tokens(vocab: int, s: int, n: int, gen: torch.Generator) -> Tensor:
    """[n, 2s]: s random tokens, then the same s again. Distinct within a half when s <= vocab."""
    if s <= vocab:
        first = torch.stack([torch.randperm(vocab, generator=gen)[:s] for _ in range(n)])
    else:
        first = torch.randint(0, vocab, (n, s), generator=gen)
    return torch.cat([first, first], dim=1)


def prefix_matching_score(pattern: Tensor, s: int) -> Tensor:
    """pattern [batch, head, 2s, 2s] -> [head]: mean attention from s+i-1 to i, i = 1..s-1."""
    i = torch.arange(1, s)
    return pattern[:, :, s + i - 1, i].mean(dim=(0, 2))


def previous_token_score(pattern: Tensor, s: int) -> Tensor:
    """pattern [batch, head, L, L] -> [head]: mean attention from p to p-1, p = 1..s-1."""
    p = torch.arange(1, s)
    return pattern[:, :, p, p - 1].mean(dim=(0, 2))


def eigen_positivity(m: Tensor) -> Tensor:
    """[..., e, e] -> [...]: sum of eigenvalues / sum of their absolute values (in [-1, 1])."""
    eig = torch.linalg.eigvals(m.double())
    return eig.sum(-1).real / eig.abs().sum(-1).clamp_min(1e-300)


def ov_small(W_E: Tensor, W_V: Tensor, W_O: Tensor, W_U: Tensor, ln_w: Tensor | None = None,
             ln_final_w: Tensor | None = None) -> Tensor:
    """[head, d_head, d_head]: W_O diag(ln_final_w) W_U W_E diag(ln_w) W_V for each head.

    W_E [vocab, d_model], W_V [head, d_model, d_head], W_O [head, d_head, d_model],
    W_U [d_model, vocab]. Same nonzero eigenvalues as the vocab x vocab OV circuit.
    """
    W_E, W_V, W_O, W_U = W_E.double(), W_V.double(), W_O.double(), W_U.double()
    if ln_w is not None:
        W_E = W_E * ln_w.double()
    if ln_final_w is not None:
        W_U = W_U * ln_final_w.double()[:, None]
    ue = W_U @ W_E  # [d_model, d_model]: the vocab dimension is contracted first
    return torch.einsum("hed,df,hfg->heg", W_O, ue, W_V)


def copying_scores(model, vocab: int | None = None) -> Tensor:
    """EP per layer and head of a `grokscope.lm.llama.Llama`: [layers, heads].

    vocab: the OV circuit over the first `vocab` token ids only (default all of them).
    """
    v = vocab or model.d_vocab
    with torch.no_grad():
        rows = []
        for block in model.blocks:
            m = ov_small(model.embed.W_E[:v], block.attn.W_V, block.attn.W_O, model.W_U[:, :v], block.ln1.w,
                         model.ln_final.w)
            rows.append(eigen_positivity(m.cpu()))  # eigvals of a tiny matrix: CPU is fine and always there
        return torch.stack(rows).float()


@torch.no_grad()
def head_scores(model, s: int, n_seq: int, seed: int, vocab: int | None = None) -> dict[str, Tensor]:
    """induction (= prefix_matching), prefix_matching, copying, induction_copying, previous_token:
    each [layers, heads].

    vocab: draw the repeated random tokens, and take the OV circuit, over the first `vocab` ids
    only (the tokenizer's, when the model has extra ids; default all of the model's).
    """
    s = min(s, model.n_ctx // 2)
    v = vocab or model.d_vocab
    tokens = repeated_tokens(v, s, n_seq, torch.Generator().manual_seed(seed)).to(model.embed.W_E.device)
    was_training = model.training
    model.eval()
    _, cache = model.run_with_cache(tokens)
    model.train(was_training)
    n_layers = len(model.blocks)
    pm = torch.stack([prefix_matching_score(cache["pattern", layer], s) for layer in range(n_layers)])
    prev = torch.stack([previous_token_score(cache["pattern", layer], s) for layer in range(n_layers)])
    ep = copying_scores(model, v)
    pm, prev = pm.cpu(), prev.cpu()
    return {"induction": pm, "prefix_matching": pm, "copying": ep, "induction_copying": pm * ep,
            "previous_token": prev}


def per_position_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean loss at each position: logits [n, L, V] against next tokens targets [n, L] -> [L] (float64)."""
    lg = logits.double()
    nll = lg.logsumexp(-1) - lg.gather(-1, targets[..., None]).squeeze(-1)
    return nll.mean(0)


def icl_score(pos_loss: Tensor) -> float:
    """Late minus early loss: positions about 500/512 and 50/512 of the context (+-2% windows)."""
    n = len(pos_loss)  # the context length the losses came from
    def window(frac: float) -> Tensor:
        c = round(frac * n)
        w = max(1, round(0.02 * n))
        return pos_loss[max(0, c - w):min(len(pos_loss), c + w + 1)]
    return float(window(500 / 512).mean() - window(50 / 512).mean())


def with_repeated_span(windows: Tensor, span: int) -> tuple[Tensor, Tensor, slice]:
    """(repeated, control, where): windows [n, L] with a late span that does or does not repeat.

    Both copies get the same late span (from L/8 in each window, written to end one token before
    the window does); in `repeated` its source is still there earlier in the window, in
    `control` the source is replaced by the same stretch of the next window. The late span's
    tokens, positions and nearby context are then identical in both, and only an earlier
    occurrence, i.e. copying from context, can make `repeated` easier. `where` are the late
    span's tokens after its first.
    """
    n, L = windows.shape
    span = min(span, L // 3)
    src, dst = L // 8, L - span - 1
    repeated = windows.clone()
    repeated[:, dst:dst + span] = windows[:, src:src + span]
    control = repeated.clone()
    control[:, src:src + span] = windows.roll(1, dims=0)[:, src:src + span]
    return repeated, control, slice(dst + 1, dst + span)


def repeat_gain(pos_loss_control: Tensor, pos_loss_repeated: Tensor, where: slice) -> float:
    """Loss on the late span without minus with an earlier occurrence (see `with_repeated_span`).

    Per-position losses are indexed by the predicting position (p predicts token p + 1), so the
    tokens at `where` are read at where.start-1 .. where.stop-2. ~0 before a model copies from
    context; up to the span's whole loss once it copies perfectly.
    """
    pred = slice(where.start - 1, where.stop - 1)
    return float(pos_loss_control[pred].mean() - pos_loss_repeated[pred].mean())
