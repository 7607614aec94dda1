"""The comparison table of all runs in a folder (the columns of Nanda et al. 2023, Table 5).

One row per run folder directly inside DIR: its swept settings (from DIR/sweep.json when the
folder is a sweep; otherwise the config fields whose values differ between its runs), status, epochs trained, test loss and accuracy, Gini(W_E), Gini(W_L), key
frequencies, logit FVE, MLP FVE (Table 5's column: mean and std over the key components) and
neuron FVE (from `analysis/summary.json` when the run was analysed;
empty otherwise), and the epoch of grokking (first epoch with test accuracy above 99%, from
run.json) and the same as an optimiser step (which compares minibatch runs across data sizes).
A copy-LM run's row has instead its last evaluation's tokens, losses, copy accuracies, ICL and
largest induction score, and when exact copy accuracy first passed 50% (from the summary): the
paper's copy test (Lv et al.; `pcopy_acc`, `pcopy_token_acc`, `pcopy_50_step`, `pcopy_50_tokens`)
first, as the headline, then the hex variant kept as a second measure (`copy_*`) and the
random-token-id one (`rcopy_*`). A run whose run.json,
summary or metrics cannot be read keeps its row, with those columns empty, the files named in a
`damaged` column and what to do in `error` (status "damaged" when run.json is the one): the
table still shows every other run. Reads the store only; computes no measure.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from grokscope.store import Run, StoreError, atomic_write_text, read_metrics, sweep_info

# A copy-LM run's columns in order: the paper's copy test (the headline), then the hex variant.
# A name from LM_FIRST_50 is read from the summary (the first evaluation with exact accuracy above
# 50%: `_step` and `_tokens`); any other is the last evaluation's value in the metrics table.
LM_COLUMNS = ["tokens", "train_loss", "val_loss", "pcopy_acc", "pcopy_token_acc", "pcopy_50", "copy_acc",
              "copy_token_acc", "copy_50", "rcopy_acc", "rcopy_token_acc", "icl_score", "induction_max"]
LM_FIRST_50 = {"pcopy_50": "paper_copy_50", "copy_50": "copy_50"}  # column prefix: summary key
SUMMARY_COLUMNS = ["test_loss", "test_acc", "gini_W_E", "gini_W_L", "key_frequencies", "logit_fve", "mlp_fve", "mlp_fve_std",
                   "neuron_fve", "gini_neurons"]


def runs_in(folder: Path) -> list[Path]:
    """Run folders directly inside `folder` (the folder itself when it is a run), by name, numbers
    in names compared as numbers (frac_train=0.9 before 0.95, seed=2 before seed=10)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StoreError(f"{str(folder)!r} is not a folder; pass a folder of runs, e.g. the --out of a sweep")
    if Run(folder).exists():
        return [folder]
    runs = (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and Run(p).exists())
    return sorted(runs, key=lambda p: natural_key(p.name))


def natural_key(name: str) -> list[tuple[int, float | str]]:
    parts = re.split(r"(\d+(?:\.\d+)?)", name)
    return [(0, float(t)) if i % 2 else (1, t) for i, t in enumerate(parts)]


def _read_or_note(read: Callable[[], Any], empty: Any, path: Path, name: str, damaged: dict[str, str]) -> Any:
    """What `read()` returns, or `empty` with the file noted in `damaged` (its name -> why, one line)
    when it cannot be read: one damaged file must not hide every other run of the table."""
    try:
        value = read()
    except (StoreError, ValueError, OSError, sqlite3.DatabaseError) as err:  # corrupt JSON, not UTF-8, bad SQLite
        damaged[name] = (str(err).splitlines() or [type(err).__name__])[0]
        return empty
    if value is not None and not isinstance(value, type(empty)):  # valid JSON, but e.g. a list
        damaged[name] = f"{path / name} is damaged (holds a {type(value).__name__}); restore it or delete it"
        return empty
    return value


def run_row(path: Path, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """One run's row. A damaged run.json, summary.json or metrics.sqlite leaves its columns empty and
    is named in the `damaged` column (with what to do in `error`); a damaged run.json makes the
    status "damaged", since what state the run is in is unknown."""
    run = Run(path)
    damaged: dict[str, str] = {}
    info = _read_or_note(run.read_info, {}, path, "run.json", damaged)
    if info is None:  # `null` is valid JSON, but not a run's state
        damaged["run.json"] = f"{path / 'run.json'} is damaged (holds null); restore it or delete it"
        info = {}
    m = _read_or_note(lambda: read_metrics(path), pd.DataFrame(), path, "metrics.sqlite", damaged)
    summary = _read_or_note(run.read_summary, {}, path, "analysis/summary.json", damaged) or {}
    row: dict[str, Any] = {"run": path.name}
    row.update(settings or {})
    row["status"] = "damaged" if "run.json" in damaged else info.get("status")
    if damaged:  # the column appears only when some run is damaged
        row["damaged"] = ", ".join(damaged)
    last = m.iloc[-1].to_dict() if len(m) else {}
    row["step"] = last.get("step")
    row["epoch"] = last.get("epoch")
    lm = "copy_acc" in last  # a copy-LM run: its own headline numbers
    for col in [] if lm else SUMMARY_COLUMNS:
        value = summary.get(col, last.get(col) if col in ("test_loss", "test_acc") else None)
        if isinstance(value, list):
            value = " ".join(str(v) for v in value)
        row[col] = value
    if lm:
        for col in LM_COLUMNS:
            if col in LM_FIRST_50:
                hit = summary.get(LM_FIRST_50[col])
                row[f"{col}_step"] = hit.get("step") if isinstance(hit, dict) else None
                row[f"{col}_tokens"] = hit.get("tokens") if isinstance(hit, dict) else None
            else:
                row[col] = last.get(col)
    row["grok_epoch"] = info.get("grok_epoch_99")
    # minibatch runs count epochs of their own train set; steps compare finite with infinite data
    spe = info.get("steps_per_epoch") or 1
    row["grok_step"] = None if row["grok_epoch"] is None else round(row["grok_epoch"] * spe)
    errors = ([str(info["error"]).splitlines()[0]] if info.get("error") else []) + list(damaged.values())
    if errors:
        row["error"] = "; ".join(errors)
    return row


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as {dotted name: value}, the names `--set` takes."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def differing_settings(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """Each run's values of the config fields that differ between the runs (dotted names, as
    `--set` takes them): what sets apart runs that were not made by one sweep. Paths to data and
    caches are left out; a config that cannot be read contributes nothing."""
    configs: dict[str, dict[str, Any]] = {}
    for p in paths:
        try:
            configs[p.name] = _flat(Run(p).read_config())
        except StoreError:
            configs[p.name] = {}
    readable = [c for c in configs.values() if c]
    if len(readable) < 2:
        return {}
    keys = sorted({k for c in readable for k in c})
    missing = object()
    differ = [k for k in keys if not k.endswith(("cache_dir", "corpus"))
              and any(c.get(k, missing) != readable[0].get(k, missing) for c in readable[1:])]
    return {name: {k: c.get(k) for k in differ} for name, c in configs.items() if c}


def runs_table(folder: Path) -> pd.DataFrame:
    """The table of every run in `folder`; raises StoreError when it holds none."""
    folder = Path(folder)
    paths = runs_in(folder)
    if not paths:
        raise StoreError(f"{str(folder)!r} holds no run folders; pass the --out of a sweep or of `grokscope train`")
    info = sweep_info(folder)
    settings = ({t["name"]: t["settings"] for t in info.get("trials", [])} if info
                else differing_settings(paths))
    rows = [run_row(p, settings.get(p.name)) for p in paths]
    table = pd.DataFrame(rows)
    # swept values keep their type: [700, None] stays 700 and null (pandas would make 700.0, NaN)
    keys = [k for k in dict.fromkeys(k for s in settings.values() for k in s) if k in table.columns]
    for key in keys:
        table[key] = pd.Series([r.get(key) for r in rows], dtype=object)
    table.attrs["settings"] = keys  # what the runs are compared by (the sweep's grid, or what differs)
    return table


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    atomic_write_text(path, table.to_csv(index=False))
    return path
