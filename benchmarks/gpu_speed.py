"""Training speed on the device torch picks (a GPU where there is one): the copy LM's tokens/s in
float32 and bf16 autocast, and the mainline's epochs/s on the plain path, against this machine's
CPU fast step measured in the same run.

    python benchmarks/gpu_speed.py [--steps 50] [--configs copy-lm,copy-lm-gpu]

The LM configs train on a synthetic corpus written to a temporary folder (the offline books need
Debian's r-cran-janeaustenr, which a GPU machine may not have); the step's cost does not depend on
the text. Each measurement times `--steps` optimiser steps after 5 warm-up steps, synchronising
the device before reading the clock. It trains nothing to disk except the token cache in the
temporary folder. `benchmarks/gpu_check.sh` runs it after the tests.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from grokscope import experiments
from grokscope.lm.trainer import LMTrainer
from grokscope.store import Run
from grokscope.train.trainer import Trainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(trainer, steps: int) -> float:
    """Seconds per optimiser step over `steps` steps, after 5 warm-up steps."""
    for s in range(5):
        trainer.train_step(s)
    sync(trainer.device)
    t0 = time.perf_counter()
    for s in range(5, 5 + steps):
        trainer.train_step(s)
    sync(trainer.device)
    return (time.perf_counter() - t0) / steps


def corpus(folder: Path) -> Path:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(300)] + list("abcdefghijklmnopqrstuvwxyz")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        (folder / f"{i}.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(14)) for _ in range(40000)))
    return folder


def lm_speed(name: str, precision: str, steps: int, tmp: Path) -> tuple[str, float]:
    cfg, _ = experiments.load(name, [f"task.corpus={corpus(tmp / 'corpus')}", "task.corpus_shares=null",
                                     f"task.cache_dir={tmp / 'cache'}", f"train.precision={precision}"])
    trainer = LMTrainer(cfg, Run(tmp / f"{name}-{precision}"), progress=False)
    sec = timed(trainer, steps)
    return str(trainer.device), trainer.tokens_per_step / sec


def mainline_speed(device: str, fast: bool, steps: int, tmp: Path) -> tuple[str, float]:
    cfg, _ = experiments.load("mainline", [f"train.device={device}", f"train.fast={str(fast).lower()}"])
    trainer = Trainer(cfg, Run(tmp / f"mainline-{device}-{fast}"), progress=False)
    return str(trainer.device), 1.0 / timed(trainer, steps)  # full batch: one step is one epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--configs", default="copy-lm,copy-lm-gpu")
    args = ap.parse_args()
    print(f"torch {torch.__version__}; CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name in args.configs.split(","):
            got = {p: lm_speed(name, p, args.steps, tmp) for p in ("float32", "bf16")}
            dev = got["float32"][0]
            print(f"{name:14s} on {dev}: {got['float32'][1]:,.0f} tokens/s float32, {got['bf16'][1]:,.0f} tokens/s bf16 "
                  f"({got['bf16'][1] / got['float32'][1]:.2f}x)")
        dev, plain = mainline_speed("auto", False, args.steps, tmp)
        _, fast = mainline_speed("cpu", True, args.steps, tmp)
        print(f"mainline       plain path on {dev}: {plain:,.1f} epochs/s; the CPU fast step: {fast:,.1f} epochs/s "
              f"(plain on {dev} / CPU fast: {plain / fast:.2f}x)")


if __name__ == "__main__":
    main()
