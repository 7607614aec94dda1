"""Fault injection: training killed with SIGKILL at random moments, then resumed, ends with the
same tensors and the same metrics rows, bit for bit, as a run that was never interrupted.

Kills land in the start-up window (before the first checkpoint), inside checkpoint writes
(checkpoints every 5 steps make writes a large share of the time) and between them. The delays
are drawn from a seeded generator, so a failure can be replayed. The default suite kills 3 times;
`pytest -m slow` runs 12.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from grokscope import experiments, pipeline
from grokscope.store import Run
from tests.conftest import TINY

STEPS = 150
OVERRIDES = [o for o in TINY if not o.startswith(("train.checkpoint_every", "train.eval_every"))] + [
    f"train.epochs={STEPS}", "train.checkpoint_every=5", "train.eval_every=5"]


def _start(out: Path, resume: bool) -> subprocess.Popen:
    args = ["train", "--resume", str(out)] if resume else ["train", "mainline", "--out", str(out)]
    if not resume:
        args += [a for o in OVERRIDES for a in ("--set", o)]
    return subprocess.Popen([sys.executable, "-m", "grokscope.cli", *args, "-q"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _kill_after_start(proc: subprocess.Popen, out: Path, delay: float) -> bool:
    """SIGKILL `proc` `delay` seconds after it has marked the run folder (run.json exists); False
    if it finished first."""
    deadline = time.monotonic() + 120
    while not (out / "run.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "reference"
    cfg, _ = experiments.load("mainline", OVERRIDES)
    threads = torch.get_num_threads()
    try:
        pipeline.train_run(cfg, out, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def _kill_and_resume(reference: Path, tmp_path: Path, n_kills: int, seed: int) -> None:
    rng = random.Random(seed)
    out = tmp_path / "run"
    kills = 0
    for _ in range(4 * n_kills):
        if kills == n_kills:
            break
        resume = out.exists() and (out / "config.yaml").exists()
        proc = _start(out, resume)
        delay = rng.choice([0.0, rng.uniform(0, 0.05), rng.uniform(0, 1.5)])  # start-up window, early, anywhere
        if _kill_after_start(proc, out, delay):
            kills += 1
        elif proc.returncode not in (0, None):
            pytest.fail(f"training exited {proc.returncode}: {proc.stderr.read().decode()}")
    assert kills == n_kills, "the runs finished before every kill landed; lengthen STEPS"
    if not (out / "config.yaml").exists():  # killed before its config was written: start again
        res = _start(out, resume=False)
    else:
        res = _start(out, resume=True)
    assert res.wait(timeout=300) == 0, res.stderr.read().decode()
    a, b = Run(reference), Run(out)
    ta, tb = a.load_checkpoint()[1], b.load_checkpoint()[1]
    assert a.checkpoint_steps() == b.checkpoint_steps()
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta), [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert a.metrics().to_dict("records") == b.metrics().to_dict("records")
    assert not [p for p in b.ckpt_dir.iterdir() if p.name.endswith(".tmp")]  # leftovers cleaned


def test_kills_at_random_moments_then_resume_end_bit_identical(reference, tmp_path):
    _kill_and_resume(reference, tmp_path, n_kills=3, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_many_kills_then_resume_end_bit_identical(reference, tmp_path, seed):
    _kill_and_resume(reference, tmp_path, n_kills=4, seed=seed)


def _ctrl_c_not_ignored() -> None:
    # a job started in the background (nohup, `cmd &`) inherits SIGINT ignored, and Python keeps it
    # so; Ctrl-C is what this test sends, whatever started the test
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_sigterm_records_interrupted_and_resume_continues(tmp_path):
    # a scheduler (or `timeout`) stops a job with SIGTERM: the run must say "interrupted", not
    # stay "running", and resume must take it on
    out = tmp_path / "run"
    sets = [a for o in OVERRIDES[:-3] + ["train.epochs=200000", "train.checkpoint_every=5", "train.eval_every=5"]
            for a in ("--set", o)]
    proc = subprocess.Popen([sys.executable, "-m", "grokscope.cli", "train", "mainline", "--out", str(out), *sets, "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while len(list((out / "checkpoints").glob("*.safetensors")) if (out / "checkpoints").is_dir() else []) < 2:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=120)
    assert rc == 130, proc.stderr.read().decode() if proc.stderr else rc
    info = Run(out).read_info()
    assert info["status"] == "interrupted"
    # and Ctrl-C says the same
    proc = subprocess.Popen([sys.executable, "-m", "grokscope.cli", "train", "--resume", str(out), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=_ctrl_c_not_ignored)
    while Run(out).read_info()["status"] != "running":
        assert proc.poll() is None and time.monotonic() < deadline + 120
        time.sleep(0.01)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    assert "interrupted; continue with" in proc.stderr.read().decode()
    assert Run(out).read_info()["status"] == "interrupted"
