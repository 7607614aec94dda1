"""What every task hands the trainer: fixed tensors (or a sampler), and where the loss is read.

A task is data only: token tensors, labels, and the logit positions the loss scores. The trainer
knows nothing else about it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

Sampler = Callable[[torch.Generator, int], tuple[Tensor, Tensor]]


@dataclass
class TaskData:
    """Inputs and labels of a supervised sequence task.

    `train_y[:, j]` is the label of the logits at position `label_pos[j]` of `train_x`.
    When `sample` is set the train set is infinite: each step draws a fresh batch from it, and
    `train_x`/`train_y` hold one such batch only for measuring train metrics.
    """

    train_x: Tensor  # [n_train, n_ctx] long
    train_y: Tensor  # [n_train, n_label] long
    test_x: Tensor  # [n_test, n_ctx] long
    test_y: Tensor  # [n_test, n_label] long
    label_pos: list[int]
    d_vocab: int
    d_vocab_out: int
    n_ctx: int
    sample: Sampler | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_train(self) -> int | None:
        return None if self.sample is not None else len(self.train_x)
