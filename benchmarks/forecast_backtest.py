"""Backtest the grokking forecast (docs/forecast.md; the method is grokscope/analysis/forecast.py).

Each grokked, analysed run of a pool is forecast at 25%, 50% and 75% of its grokking epoch T by a
model fitted on the pool's *other* runs (never on a run with its own seed and config), reading its
own rows up to that epoch only; the naive baseline (log test loss extrapolated) beside it. Writes
the tables between the markers of docs/forecast.md, the figure docs/forecast-backtest.png and
every forecast as CSV.

    python benchmarks/forecast_backtest.py                                  # pool "p=113": runs/{mainline,seeds,data-fraction,weight-decay}
    python benchmarks/forecast_backtest.py --pool 'p=113=runs/seeds,/tmp/fc/data-fraction' --pool 'p=31=/tmp/fc/tiny-seeds'

A pool is NAME=DIR[,DIR...]; each DIR is a run folder or a folder of runs (two levels deep). With
several pools it also backtests them pooled ("all"). `--leaky` adds, for each pool, the forecast
that also reads the stored restricted and excluded losses, whose key frequencies come from the
run's final checkpoint: it peeks, and only measures what knowing the circuit would be worth.
Reads runs only; writes nothing into them. Seconds on one core.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from grokscope.analysis import forecast as fc
from grokscope.report import forecast as rf

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POOL = "p=113=" + ",".join(str(ROOT / "runs" / n) for n in ("mainline", "seeds", "data-fraction", "weight-decay"))


def parse_pool(text: str) -> tuple[str, list[Path]]:
    name, _, dirs = text.rpartition("=")
    if not name:
        raise SystemExit(f"--pool {text!r}: expected NAME=DIR[,DIR...]")
    return name, [Path(d) for d in dirs.split(",") if d.strip()]


def load_pool(dirs: list[Path]) -> tuple[list[fc.Curves], list[str]]:
    """Every analysed run below `dirs` (a run whose setup is already in the pool is left out: the
    mainline is the seeds sweep's seed 0), and notes on what was left out and why."""
    paths = rf.find_runs([d for d in dirs if d.is_dir()])
    notes = [f"`{d}` does not exist" for d in dirs if not d.is_dir()]
    curves, skipped = rf.load_many(paths)
    notes += skipped
    kept: dict[str, fc.Curves] = {}
    for c in curves:
        if c.setup in kept:
            notes.append(f"`{c.name}` left out: the same seed and config as `{kept[c.setup].name}`")
        else:
            kept[c.setup] = c
    out = list(kept.values())
    notes += [f"`{c.name}` did not pass 99% test accuracy by epoch {c.last_epoch:,.0f}: not scored, not fitted on"
              for c in out if c.grok_epoch is None]
    return out, notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", action="append", help="NAME=DIR[,DIR...] (repeatable)")
    ap.add_argument("--leaky", action="store_true", help="also the forecast that reads the final-key measures")
    ap.add_argument("--page", type=Path, default=ROOT / "docs" / "forecast.md")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "forecast-backtest.png")
    ap.add_argument("--csv", type=Path, default=ROOT / "docs" / "results" / "forecast" / "backtest.csv")
    args = ap.parse_args()
    t0 = time.perf_counter()
    pools = dict(parse_pool(p) for p in (args.pool or [DEFAULT_POOL]))
    loaded = {name: load_pool(dirs) for name, dirs in pools.items()}
    if len(loaded) > 1:
        loaded["all"] = ([c for cs, _ in loaded.values() for c in cs], [])
    blocks, panels, frames = [], {}, []
    for name, (curves, notes) in loaded.items():
        variants = [("forecast", False)] + ([("forecast reading the final-key measures (peeks)", True)] if args.leaky and name != "all" else [])
        for label, leaky in variants:
            grokked = [c for c in curves if c.grok_epoch is not None]
            rows = fc.backtest(curves, leaky=leaky) if len(grokked) >= 4 else []
            groups = ", ".join(f"{g} {sum(c.group == g for c in grokked)}" for g in dict.fromkeys(c.group for c in grokked))
            title = f"{name}: {label}, {len(grokked)} grokked runs ({groups})"
            extra = notes if not leaky else []
            if len(grokked) < 4:
                extra = ["fewer than 4 grokked runs: no backtest (each run needs 3 others to fit on)"] + extra
            blocks.append(rf.backtest_markdown(rows, title, extra))
            if rows:
                if not leaky:
                    panels[name] = rows
                frames.append(pd.DataFrame(rows).assign(pool=name, leaky=leaky))
            print(title)
            for s in fc.summarise(rows) if rows else []:
                print(f"  at {s['fraction']:.0%}: forecast median rel. error {s['median_rel_err']:.1%} "
                      f"(abs {s['median_abs_err']:,.0f}), baseline {s['baseline_median_rel_err']:.1%} "
                      f"(abs {s['baseline_median_abs_err']:,.0f}), coverage {s['coverage']:.0%}")
    png = rf.draw_backtest(panels, args.png) if panels else None
    cmd = "python benchmarks/forecast_backtest.py " + " ".join(
        [f"--pool '{n}={','.join(map(str, d))}'" for n, d in pools.items()] + (["--leaky"] if args.leaky else []))
    head = [f"Produced by `{cmd}` in {time.perf_counter() - t0:.0f} s.", ""]
    if png is not None:
        head += [f"![the backtest]({png.name if png.parent == args.page.parent else png})", ""]
    # paths under the checkout are shown relative to it, so the page reads the same on any machine
    rf.write_block(args.page, "\n".join(head + blocks).replace(f"{ROOT}/", ""))
    if frames:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        pd.concat(frames).to_csv(args.csv, index=False)
    print(f"page: {args.page}  figure: {png}  table: {args.csv}")


if __name__ == "__main__":
    main()
