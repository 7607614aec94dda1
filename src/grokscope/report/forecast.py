"""The grokking forecast's inputs and its backtest page (the method is analysis/forecast.py).

`load_curves` reads one run folder through the store (read-only: it writes nothing into the run)
into the `Curves` the forecast takes; `find_runs` lists the run folders below some folders. The
backtest's figure (`draw_backtest`, matplotlib PNG) and its tables (`backtest_markdown`) are
drawn from the rows `analysis.forecast.backtest` returns; `write_block` puts the tables into a
Markdown page between two markers, so the prose around them stays hand-written.
`benchmarks/forecast_backtest.py` runs all of it.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from grokscope import config as C
from grokscope.analysis import forecast as fc
from grokscope.config import ConfigError
from grokscope.store import (
    Run,
    StoreError,
    atomic_write_bytes,
    atomic_write_text,
    read_metrics,
    read_run_config,
)

BEGIN = "<!-- backtest:begin (written by benchmarks/forecast_backtest.py; edits here are lost) -->"
END = "<!-- backtest:end -->"
# what makes two runs the same run: everything but the length, cadence and threads of training
SETUP_FIELDS = ("seed", "task", "model", "optim")


def load_curves(path: str | Path, group: str = "") -> fc.Curves:
    """One run's curves: the cheap metrics, the progress table (with the `llc` column where
    `analyze --llc` wrote it). A StoreError when the folder is no run or has no analysis."""
    run = Run(path).require()
    cfg = read_run_config(run)
    if cfg.task.name != "modular":
        raise StoreError(f"{str(run.path)!r} is a {cfg.task.name!r} run; the forecast reads modular-arithmetic "
                         "runs' progress measures")
    metrics = read_metrics(run.path)
    progress = read_metrics(run.path, "progress")
    if "epoch" not in progress or not len(progress):
        raise StoreError(f"{str(run.path)!r} has no progress measures; run `grokscope analyze {run.path}` first")
    llc = read_metrics(run.path, "llc")
    if "llc" in llc and len(llc):
        progress = progress.merge(llc[["step", "llc"]], on="step", how="left")
    if "epoch" not in metrics or not len(metrics):
        raise StoreError(f"{str(run.path)!r} has no metrics rows; train it first")
    return fc.Curves(str(path), metrics.sort_values("epoch").reset_index(drop=True),
                     progress.sort_values("epoch").reset_index(drop=True), group, setup_of(cfg))


def setup_of(cfg: C.RunConfig) -> str:
    """What makes two runs the same run, as a string to compare (SETUP_FIELDS of the config)."""
    dump = cfg.model_dump(mode="json")
    return json.dumps({k: dump[k] for k in SETUP_FIELDS}, sort_keys=True)


def find_runs(folders: Iterable[str | Path], depth: int = 2) -> list[Path]:
    """Run folders among `folders` and below them (up to `depth` levels: runs/, runs/seeds/seed=0),
    in order, each once."""
    seen: dict[Path, None] = {}

    def walk(p: Path, d: int) -> None:
        if Run(p).exists():
            seen.setdefault(p.resolve(), None)
            return
        if d > 0 and p.is_dir():
            for q in sorted(p.iterdir()):
                if q.is_dir() and not q.name.startswith("."):
                    walk(q, d - 1)

    for f in folders:
        if not Path(f).is_dir():
            raise StoreError(f"{str(f)!r} is not a folder; pass run folders or folders of runs")
        walk(Path(f), depth)
    return list(seen)


def load_many(paths: Sequence[Path], group: str = "") -> tuple[list[fc.Curves], list[str]]:
    """The curves of every path that has them, and one note per path skipped (and why)."""
    out, skipped = [], []
    for p in paths:
        try:
            out.append(load_curves(p, group or (p.parent.name if (p.parent / "sweep.json").exists() else p.name)))
        except (StoreError, ConfigError) as err:  # not a modular run, not analysed, damaged
            skipped.append(str(err))
    return out, skipped


# ------------------------------------------------------------------------------------ the page
def _epoch(x: float) -> str:
    return "never" if not math.isfinite(x) else f"{x:,.0f}"


def backtest_markdown(rows: Sequence[dict], title: str, notes: Sequence[str] = ()) -> str:
    """The summary table (per fraction) and the per-run table of one backtest, as Markdown."""
    lines = [f"#### {title}", ""]
    if not rows:
        return "\n".join(lines + ["No run could be backtested.", ""])
    lines += ["| made at | runs | forecast: median abs. error | median rel. | mean rel. | 80% interval covers "
              "| baseline: median abs. error | median rel. | mean rel. | gave none | prior: median abs. error "
              "| median rel. | forecast closer than baseline | than prior |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in fc.summarise(rows):
        lines.append(f"| {s['fraction']:.0%} of T | {s['n']} | {s['median_abs_err']:,.0f} | {s['median_rel_err']:.0%} "
                     f"| {s['mean_rel_err']:.0%} | {s['coverage']:.0%} | {s['baseline_median_abs_err']:,.0f} "
                     f"| {s['baseline_median_rel_err']:.0%} | {s['baseline_mean_rel_err']:.0%} | {s['baseline_never']} "
                     f"| {s['prior_median_abs_err']:,.0f} | {s['prior_median_rel_err']:.0%} "
                     f"| {s['forecast_better']:.0%} | {s['forecast_better_than_prior']:.0%} |")
    lines += ["", "<details><summary>Every forecast</summary>", "",
              "| run | group | T (grok epoch) | at | forecast [80% interval] | rel. error | baseline | rel. error "
              "| prior | rel. error |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {Path(r['run']).name} | {r['group']} | {r['grok_epoch']:,.0f} | {r['at']:,.0f} ({r['fraction']:.0%}) "
                     f"| {r['forecast']:,.0f} [{r['low']:,.0f}, {_epoch(r['high'])}] | {r['rel_err']:.0%} "
                     f"| {_epoch(r['baseline'])} | {r['baseline_rel_err']:.0%} | {r['prior']:,.0f} | {r['prior_rel_err']:.0%} |")
    lines += ["", "</details>", ""]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines + [""])


def draw_backtest(panels: dict[str, Sequence[dict]], path: Path) -> Path:
    """The backtest figure: for each panel (a set of runs), the median relative error against how
    early the forecast is made, forecast beside baseline and prior; and the first panel's forecasts
    against the truth."""
    import matplotlib

    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), dpi=100)
    ax = axes[0]
    for i, (name, rows) in enumerate(panels.items()):
        if not rows:
            continue
        s = pd.DataFrame(fc.summarise(rows))
        colour = f"C{i}"
        ax.plot(100 * s["fraction"], 100 * s["median_rel_err"], "o-", color=colour, label=f"forecast, {name}")
        ax.plot(100 * s["fraction"], 100 * s["baseline_median_rel_err"], "s--", color=colour, alpha=0.6,
                label=f"baseline, {name}")
        ax.plot(100 * s["fraction"], 100 * s["prior_median_rel_err"], "^:", color=colour, alpha=0.6,
                label=f"prior, {name}")
    ax.set_xlabel("forecast made at (% of the time to grok)")
    ax.set_ylabel("median |forecast - T| / T (%)")
    ax.set_yscale("log")
    ax.set_xticks([25, 50, 75])
    ax.legend(fontsize=7)
    ax.set_title("error against how early", fontsize=10)
    ax = axes[1]
    rows = next(iter(panels.values()), [])
    if rows:
        df = pd.DataFrame(rows)
        for j, (f, d) in enumerate(df.groupby("fraction")):
            ax.errorbar(d["grok_epoch"], d["forecast"], yerr=[d["forecast"] - d["low"], d["high"] - d["forecast"]],
                        fmt="o", color=f"C{j}", ms=4, alpha=0.8, elinewidth=0.8, label=f"forecast at {f:.0%}")
            base = d["baseline"].where(d["baseline"].map(math.isfinite))
            ax.plot(d["grok_epoch"], base, "x", color=f"C{j}", alpha=0.6, label=f"baseline at {f:.0%}")
        lo, hi = df["grok_epoch"].min() / 2, df["grok_epoch"].max() * 2
        ax.plot([lo, hi], [lo, hi], "k:", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(lo / 2, hi * 3)
        ax.set_xlabel("true grokking epoch T")
        ax.set_ylabel("forecast")
        ax.legend(fontsize=7)
        ax.set_title(f"forecasts against the truth ({next(iter(panels))})", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def write_block(page: Path, block: str) -> Path:
    """Replace what lies between BEGIN and END in `page` with `block` (appended, with the markers,
    when the page has none)."""
    page = Path(page)
    text = page.read_text() if page.exists() else ""
    new = f"{BEGIN}\n{block.rstrip()}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + new + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + new + "\n"
    atomic_write_text(page, text)
    return page
