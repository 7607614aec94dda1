"""Cost of `grokscope analyze --llc` against the training time of the run it analyses.

    python benchmarks/bench_llc.py [--run runs/mainline] [--rounds 3] [--epochs 200]
        [--checkpoints N] [--threads 2] [--llc-set KEY=VALUE ...]

The target: the LLC of all of a run's checkpoints, at the default settings
(analysis/llc.py, `Settings`), costs under 25% of the run's training time.

Both are measured in this process, alternating in rounds so that a busy machine slows both alike:
- training: the run's own config trained afresh for --epochs epochs by `pipeline.train_run` (the
  real loop: steps, evaluations, checkpoints) into a temporary folder; its loop's wall time
  (run.json `train_seconds`, start-up excluded) scaled to the run's `train.epochs`;
- the LLC: what `analyze --llc --threads T` runs, `llc_run.over_checkpoints` over T single-thread
  processes, start-up included, on all of the run's checkpoints (or --checkpoints of them, evenly
  spaced from the first to the last and scaled to all, a quick look that also scales the
  processes' start-up, so it reads high).
Training runs on --threads threads, the LLC on --threads processes: the two uses of the same cores.
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

from grokscope.analysis import llc, llc_run
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


def time_llc(run: Run, steps: list[int], s: llc.Settings, workers: int) -> tuple[float, list[float]]:
    """Wall seconds of `llc_run.over_checkpoints` over these checkpoints, and their estimates."""
    t0 = time.perf_counter()
    rows, _, _ = llc_run.over_checkpoints(run.path, steps, 1, s, workers)
    return time.perf_counter() - t0, [r["llc"] if r["llc"] is not None else float("nan") for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/mainline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=200, help="epochs trained per round")
    ap.add_argument("--checkpoints", type=int, default=0, help="checkpoints estimated per round (0: all)")
    ap.add_argument("--threads", type=int, default=2, help="training threads; LLC processes")
    ap.add_argument("--llc-set", action="append", default=[], help="KEY=VALUE, as `analyze --llc-set`")
    args = ap.parse_args()
    setup_torch(args.threads)  # as training and `analyze --llc` do (flushing float32 subnormals)
    run = Run(args.run).require()
    cfg = read_run_config(run)
    s = llc.Settings().with_overrides(args.llc_set)
    all_steps = run.checkpoint_steps()
    k = min(args.checkpoints or len(all_steps), len(all_steps))
    picks = [all_steps[round(i * (len(all_steps) - 1) / max(k - 1, 1))] for i in range(k)]
    total_epochs = cfg.train.epochs
    print(f"run {run.path}: {total_epochs} epochs, {len(all_steps)} checkpoints; LLC settings {s.as_dict()}")
    print(f"checkpoints timed: {k} of {len(all_steps)}; training on {args.threads} thread(s), the LLC over "
          f"{args.threads} single-thread process(es)")
    ratios, llc_seconds = [], []
    for r in range(args.rounds):
        per_epoch = time_training(run, args.epochs, args.threads)
        llc_wall, values = time_llc(run, picks, s, args.threads)
        per_ckpt = llc_wall / k
        train_s, llc_s = per_epoch * total_epochs, per_ckpt * len(all_steps)
        ratios.append(llc_s / train_s)
        llc_seconds.append(llc_s)
        print(f"round {r}: training {per_epoch * 1e3:.1f} ms/epoch -> {train_s:.0f} s; LLC {per_ckpt:.2f} s/checkpoint "
              f"-> {llc_s:.0f} s; ratio {llc_s / train_s:.1%}  (LLC at {picks[-1]}: {values[-1]:.3g})",
              flush=True)
    print(f"LLC / training time: median {statistics.median(ratios):.1%} over {len(ratios)} rounds (target: under 25%)")
    info = run.read_info()
    if info.get("status") in ("completed", "stopped_early") and info.get("train_seconds"):
        rec = float(info["train_seconds"])
        print(f"against the run's recorded training time ({rec:.0f} s, run.json, on the load it had then): "
              f"{statistics.median(llc_seconds) / rec:.1%}")

if __name__ == "__main__":
    main()
