"""Shared fixtures: tiny configs that train in seconds on one thread."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

torch.set_num_threads(1)

TINY = [
    "task.p=23", "task.frac_train=0.5", "model.d_model=32", "model.n_heads=2", "model.d_head=16",
    "model.d_mlp=64", "train.threads=1", "train.eval_every=10", "train.checkpoint_every=50",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


def run_cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run the `grokscope` CLI in a subprocess, as a user would."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "grokscope.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)
