"""Everything a report shows, read from one run folder (docs/architecture.md, "The run folder"; the analysis
contract is in `grokscope.analysis`'s docstring).

The report reads the store only and computes no measure. This module gathers what exists (config,
run.json, the cheap "metrics" table, analysis's "progress" table, summary.json and
figures.safetensors, and any other table a trainer logged) and notes what is missing or unreadable,
so that a run still training, or one not analysed yet, still gets a page that says so.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from grokscope.store import Run, StoreError

# Tables with their own figures; any other table in metrics.sqlite gets a generic figure.
KNOWN_TABLES = ("metrics", "progress")


@dataclass
class RunData:
    """One run's stored results, as plain Python / numpy / pandas objects."""

    path: Path
    config: dict[str, Any]  # config.yaml as a dict ({} if unreadable)
    config_text: str  # config.yaml verbatim, shown on the page
    info: dict[str, Any]  # run.json
    metrics: pd.DataFrame  # table "metrics", sorted by step
    progress: pd.DataFrame  # table "progress" (analysis), sorted by step; may be empty
    summary: dict[str, Any] | None  # analysis/summary.json
    arrays: dict[str, np.ndarray]  # analysis/figures.safetensors
    other_tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    paper: dict[str, Any] | None = None  # what the paper reports, if this run reproduces one
    paper_source: str = ""  # where `paper` came from, said on the page
    warnings: list[str] = field(default_factory=list)  # unreadable files, bad shapes

    @property
    def name(self) -> str:
        """The run's display name: the config's `name`, else the folder's name (user text: escape it)."""
        return str(self.config.get("name") or self.path.name)

    @property
    def task(self) -> dict[str, Any]:
        return dict(self.config.get("task") or {})

    @property
    def is_modular(self) -> bool:
        return self.task.get("name") == "modular"

    @property
    def is_lm(self) -> bool:
        """A copy-LM run (task.name text): its figures are `grokscope.report.lm`'s."""
        return self.task.get("name") == "text"

    @property
    def phases(self) -> dict[str, list[float]]:
        """Phases that analysis located, {name: [start, end]} in epochs (absent ones dropped)."""
        raw = (self.summary or {}).get("phases") or {}
        out = {}
        for k, v in raw.items():
            if isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, int | float) for x in v):
                out[str(k)] = [float(v[0]), float(v[1])]
        return out


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """figures.safetensors as numpy arrays (raises StoreError when unreadable)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as err:
        raise StoreError(f"{path} is unreadable ({err}); rerun `grokscope analyze`") from None


def experiment_paper(name: str) -> dict[str, Any] | None:
    """The `experiment:` section of a named experiment (None if there is no such experiment)."""
    from grokscope import config as C
    from grokscope import experiments

    if name not in experiments.names():
        return None
    try:
        return experiments.meta(name)
    except C.ConfigError:
        return None


def _paper(cfg: dict[str, Any], info: dict[str, Any], folder: str,
           experiment: str | Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    """What the paper reports for this run, and where that came from.

    In order: an experiment given by the caller (its name, from `report --experiment`, or its
    `experiment:` section, from `reproduce`, which may have read it from a YAML file); the config's
    `paper` dict; run.json's `experiment`; an experiment named like the config's `name` or the
    folder (said on the page, since the run's settings may differ from the experiment's).
    """
    if isinstance(experiment, Mapping):
        return (dict(experiment), "the experiment this run reproduces") if experiment else (None, "")
    if experiment:
        meta = experiment_paper(experiment)
        if meta is None:
            from grokscope import config as C
            from grokscope import experiments

            raise C.ConfigError(f"unknown experiment {experiment!r}; `grokscope reproduce --list` shows: "
                                f"{', '.join(experiments.names())}")
        return meta, f"experiment {experiment!r}"
    if isinstance(cfg.get("paper"), dict) and cfg["paper"]:
        return {"paper": cfg["paper"]}, "the run's config (`paper`)"
    named = info.get("experiment")
    if isinstance(named, dict):
        return named, "run.json (`experiment`)"
    for label, cand in (("run.json's `experiment`", named), ("the config's name", cfg.get("name")),
                        ("the run folder's name", folder)):
        if isinstance(cand, str) and (meta := experiment_paper(cand)) is not None:
            return meta, f"experiment {cand!r} (matched by {label}; this run's settings may differ)"
    return None, ""


def load_run(path: str | Path, experiment: str | Mapping[str, Any] | None = None) -> RunData:
    """Read everything the report can show from a run folder (StoreError if it is not one)."""
    run = Run(path).require()
    run.verify_checkpoints()  # a damaged checkpoint is an error, not a footnote: the page would vouch for it
    warnings: list[str] = []
    config_text = run.config_path.read_text(errors="replace")
    try:
        config = run.read_config()
    except StoreError as err:
        config = {}
        warnings.append(f"{err}; the task-specific figures are skipped")
    try:
        info = run.read_info()
    except StoreError as err:
        info = {}
        warnings.append(str(err))
    tables = run.tables()
    metrics = run.metrics("metrics")
    progress = run.metrics("progress")
    other = {t: run.metrics(t) for t in tables if t not in KNOWN_TABLES and not t.startswith("sqlite_")}
    try:
        summary = run.read_summary()
    except StoreError as err:
        summary = None
        warnings.append(str(err))
    arrays: dict[str, np.ndarray] = {}
    fig_path = run.analysis_dir / "figures.safetensors"
    if fig_path.exists():
        try:
            arrays = read_arrays(fig_path)
        except StoreError as err:
            warnings.append(str(err))
    paper, source = _paper(config, info, run.path.name, experiment)
    return RunData(path=run.path, config=config, config_text=config_text, info=info, metrics=metrics,
                   progress=progress, summary=summary, arrays=arrays, other_tables=other, paper=paper,
                   paper_source=source, warnings=warnings)


# ------------------------------------------------------------------------------------ run index
def runs_below(root: Path) -> list[Path]:
    """Run folders (holding config.yaml) under `root`, sorted; a run's own subfolders are not searched."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if "config.yaml" in filenames:
            found.append(Path(dirpath))
            dirnames.clear()  # checkpoints/, analysis/, report/ hold no runs
        else:
            dirnames.sort()
    return sorted(found)


def _last(df: pd.DataFrame, col: str) -> float | None:
    if col not in df:
        return None
    vals = df[col].dropna()
    return float(vals.iloc[-1]) if len(vals) else None


def index_row(path: Path) -> dict[str, Any]:
    """What the run index shows of one run, read from its folder (unreadable parts left empty)."""
    run = Run(path)
    row: dict[str, Any] = {"path": path, "name": path.name, "task": "", "settings": {}, "status": "",
                           "last_step": None, "total_steps": None, "test_acc": None, "epoch": None,
                           "grok_epoch_50": None, "grok_epoch_99": None, "key_frequencies": None,
                           "report": (run.report_dir / "index.html").is_file(), "error": "", "info_keys": set()}
    try:
        cfg = run.read_config()
        info = run.read_info()
        m = run.metrics("metrics")
        summary = run.read_summary() or {}
    except (StoreError, sqlite3.DatabaseError, OSError) as err:
        row["error"] = str(err).splitlines()[0] if str(err) else type(err).__name__
        return row
    task, model, optim = cfg.get("task") or {}, cfg.get("model") or {}, cfg.get("optim") or {}
    row["name"] = str(cfg.get("name") or path.name)
    row["task"] = describe_task(task)
    row["settings"] = {"seed": cfg.get("seed"), "frac_train": task.get("frac_train", task.get("n_train")),
                       "lr": optim.get("lr"), "weight_decay": optim.get("weight_decay"),
                       "model": describe_model(model)}
    row.update(info_keys=set(info), status=info.get("status", ""), last_step=info.get("last_step"), total_steps=info.get("total_steps"),
               test_acc=_last(m, "test_acc"), epoch=_last(m, "epoch"), grok_epoch_50=info.get("grok_epoch_50"),
               grok_epoch_99=info.get("grok_epoch_99"), key_frequencies=summary.get("key_frequencies"))
    return row


def describe_task(task: dict[str, Any]) -> str:
    name = task.get("name", "?")
    if name == "modular":
        return f"modular {task.get('op', '?')} mod {task.get('p', '?')}"
    keys = {"digits": ("n_digits",), "text": ("corpus", "tokenizer")}.get(name, ("vocab", "seq_len"))
    extra = ", ".join(f"{k} {task[k]}" for k in keys if k in task)
    return f"{name} ({extra})" if extra else str(name)


def describe_model(model: dict[str, Any]) -> str:
    if not model:
        return ""
    kind = "attn-only " if model.get("attn_only") else ""
    return (f"{kind}{model.get('n_layers', '?')}L d{model.get('d_model', '?')} "
            f"h{model.get('n_heads', '?')} mlp{model.get('d_mlp', '?')}")
