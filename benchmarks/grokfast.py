"""Does a Grokfast gradient filter make the mainline grok sooner? Epochs and seconds to 99% test
accuracy with and without the filter, same weight decay in both, several seeds.

    python benchmarks/grokfast.py [--seeds 3] [--filter ema] [--alpha 0.98] [--lamb 2.0]
                                  [--max-epochs 15000] [--out /tmp/grokfast-bench] [--threads N] [--set KEY=VALUE ...]

Each run is an ordinary grokscope run folder under --out (rerunning skips finished runs), trained
with the stop rule "test accuracy above 99%" so it ends at the first evaluation that passes.
Prints one row per run, the ratio of the medians, and the paired (per-seed) ratios with their
geometric mean.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from grokscope import experiments, pipeline
from grokscope.store import Run


def run_one(out: Path, overrides: list[str]) -> dict:
    run = Run(out)
    if run.exists() and run.read_info().get("status") in ("completed", "stopped_early"):
        return run.read_info()
    cfg, _ = experiments.load("mainline", overrides)
    return pipeline.train_run(cfg, out, overwrite=run.exists(), progress=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--filter", default="ema", choices=["ema", "ma"])
    ap.add_argument("--alpha", type=float, default=0.98)
    ap.add_argument("--lamb", type=float, default=2.0)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--max-epochs", type=int, default=15000)
    ap.add_argument("--out", default="/tmp/grokfast-bench")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()

    common = [f"train.epochs={args.max_epochs}", "train.checkpoint_every=1000",
              "train.stop={metric: test_acc, above: 0.99, patience: 0}", *args.overrides]
    if args.threads:
        common.append(f"train.threads={args.threads}")
    variants = {
        "plain": [],
        f"grokfast-{args.filter}": [f"optim.filter.kind={args.filter}", f"optim.filter.alpha={args.alpha}",
                                    f"optim.filter.lamb={args.lamb}", f"optim.filter.window={args.window}"],
    }
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for seed in range(args.seeds):
        for name, extra in variants.items():
            info = run_one(Path(args.out) / f"{name}-seed{seed}", [*common, f"seed={seed}", *extra])
            epoch = info.get("grok_epoch_99")
            secs = info.get("train_seconds", float("nan"))
            epoch_txt = "did not reach 99%" if epoch is None else f"{epoch:.0f}"
            print(f"{name:16s} seed {seed}: epochs to 99% test acc: {epoch_txt:>8s}  ({secs:.0f} s)")
            results[name].append((epoch if epoch is not None else float("inf"), secs))
    (plain, fast) = (results[k] for k in variants)
    e_plain, e_fast = statistics.median(e for e, _ in plain), statistics.median(e for e, _ in fast)
    s_plain, s_fast = statistics.median(s for _, s in plain), statistics.median(s for _, s in fast)
    print(f"median epochs to 99%: plain {e_plain:.0f}, filtered {e_fast:.0f}  -> {e_plain / e_fast:.2f}x fewer epochs")
    print(f"median seconds:       plain {s_plain:.0f}, filtered {s_fast:.0f}  -> {s_plain / s_fast:.2f}x faster")
    # The medians above may come from different seeds; each seed's pair shares its data split and
    # initial weights, so the per-seed ratios are the paired comparison.
    ratios = [p[0] / f[0] for p, f in zip(plain, fast, strict=True)]
    geo = math.exp(statistics.fmean(math.log(r) for r in ratios)) if all(0 < r < math.inf for r in ratios) else None
    print("per seed, plain epochs / filtered epochs: " + ", ".join(f"{r:.2f}x" for r in ratios)
          + (f"  -> geometric mean {geo:.2f}x" if geo is not None else ""))


if __name__ == "__main__":
    main()
