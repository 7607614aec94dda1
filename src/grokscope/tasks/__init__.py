"""Tasks: turn a task config into tensors (see `base.TaskData`)."""

from __future__ import annotations

from grokscope.config import RunConfig
from grokscope.tasks.base import TaskData


def make_task(cfg: RunConfig) -> TaskData:
    """Build the task named by `cfg.task.name`, seeded by the run's seed."""
    name = cfg.task.name
    if name == "modular":
        from grokscope.tasks import modular

        return modular.make(cfg.task, cfg.seed)
    if name == "digits":
        from grokscope.tasks import digits

        return digits.make(cfg.task, cfg.seed)
    if name in ("repeated_subsequence", "skip_trigram"):
        from grokscope.tasks import sequences

        return sequences.make(cfg.task, cfg.seed)
    raise ValueError(f"task {name!r} has no tensor form (text tasks use grokscope.lm)")
