"""Cost of `grokscope analyze --llc` against the training time of the run it analyses.

    OMP_NUM_THREADS=1 python benchmarks/bench_llc.py [--run runs/mainline] [--rounds 3]
        [--epochs 200] [--checkpoints 6] [--threads 1] [--llc-set KEY=VALUE ...]

The target: the LLC of all of a run's checkpoints, at the default settings
(analysis/llc.py, `Settings`), costs under 25% of the run's training time.

Both are measured in this process, alternating in rounds so that a busy machine slows both alike:
- training: the run's own config trained afresh for --epochs epochs by `pipeline.train_run` (the
  real loop: steps, evaluations, checkpoints) into a temporary folder; its loop's wall time
  (run.json `train_seconds`, start-up excluded) scaled to the run's `train.epochs`;
- the LLC: `llc.estimate` on --checkpoints of the run's checkpoints, evenly spaced from the first
  to the last (the cost of a chain depends little on where it starts, but diverging chains stop
  early, so the spread matters), scaled to all of the run's checkpoints.
It prints each round's projection and the median ratio, and, when the run finished, its recorded
training time (run.json `train_seconds`, measured when it trained, on whatever load it had).
The run folder is only read.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from grokscope.analysis import llc
from grokscope.analysis.runner import modular_data
from grokscope.models.transformer import build
from grokscope.pipeline import train_run
from grokscope.store import Run, read_run_config
from grokscope.train.loop import setup_torch


def time_training(run: Run, epochs: int, threads: int) -> float:
    """Wall seconds per epoch of the run's config, trained afresh for `epochs` epochs."""
    cfg = read_run_config(run)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs, "threads": threads})})
    with tempfile.TemporaryDirectory() as tmp:
        info = train_run(cfg, Path(tmp) / "run", progress=False)
    return float(info["train_seconds"]) / epochs  # the loop's wall time, as run.json records it: no start-up


def time_llc(run: Run, steps: list[int], s: llc.Settings) -> tuple[float, list[float]]:
    """Wall seconds per checkpoint of `llc.estimate` over these checkpoints, and their estimates."""
    cfg = read_run_config(run)
    data = modular_data(cfg)
    model = build(cfg.model, data.p + 1, data.p, 3, cfg.seed)
    batches = llc.split_batches(data.all_x[data.train_mask], data.all_y[data.train_mask], s.batches, s.seed)
    params = list(model.parameters())
    out = []
    t0 = time.perf_counter()
    for st in steps:
        run.load_into(model, st)
        out.append(llc.estimate(model.loss_last, params, batches, s).llc)
    return (time.perf_counter() - t0) / len(steps), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/mainline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=200, help="epochs trained per round")
    ap.add_argument("--checkpoints", type=int, default=6, help="checkpoints estimated per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--llc-set", action="append", default=[], help="KEY=VALUE, as `analyze --llc-set`")
    args = ap.parse_args()
    setup_torch(args.threads)  # as training and `analyze --llc` do (flushing float32 subnormals)
    run = Run(args.run).require()
    cfg = read_run_config(run)
    s = llc.Settings().with_overrides(args.llc_set)
    all_steps = run.checkpoint_steps()
    k = min(args.checkpoints, len(all_steps))
    picks = [all_steps[round(i * (len(all_steps) - 1) / max(k - 1, 1))] for i in range(k)]
    total_epochs = cfg.train.epochs
    print(f"run {run.path}: {total_epochs} epochs, {len(all_steps)} checkpoints; LLC settings {s.as_dict()}")
    print(f"checkpoints timed: {picks}")
    ratios, llc_seconds = [], []
    for r in range(args.rounds):
        per_epoch = time_training(run, args.epochs, args.threads)
        per_ckpt, values = time_llc(run, picks, s)
        train_s, llc_s = per_epoch * total_epochs, per_ckpt * len(all_steps)
        ratios.append(llc_s / train_s)
        llc_seconds.append(llc_s)
        print(f"round {r}: training {per_epoch * 1e3:.1f} ms/epoch -> {train_s:.0f} s; LLC {per_ckpt:.2f} s/checkpoint "
              f"-> {llc_s:.0f} s; ratio {llc_s / train_s:.1%}  (LLC {', '.join(f'{v:.2f}' for v in values)})",
              flush=True)
    print(f"LLC / training time: median {statistics.median(ratios):.1%} over {len(ratios)} rounds (target: under 25%)")
    info = run.read_info()
    if info.get("status") in ("completed", "stopped_early") and info.get("train_seconds"):
        rec = float(info["train_seconds"])
        print(f"against the run's recorded training time ({rec:.0f} s, run.json, on the load it had then): "
              f"{statistics.median(llc_seconds) / rec:.1%}")

if __name__ == "__main__":
    main()
