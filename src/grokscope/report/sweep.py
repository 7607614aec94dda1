"""Figures and the HTML page of a sweep: many runs side by side (the experiments of Nanda et al. 2023, Appendices C.2 and D).

Reads the store (each trial's metrics table and run.json, the sweep's runs table) and draws:
- the test loss curves of all trials on one plot (log scale, as the paper plots loss);
- the epoch of grokking against each swept value (runs that never grokked are marked at the
  epoch they stopped, hollow);
- per-position test loss curves for multi-label tasks (digit addition, repeated subsequence),
  where the paper shows separate phase changes per answer position.
Copy-LM sweeps (Lv et al. 2024; every trial's metrics have `copy_acc`) get instead, each with a
panel against optimiser steps beside one against tokens (Lv et al.: copying arrives after a
number of steps, not tokens, so the batch-size trials line up on the left and not on the right):
validation loss; the headline, copy accuracy on the paper's copy test (`pcopy_*`, exact and per
token); the hex and random-token-id variants kept as second measures (`copy_*`, `rcopy_*`); the
largest induction score and the ICL score.
`write_sweep_report` puts them, with the comparison table and what the paper reports, into
DIR/sweep.html (images inlined, so the page is one self-contained file) and DIR/sweep_*.png; a
folder of runs trained one by one gets the same page as DIR/runs.html, its runs compared by the
config fields that differ between them.
Computes no measure.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never opens a window
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from grokscope.config import format_value  # noqa: E402
from grokscope.report.results import FINISHED  # noqa: E402
from grokscope.store import (  # noqa: E402
    StoreError,
    atomic_write_bytes,
    atomic_write_text,
    read_metrics,
    sweep_info,
)

MAX_LEGEND = 14  # more trials than this: no legend, the table names them
MAX_SETTINGS = 4  # runs compared outside a sweep: plots against at most this many differing fields


def _save(fig, path: Path) -> Path:
    from io import BytesIO

    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def time_axis(curves: dict[str, pd.DataFrame]) -> str:
    """"epoch" when every run is full batch (epoch = step), else "step": a minibatch epoch depends on
    the train set size, and infinite-data runs have no epochs, so steps are what compare."""
    full_batch = all(len(m) == 0 or "epoch" not in m or (m["epoch"] == m["step"]).all() for m in curves.values())
    return "epoch" if full_batch else "step"


def test_loss_figure(curves: dict[str, pd.DataFrame], path: Path, title: str = "") -> Path:
    """Every trial's test loss (solid) and train loss (faint) against epoch, on one log-scale plot."""
    x = time_axis(curves)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    cmap = plt.get_cmap("viridis" if len(curves) > 10 else "tab10")
    for i, (name, m) in enumerate(curves.items()):
        if "test_loss" not in m or not len(m):
            continue
        color = cmap(i / max(1, len(curves) - 1)) if len(curves) > 10 else cmap(i % 10)
        ax.plot(m[x], m["test_loss"].clip(lower=1e-12), color=color, lw=1.3, label=name)
        if "train_loss" in m:
            ax.plot(m[x], m["train_loss"].clip(lower=1e-12), color=color, lw=0.8, alpha=0.35)
    ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel("loss (solid: test, faint: train)")
    ax.set_title(title or "test loss of every trial")
    if 0 < len(curves) <= MAX_LEGEND:
        ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _order(values: list[Any]) -> list[Any]:
    """Distinct values sorted: numbers ascending, then null, then the rest as text."""
    distinct: list[Any] = []
    for v in values:
        if v not in distinct:
            distinct.append(v)

    def key(v: Any):
        if isinstance(v, int | float) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v)):
            return (0, float(v), "")
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return (1, 0.0, "")
        return (2, 0.0, str(v))

    return sorted(distinct, key=key)


def grok_outcomes(group: list[dict[str, Any]], col: str, last: str) -> tuple[list[float], list[float], list[float]]:
    """A setting's runs split for the grokking figure: the grokking epochs (or steps) of those that
    grokked, and the last epoch of those that finished without grokking and of those that did not
    finish (a run without a status counts as finished): an interrupted run has not failed to grok."""
    def known(x: Any) -> bool:
        return x is not None and not pd.isna(x)

    hit = [float(r[col]) for r in group if known(r.get(col))]
    ended = [r for r in group if not known(r.get(col)) and known(r.get(last))]
    done = [r for r in ended if not known(r.get("status")) or r.get("status") in FINISHED]
    open_ = [r for r in ended if known(r.get("status")) and r.get("status") not in FINISHED]
    return hit, [float(r[last]) for r in done], [float(r[last]) for r in open_]


def grok_figure(table: pd.DataFrame, key: str, path: Path, label_null: str = "null", unit: str = "epoch") -> Path:
    """Epoch (or step) of grokking (test acc > 99%) against one swept value; one point per run, mean as a line."""
    rows = table.to_dict("records")
    col, last = ("grok_epoch", "epoch") if unit == "epoch" else ("grok_step", "step")
    xs = _order([r.get(key) for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    means_x, means_y = [], []
    labelled_miss = False
    labelled_open = False
    for i, v in enumerate(xs):
        hit, miss, unfinished = grok_outcomes([r for r in rows if format_value(r.get(key)) == format_value(v)], col, last)
        if hit:
            ax.scatter([i] * len(hit), hit, color="C0", zorder=3)
            means_x.append(i)
            means_y.append(sum(hit) / len(hit))
        if miss:
            ax.scatter([i] * len(miss), miss, facecolors="none", edgecolors="C3", zorder=3,
                       label=None if labelled_miss else f"did not grok (plotted at its last {last})")
            labelled_miss = True
        if unfinished:
            ax.scatter([i] * len(unfinished), unfinished, marker="x", color="0.55", zorder=3,
                       label=None if labelled_open else f"unfinished (interrupted, failed or running; its last {last})")
            labelled_open = True
    if means_x:
        ax.plot(means_x, means_y, color="C0", alpha=0.6, label="mean over the runs that grokked")
    ax.set_xticks(range(len(xs)), [label_null if v is None else format_value(v) for v in xs])
    ax.set_xlabel(key)
    ax.set_ylabel(f"{unit} of grokking (test acc > 99%)")
    ax.set_title(f"{unit} of grokking against {key}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=8)
    return _save(fig, path)


def per_position_figure(m: pd.DataFrame, path: Path, title: str, x: str = "epoch") -> Path | None:
    """Test loss per answer position (`test_loss_pos{j}`) against epoch; None when not multi-label."""
    cols = sorted((c for c in m.columns if c.startswith("test_loss_pos")), key=lambda c: int(c.removeprefix("test_loss_pos")))
    if not cols:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    cmap = plt.get_cmap("viridis")
    for j, c in enumerate(cols):
        ax.plot(m[x], m[c].clip(lower=1e-12), color=cmap(j / max(1, len(cols) - 1)), lw=1.1, label=f"position {j}")
    ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel("test loss")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2 if len(cols) > 8 else 1)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def is_lm_sweep(curves: dict[str, pd.DataFrame]) -> bool:
    """Every trial is a copy-LM run (its metrics table has the copy test's columns)."""
    return bool(curves) and all("copy_acc" in m and "tokens" in m for m in curves.values() if len(m))


# (file stem, title, [(column, dashed)], y label) of each copy-LM sweep figure
LM_FIGURES = [
    ("loss", "loss", [("val_loss", False), ("train_loss", True)], "loss (solid: validation, dashed: train)"),
    ("pcopy", "copy accuracy, the paper's test (Lv et al.)", [("pcopy_acc", False), ("pcopy_token_acc", True)],
     "copy accuracy (solid: exact, dashed: per token)"),
    ("copy", "copy accuracy, hex variant", [("copy_acc", False), ("copy_token_acc", True)],
     "hex copy accuracy (solid: exact, dashed: per token)"),
    ("rcopy", "copy accuracy, random-token-id variant", [("rcopy_acc", False), ("rcopy_token_acc", True)],
     "accuracy (solid: exact, dashed: per token)"),
    ("induction", "largest induction score", [("induction_max", False)], "largest head induction score"),
    ("icl", "ICL score", [("icl_score", False)], "late minus early loss (nats)"),
]


def lm_figure(curves: dict[str, pd.DataFrame], columns: list[tuple[str, bool]], path: Path, title: str,
              y_label: str) -> Path | None:
    """Every trial's columns against steps (left) and against tokens (right); None if no trial has them."""
    if not any(c in m and m[c].notna().any() for m in curves.values() for c, _ in columns):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    cmap = plt.get_cmap("viridis" if len(curves) > 10 else "tab10")
    for ax, x in zip(axes, ("step", "tokens"), strict=True):
        for i, (name, m) in enumerate(curves.items()):
            color = cmap(i / max(1, len(curves) - 1)) if len(curves) > 10 else cmap(i % 10)
            for j, (c, dashed) in enumerate(columns):
                if c in m and x in m and len(m):
                    ax.plot(m[x], m[c], color=color, lw=1.3 if not dashed else 1.0, ls="--" if dashed else "-",
                            alpha=0.6 if dashed else 1.0, label=name if j == 0 else None)
        ax.set_xlabel("optimiser step" if x == "step" else "tokens seen")
        ax.set_title(f"{title} against {'steps' if x == 'step' else 'tokens'}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(y_label)
    if 0 < len(curves) <= MAX_LEGEND:
        axes[1].legend(fontsize=7, loc="best")
    return _save(fig, path)


# the runs-table columns averaged per swept value on a copy-LM sweep page, the headline first
LM_OURS_COLUMNS = ("step", "tokens", "val_loss", "pcopy_acc", "pcopy_token_acc", "pcopy_50_step", "pcopy_50_tokens",
                   "copy_acc", "copy_token_acc", "copy_50_step", "copy_50_tokens", "induction_max")
LM_LEGEND = ("pcopy_*: the paper's copy test (Lv et al.), the headline; copy_*: the hex variant, kept as a second "
             "measure; rcopy_*: the random-token-id variant. *_acc: exact accuracy at the last evaluation; "
             "*_token_acc: per-token accuracy; *_50_step, *_50_tokens: the first evaluation with exact accuracy "
             "above 50% (from each run's analysis summary).")


def lm_ours_table(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per swept value: runs, final validation loss and copy accuracy, and when copying passed 50%:
    the paper's copy test first (`pcopy_*`), then the hex variant (`copy_*`)."""
    rows = []
    for key in keys:
        for v in _order(table[key].tolist() if key in table else []):
            g = table[[format_value(x) == format_value(v) for x in table[key]]]
            row: dict[str, Any] = {"setting": f"{key}={format_value(v)}", "runs": len(g)}
            for col in LM_OURS_COLUMNS:
                if col in g:
                    vals = pd.to_numeric(g[col], errors="coerce").dropna()
                    row[f"mean {col}"] = float(vals.mean()) if len(vals) else math.nan  # shown as "-"
            rows.append(row)
    return pd.DataFrame(rows)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}"><figcaption>{html.escape(path.name)}</figcaption></figure>'


def _paper_block(exp: dict[str, Any]) -> str:
    if not exp:
        return ""
    out = [f"<h2>{html.escape(str(exp.get('title', 'Experiment')))}</h2>"]
    if exp.get("reproduces"):
        out.append(f"<p><b>Reproduces:</b> {html.escape(str(exp['reproduces']))}</p>")
    if exp.get("data_change"):
        out.append(f"<p><b>Data change from the paper:</b> {html.escape(str(exp['data_change']))}</p>")
    paper = exp.get("paper") or {}
    if paper:
        items = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in paper.items())
        out.append(f"<p><b>The paper reports:</b></p><ul>{items}</ul>")
    return "\n".join(out)


def ours_table(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per swept value: runs, how many grokked, mean epoch of grokking, mean final test loss."""
    rows = []
    for key in keys:
        for v in _order(table[key].tolist() if key in table else []):
            g = table[[format_value(x) == format_value(v) for x in table[key]]]
            grok = g["grok_epoch"].dropna()
            rows.append({"setting": f"{key}={format_value(v)}", "runs": len(g), "grokked": len(grok),
                         "mean grok epoch": round(float(grok.mean()), 1) if len(grok) else None,
                         "mean test loss": float(pd.to_numeric(g["test_loss"], errors="coerce").mean())})
    return pd.DataFrame(rows)


def _metrics_or_empty(path: Path) -> pd.DataFrame:
    """A trial's metrics, or none when its database is damaged (the table's `damaged` column says
    so): one bad trial must not cost the page of all the others."""
    try:
        return read_metrics(path)
    except (StoreError, OSError):
        return pd.DataFrame({"step": pd.Series(dtype="int64")})


def write_sweep_report(out: Path, table: pd.DataFrame, settings: list[str] | None = None) -> Path:
    """DIR/sweep.html and DIR/sweep_*.png for the runs in `table` (from `sweep.table.runs_table`).

    A folder that is not a sweep (no sweep.json: runs trained one by one) gets the same page as
    DIR/runs.html and DIR/runs_*.png, its runs compared by `settings`, the config fields that
    differ between them (the table's columns from `sweep.table.differing_settings`).
    """
    out = Path(out)
    info = sweep_info(out)
    exp = info.get("experiment") or {}
    stem_prefix = "sweep" if info else "runs"
    if info:  # a zipped key ("task.p,optim.weight_decay") is plotted against its first component
        keys = [k.split(",")[0].strip() for k in (info.get("grid") or {}) if k != "seed"]
    else:
        keys = [k for k in settings or [] if k != "seed"][:MAX_SETTINGS]
    keys = [k for k in keys if k in table]
    curves = {name: _metrics_or_empty(out / name) for name in table["run"]}
    lm = is_lm_sweep(curves)
    unit = time_axis(curves)
    figs = []
    if lm:
        for stem, title, columns, y_label in LM_FIGURES:
            fig = lm_figure(curves, columns, out / f"{stem_prefix}_{stem}.png", title, y_label)
            if fig is not None:
                figs.append(fig)
    else:
        figs.append(test_loss_figure(curves, out / f"{stem_prefix}_test_loss.png", exp.get("title", "")))
        for key in keys:
            figs.append(grok_figure(table, key, out / f"{stem_prefix}_grok_{key.replace('.', '_')}.png", unit=unit))
        for name, m in list(curves.items())[:8]:
            fig = per_position_figure(m, out / f"{stem_prefix}_positions_{name}.png", f"{name}: test loss per position", unit)
            if fig is not None:
                figs.append(fig)
    links = []
    for name in table["run"]:
        rep = out / name / "report" / "index.html"
        target = f"{name}/report/index.html" if rep.exists() else f"{name}/"
        links.append(f'<li><a href="{html.escape(target)}">{html.escape(name)}</a></li>')
    ours = lm_ours_table(table, keys) if lm else ours_table(table, keys)
    body = "\n".join([
        _paper_block(exp),
        "<h2>Ours</h2>",
        f"<p>{html.escape(LM_LEGEND)}</p>" if lm else "",
        ours.to_html(index=False, na_rep="-", float_format=lambda x: f"{x:.4g}") if len(ours) else "",
        *(_img(f) for f in figs),
        "<h2>All runs</h2>",
        table.to_html(index=False, na_rep="-", float_format=lambda x: f"{x:.4g}"),
        f"<h2>Run folders</h2><ul>{''.join(links)}</ul>",
        "<p>Table as CSV: <a href=\"runs.csv\">runs.csv</a>. " + (
            "pcopy_50: the first evaluation with exact accuracy on the paper's copy test (Lv et al.) above 50%; "
            "copy_50: the same for the hex variant.</p>" if lm else
            "Grokking epoch = first epoch with test accuracy above 99%.</p>"),
    ])
    if info:
        header = (f"{len(table)} runs; source <code>{html.escape(str(info.get('source', '')))}</code>; grid "
                  f"<code>{html.escape(str(info.get('grid', {})))}</code>; seeds {html.escape(str(info.get('seeds')))}.")
    else:
        differ = ", ".join(f"<code>{html.escape(k)}</code>" for k in settings or []) or "none"
        header = f"{len(table)} runs, not one sweep; the config fields that differ between them: {differ}."
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{stem_prefix} {html.escape(out.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 6px}}
img{{max-width:100%}}figure{{margin:1em 0}}figcaption{{color:#666;font-size:12px}}</style></head>
<body><h1>{"Sweep" if info else "Runs in"} {html.escape(out.name)}</h1>
<p>{header}</p>
{body}
</body></html>
"""
    path = out / f"{stem_prefix}.html"
    atomic_write_text(path, page)
    return path
