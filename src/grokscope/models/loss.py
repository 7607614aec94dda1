"""Cross-entropy in float64, with a float32 gradient that has no subnormals.

Nanda et al. 2023 (Section 3, Appendix D.2): float32 log-softmax quantises the loss near zero and causes loss spikes (the
"slingshot"), so the loss is computed in float64. Once a run has grokked, ~15% of the gradient
entries cast back to float32 are subnormal, and every later matmul touching them ran 2.6x slower
on the CPUs we measured; they carry no signal at float32 precision, so they are zeroed at the cast.

The one home of the loss and accuracy numerics of the grokking family: the training loss of the
plain forward (`cross_entropy64`), evaluation (`loss_and_acc`, `per_position`, both from
`per_example`), and the per-example loss and gradient the tabulated step uses for a model that is
not float32 (`per_example_and_gradient`; a float32 model's is the fused kernel
`kernels.cross_entropy_rows`, to the same formulas). `models/reference.py` keeps its own
notebook-style loss on purpose: it is the independent yardstick the tests compare against.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

FLOAT32_TINY = torch.finfo(torch.float32).tiny  # 1.1755e-38, the smallest normal float32


class Float64CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor) -> Tensor:  # type: ignore[override]
        logp = log_softmax64(logits)
        ctx.save_for_backward(logp, labels)
        ctx.out_dtype = logits.dtype
        return -logp.gather(-1, labels[..., None]).mean()

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        logp, labels = ctx.saved_tensors
        grad = softmax_minus_onehot(logp, labels)
        return cast_gradient(grad * (grad_out / labels.numel()), ctx.out_dtype), None


def log_softmax64(logits: Tensor) -> Tensor:
    """The float64 log-softmax of logits [..., classes]."""
    lg = logits.double()
    return lg - lg.logsumexp(dim=-1, keepdim=True)


def softmax_minus_onehot(logp: Tensor, labels: Tensor) -> Tensor:
    """softmax - onehot(labels) from a log-softmax: each example's gradient of its own loss."""
    grad = logp.exp()
    grad.scatter_add_(-1, labels[..., None], torch.full_like(grad[..., :1], -1.0))
    return grad


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
def per_example(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Each example's float64 cross-entropy, and whether its label is the row's argmax (the first
    maximum, or the first NaN, as torch.argmax picks): logits [..., classes], labels [...]."""
    lg = logits.double()
    loss = lg.logsumexp(-1) - lg.gather(-1, labels[..., None]).squeeze(-1)
    return loss, logits.argmax(-1) == labels


@torch.no_grad()
def per_example_and_gradient(logits: Tensor, labels: Tensor, n_batch: int) -> tuple[Tensor, Tensor, Tensor]:
    """per_example, and the gradient of the mean loss of a batch of n_batch examples (of which
    these rows may be a part) with respect to the logits, in their dtype (cast_gradient): what
    the tabulated step (models/tabulated.py) needs of a model that is not float32, whose loss
    kernel is float32's alone."""
    loss, correct = per_example(logits, labels)
    grad = softmax_minus_onehot(log_softmax64(logits), labels) / n_batch
    return loss, correct, cast_gradient(grad, logits.dtype)


def loss_and_acc(logits: Tensor, labels: Tensor) -> tuple[float, float]:
    """Float64 loss and accuracy, for evaluation (no graph)."""
    loss, correct = per_example(logits, labels)
    return float(loss.mean()), float(correct.double().mean())


def per_position(logits: Tensor, labels: Tensor) -> tuple[list[float], list[float]]:
    """Loss and accuracy per label position: logits [n, L, V], labels [n, L]."""
    loss, correct = per_example(logits, labels)
    return loss.mean(0).tolist(), correct.double().mean(0).tolist()


def sum_sq_weights(params: Iterable[Tensor]) -> float:
    """The sum of squared weights (float64), the quantity weight decay shrinks: the paper's
    weight-norm progress measure, logged while training and recomputed per checkpoint."""
    with torch.no_grad():
        return float(sum(p.double().pow(2).sum() for p in params))
