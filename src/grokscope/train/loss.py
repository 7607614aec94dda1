"""The loss numerics, for the trainer: they live with the models (`grokscope.models.loss`), whose
fast step computes its loss inside the model, and are re-exported here under their old path."""

from grokscope.models.loss import (
    FLOAT32_TINY,
    Float64CrossEntropy,
    cast_gradient,
    cross_entropy64,
    loss_and_acc,
    per_position,
)

__all__ = ["FLOAT32_TINY", "Float64CrossEntropy", "cast_gradient", "cross_entropy64", "loss_and_acc", "per_position"]
