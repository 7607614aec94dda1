"""A reproduction folder as the claim registry reads it (`grokscope reproduce --all`; report/claims.py).

A reproduction folder DIR holds one entry per named experiment: DIR/<name> is either a run folder
(a single-run experiment such as the mainline) or a sweep folder whose trials are run folders
(DIR/<name>/<trial>). `Results(DIR).runs(name)` returns that experiment's runs as `RunView`s:
config, run.json and summary.json read once, the metrics and progress tables read when first
asked for. Anything unreadable is left empty and noted, never raised: the page must show every
other claim even when one run is damaged.

Reads the store only (docs/architecture.md: the report computes no measure).
"""

from __future__ import annotations

import math
import re
import sqlite3
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from grokscope.store import Run, StoreError, read_metrics, sweep_info

FINISHED = ("completed", "stopped_early", "diverged")  # an outcome to judge; "running"/"failed" are not


def natural_key(name: str) -> list[tuple[int, float | str]]:
    """Names compared with their numbers as numbers (frac_train=0.9 before 0.95, seed=2 before 10)."""
    parts = re.split(r"(\d+(?:\.\d+)?)", name)
    return [(0, float(t)) if i % 2 else (1, t) for i, t in enumerate(parts)]


def dotted(tree: dict[str, Any], key: str) -> Any:
    """tree["a"]["b"] for "a.b"; None when any part is missing."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


@dataclass
class RunView:
    """One run of an experiment, as the claims read it."""

    path: Path
    settings: dict[str, Any]  # the swept values of a sweep trial ({} for a single run)
    config: dict[str, Any]  # config.yaml ({} if unreadable)
    info: dict[str, Any]  # run.json ({} if unreadable)
    summary: dict[str, Any]  # analysis/summary.json ({} if not analysed)
    problems: list[str] = field(default_factory=list)  # what could not be read

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        return str(self.info.get("status") or "unknown")

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def setting(self, key: str) -> Any:
        """A config field by dotted name (`optim.weight_decay`), the swept value first."""
        return self.settings[key] if key in self.settings else dotted(self.config, key)

    @property
    def seed(self) -> Any:
        return self.setting("seed")

    @property
    def grok_epoch(self) -> float | None:
        """First epoch with test accuracy above 99% (run.json), None if never."""
        v = self.info.get("grok_epoch_99")
        return float(v) if isinstance(v, int | float) else None

    @property
    def epochs(self) -> float | None:
        """How far the run got, in epochs (its last metrics row)."""
        m = self.metrics
        return float(m["epoch"].iloc[-1]) if len(m) and "epoch" in m else None

    @property
    def budget(self) -> str:
        """The run's length as its config states it: "15000 epochs" or "10000 steps"."""
        steps, epochs = self.setting("train.steps"), self.setting("train.epochs")
        return f"{steps} steps" if steps is not None else f"{epochs} epochs"

    @cached_property
    def metrics(self) -> pd.DataFrame:
        return self._table("metrics")

    @cached_property
    def progress(self) -> pd.DataFrame:
        return self._table("progress")

    def _table(self, name: str) -> pd.DataFrame:
        try:
            return read_metrics(self.path, name)
        except (StoreError, OSError, sqlite3.DatabaseError) as err:
            self.problems.append(str(err).splitlines()[0] if str(err) else type(err).__name__)
            return pd.DataFrame({"step": pd.Series(dtype="int64")})


def read_view(path: Path, settings: dict[str, Any] | None = None) -> RunView:
    """A run folder as a RunView; unreadable parts empty and noted."""
    run = Run(path)
    problems: list[str] = []

    def attempt(read, empty):
        try:
            value = read()
        except (StoreError, OSError, ValueError) as err:
            problems.append(str(err).splitlines()[0] if str(err) else type(err).__name__)
            return empty
        return value if isinstance(value, dict) else empty

    config = attempt(run.read_config, {})
    info = attempt(run.read_info, {})
    summary = attempt(run.read_summary, {})
    return RunView(Path(path), dict(settings or {}), config, info, summary, problems)


class Results:
    """The runs of every experiment in a reproduction folder, read on first use."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._cache: dict[str, list[RunView]] = {}

    def runs(self, experiment: str) -> list[RunView]:
        """Every run of `experiment` in the folder, finished or not (natural order of their names)."""
        if experiment not in self._cache:
            self._cache[experiment] = self._read(self.root / experiment)
        return self._cache[experiment]

    def matching(self, experiment: str, **where: Any) -> list[RunView]:
        """The runs of `experiment` whose settings match `where` (dotted keys written with `__` for
        `.`: optim__weight_decay=0.0), finished or not."""
        return [r for r in self.runs(experiment)
                if all(same(r.setting(k.replace("__", ".")), v) for k, v in where.items())]

    def finished(self, experiment: str, **where: Any) -> list[RunView]:
        """The finished runs of `experiment` whose settings match `where` (as `matching`)."""
        return [r for r in self.matching(experiment, **where) if r.finished]

    def _read(self, folder: Path) -> list[RunView]:
        if not folder.is_dir():
            return []
        if Run(folder).exists():
            return [read_view(folder)]
        try:
            trials = {t["name"]: t.get("settings") or {} for t in sweep_info(folder).get("trials", [])
                      if isinstance(t, dict) and "name" in t}
        except StoreError:
            trials = {}
        paths = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and Run(p).exists()),
                       key=lambda p: natural_key(p.name))
        return [read_view(p, trials.get(p.name)) for p in paths]


def same(a: Any, b: Any) -> bool:
    """Config values equal, numbers compared as numbers (1 == 1.0; 0.1 from YAML == 0.1)."""
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b
