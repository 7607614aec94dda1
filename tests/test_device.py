"""Where training runs (`train.device`) and the copy LM's bf16 step (`train.precision`).

This machine has no GPU, so the CUDA paths are exercised on the CPU: the device choice with CUDA
faked present, the trainers' moves of model and data (no-ops on the CPU, the same code on a GPU),
and bf16 autocast, which torch runs on the CPU too. `benchmarks/gpu_check.sh` runs the suite and
the speed checks on a machine with a GPU.
"""

from __future__ import annotations

import pytest
import torch

from grokscope import config as C
from grokscope import experiments
from grokscope.lm.trainer import LMTrainer
from grokscope.store import Run
from grokscope.train.loop import pick_device
from grokscope.train.trainer import Trainer
from tests.conftest import run_cli_here
from tests.test_lm_trainer import tiny_cfg


def test_pick_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu") and pick_device("cpu") == torch.device("cpu")
    with pytest.raises(C.ConfigError, match="torch sees no CUDA device"):
        pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, as far as the choice goes
    assert pick_device("auto", index=1) == torch.device("cuda", 1) and pick_device("cuda") == torch.device("cuda", 0)
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto", cpu_only="the fast step") == torch.device("cpu")  # auto keeps a CPU-only step there
    with pytest.raises(C.ConfigError, match="train.device=cuda: the fast step"):
        pick_device("cuda", cpu_only="the fast step")


def test_the_fast_step_is_refused_on_cuda_and_the_plain_path_is_not(tmp_path, monkeypatch, tiny_overrides):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg, _ = experiments.load("mainline", tiny_overrides + ["train.device=cuda"])
    with pytest.raises(C.ConfigError, match="set train.fast=false to train this task on CUDA"):
        Trainer(cfg, Run(tmp_path / "r"), progress=False)
    cfg, _ = experiments.load("mainline", tiny_overrides + ["train.device=auto"])
    assert Trainer(cfg, Run(tmp_path / "r"), progress=False).device == torch.device("cpu")


def test_the_plain_path_with_an_explicit_device_matches_the_default(tmp_path, tiny_overrides):
    """train.fast=false on the default device against train.device=cpu: the same numbers where the
    default is the CPU (the moves change nothing); on a GPU, the same curve to float tolerance."""
    base = tiny_overrides + ["train.epochs=40", "train.fast=false", "optim.dropout=0.1"]
    for name, extra in (("auto", []), ("cpu", ["train.device=cpu"])):
        cfg, _ = experiments.load("mainline", base + extra)
        run = Run(tmp_path / name)
        run.write_config(C.to_yaml(cfg))
        assert Trainer(cfg, run, progress=False).fit()["status"] == "completed"
    a, b = Run(tmp_path / "auto").load_checkpoint()[1], Run(tmp_path / "cpu").load_checkpoint()[1]
    if pick_device("auto").type == "cpu":
        assert all(torch.equal(a[k], b[k]) for k in a)
    else:
        la, lb = Run(tmp_path / "auto").metrics()["train_loss"], Run(tmp_path / "cpu").metrics()["train_loss"]
        assert la.to_numpy() == pytest.approx(lb.to_numpy(), rel=1e-3)


def test_bf16_autocast_keeps_the_copy_lm_close_to_float32(tmp_path):
    """The fidelity check: 30 steps of the tiny LM in bf16 autocast end within 3% of float32's
    loss, and not bit-equal to it (autocast did run)."""
    losses = {}
    for precision in ("float32", "bf16"):
        cfg = tiny_cfg(tmp_path / precision, **{"train.precision": precision, "train.steps": 30,
                                                 "train.checkpoint_every": 30, "model.attn_dropout": 0.0})
        run = Run(tmp_path / precision / "run")
        run.write_config(C.to_yaml(cfg))
        info = LMTrainer(cfg, run, progress=False).fit()
        assert info["status"] == "completed" and info["device"] == str(pick_device("auto"))
        m = run.metrics()
        losses[precision] = (float(m["train_loss"].iloc[-1]), float(m["val_loss"].iloc[-1]))
        assert all(v.dtype == torch.float32 for v in run.load_checkpoint()[1].values() if v.is_floating_point())
    for f32, b16 in zip(losses["float32"], losses["bf16"], strict=True):
        assert f32 != b16 and abs(b16 - f32) / f32 < 0.03, losses


def test_cuda_where_there_is_none_is_one_line(tmp_path, tiny_overrides):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal cannot be seen here")
    res = run_cli_here("train", "mainline", "--out", str(tmp_path / "r"), *[f"--set={s}" for s in tiny_overrides],
                       "--set", "train.device=cuda", "--set", "train.fast=false")
    assert res.returncode == 2 and "torch sees no CUDA device" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
