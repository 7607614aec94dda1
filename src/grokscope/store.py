"""The run folder: the one place a run's state lives on disk (DESIGN.md "Contracts").

    RUN/config.yaml                         fully resolved config
    RUN/run.json                            status, seed, versions, start/end, last completed step
    RUN/checkpoints/step_NNNNNNN.safetensors   parameters by TransformerLens name; the latest
                                            also holds optimiser and RNG state (keys "optim/..",
                                            "rng/..") for resume
    RUN/metrics.sqlite                      tables of rows keyed by step, appended as training goes
    RUN/analysis/summary.json               written by analysis
    RUN/report/index.html, report/*.png     written by the report

Every write is atomic (temp file, then rename), so a kill at any moment leaves the last good
state. Checkpoints are safetensors, never pickles.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CKPT_RE = re.compile(r"step_(\d{7,})\.safetensors$")


class StoreError(ValueError):
    """A run folder is missing, incomplete or corrupt: the message is one line for the user."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _safe_column(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"metric name {name!r} must be an identifier")
    return name


class Run:
    """A handle on one run folder. Cheap to create; opens files only when asked."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ------------------------------------------------------------------------------ layout
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def info_path(self) -> Path:
        return self.path / "run.json"

    @property
    def ckpt_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def db_path(self) -> Path:
        return self.path / "metrics.sqlite"

    @property
    def analysis_dir(self) -> Path:
        return self.path / "analysis"

    @property
    def report_dir(self) -> Path:
        return self.path / "report"

    def exists(self) -> bool:
        return self.config_path.exists() or self.info_path.exists()

    def require(self) -> Run:
        """Raise StoreError unless this is a run folder."""
        if not self.path.is_dir():
            raise StoreError(f"run folder {str(self.path)!r} does not exist; pass a folder made by `grokscope train`")
        if not self.config_path.is_file():
            raise StoreError(f"{str(self.path)!r} is not a run folder (no config.yaml); pass a folder made by `grokscope train`")
        return self

    # ------------------------------------------------------------------------------ config/info
    def write_config(self, yaml_text: str) -> None:
        atomic_write_text(self.config_path, yaml_text)

    def read_info(self) -> dict[str, Any]:
        if not self.info_path.exists():
            return {}
        try:
            return json.loads(self.info_path.read_text())
        except json.JSONDecodeError:
            raise StoreError(f"{self.info_path} is corrupt (not JSON); restore it or start the run again with --overwrite") from None

    def update_info(self, **fields: Any) -> dict[str, Any]:
        info = self.read_info()
        info.update(fields)
        atomic_write_json(self.info_path, info)
        return info

    # ------------------------------------------------------------------------------ checkpoints
    def checkpoint_path(self, step: int) -> Path:
        return self.ckpt_dir / f"step_{step:07d}.safetensors"

    def checkpoint_steps(self) -> list[int]:
        if not self.ckpt_dir.is_dir():
            return []
        steps = [int(m.group(1)) for p in self.ckpt_dir.iterdir() if (m := CKPT_RE.search(p.name))]
        return sorted(steps)

    def save_checkpoint(self, step: int, params: Mapping[str, torch.Tensor], extra: Mapping[str, torch.Tensor] | None = None,
                        metadata: dict[str, str] | None = None) -> Path:
        """Write step's parameters (and, for the latest, resume state in `extra`) atomically."""
        tensors = {k: v.detach().contiguous().clone() for k, v in params.items()}
        for k, v in (extra or {}).items():
            tensors[k] = v.detach().contiguous().clone()
        path = self.checkpoint_path(step)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"step": str(step), **(metadata or {})})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def load_checkpoint(self, step: int | None = None) -> tuple[int, dict[str, torch.Tensor]]:
        """(step, tensors) of a checkpoint; the latest when step is None."""
        steps = self.checkpoint_steps()
        if not steps:
            raise StoreError(f"{str(self.path)!r} has no checkpoints; train it first with `grokscope train`")
        if step is None:
            step = steps[-1]
        if step not in steps:
            raise StoreError(f"{str(self.path)!r} has no checkpoint at step {step}; it has steps {steps[0]}..{steps[-1]}")
        path = self.checkpoint_path(step)
        try:
            return step, load_file(path)
        except (SafetensorError, OSError, ValueError) as err:
            raise StoreError(f"checkpoint {path} is corrupt ({err}); delete it to fall back to the one before") from None

    @staticmethod
    def params_only(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Drop the resume state (`optim/...`, `rng/...`) and keep the model's parameters."""
        return {k: v for k, v in tensors.items() if "/" not in k}

    def strip_resume_state(self, step: int) -> None:
        """Rewrite an older checkpoint with parameters only (only the latest keeps resume state)."""
        path = self.checkpoint_path(step)
        if not path.exists():
            return
        tensors = load_file(path)
        if any("/" in k for k in tensors):
            self.save_checkpoint(step, self.params_only(tensors))

    # ------------------------------------------------------------------------------ metrics
    def _connect(self) -> sqlite3.Connection:
        self.path.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.db_path, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")  # rows logged before a checkpoint survive power loss
        return con

    def append(self, table: str, rows: Iterable[Mapping[str, float | int | str | None]]) -> None:
        """Append rows (dicts keyed by column; must include `step`) to a table, adding columns as needed."""
        rows = list(rows)
        if not rows:
            return
        table = _safe_column(table)
        cols: list[str] = []
        for row in rows:
            cols.extend(c for c in row if c not in cols)
        with self._connect() as con:
            con.execute(f'CREATE TABLE IF NOT EXISTS "{table}" (step INTEGER NOT NULL)')
            have = {r[1] for r in con.execute(f'PRAGMA table_info("{table}")')}
            for c in cols:
                if c not in have:
                    con.execute(f'ALTER TABLE "{table}" ADD COLUMN "{_safe_column(c)}"')
            marks = ",".join("?" for _ in cols)
            names = ",".join(f'"{c}"' for c in cols)
            con.executemany(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', [[r.get(c) for c in cols] for r in rows])

    def replace_table(self, table: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Drop and rewrite a table in one transaction (analysis results are recomputed whole)."""
        table = _safe_column(table)
        with self._connect() as con:
            con.execute(f'DROP TABLE IF EXISTS "{table}"')
        self.append(table, rows)

    def truncate_after(self, step: int, tables: Iterable[str] | None = None) -> None:
        """Delete rows with step > `step` (a resumed run re-logs them identically)."""
        if not self.db_path.exists():
            return
        with self._connect() as con:
            names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for t in names if tables is None else [t for t in tables if t in names]:
                con.execute(f'DELETE FROM "{t}" WHERE step > ?', (step,))

    def tables(self) -> list[str]:
        if not self.db_path.exists():
            return []
        with self._connect() as con:
            return [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]

    def metrics(self, table: str = "metrics"):
        """The table as a pandas DataFrame sorted by step (empty if absent)."""
        import pandas as pd

        if table not in self.tables():
            return pd.DataFrame({"step": pd.Series(dtype="int64")})
        with self._connect() as con:
            return pd.read_sql_query(f'SELECT * FROM "{_safe_column(table)}" ORDER BY step', con)

    # ------------------------------------------------------------------------------ analysis
    def write_summary(self, summary: dict[str, Any]) -> Path:
        path = self.analysis_dir / "summary.json"
        atomic_write_json(path, summary)
        return path

    def read_summary(self) -> dict[str, Any] | None:
        path = self.analysis_dir / "summary.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            raise StoreError(f"{path} is corrupt; rerun `grokscope analyze {self.path}`") from None
