"""The run folder: the one place a run's state lives on disk (DESIGN.md "Contracts").

    RUN/config.yaml                         fully resolved config
    RUN/run.json                            status, seed, versions, start/end, last completed step
    RUN/checkpoints/step_NNNNNNN.safetensors   parameters by TransformerLens name; the latest
                                            two also hold optimiser and RNG state (keys "optim/..",
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
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CKPT_RE = re.compile(r"step_(\d{7,})\.safetensors$")
RESUMABLE = 2  # checkpoints that keep the optimiser and RNG state: the latest and the one before


class StoreError(ValueError):
    """A run folder is missing, incomplete or corrupt: the message is one line for the user."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give: mkstemp's temp files are 0600


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """`write(tmp)` fills a temp file beside path, which is then synced to disk and renamed onto
    path: a kill or power cut at any moment leaves the old file or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fchmod(f.fileno(), _FILE_MODE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


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


def db_error(path: Path, err: Exception) -> StoreError:
    """One line for a database that cannot be used: corrupt (restore it or start again), or
    locked, read-only, unreachable (nothing is wrong with the run itself)."""
    code = getattr(err, "sqlite_errorcode", None)
    corrupt = code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or not isinstance(err, sqlite3.Error)
    if corrupt:
        return StoreError(f"{path} is corrupt ({err}); restore it, or start the run again with --overwrite")
    return StoreError(f"{path} cannot be used ({err}); check that its folder is writable and that no other "
                      f"process holds it, then retry")


def _insert(con: sqlite3.Connection, table: str, rows: list[Mapping[str, Any]]) -> None:
    """Insert rows into table (created, and columns added, as needed) within con's transaction."""
    cols: list[str] = []
    for row in rows:
        cols.extend(c for c in row if c not in cols)
    con.execute(f'CREATE TABLE IF NOT EXISTS "{table}" (step INTEGER NOT NULL)')
    have = {r[1] for r in con.execute(f'PRAGMA table_info("{table}")')}
    for c in cols:
        if c not in have:
            con.execute(f'ALTER TABLE "{table}" ADD COLUMN "{_safe_column(c)}"')
    marks = ",".join("?" for _ in cols)
    names = ",".join(f'"{c}"' for c in cols)
    con.executemany(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', [[r.get(c) for c in cols] for r in rows])


RESTORE = "restore it or start the run again with --overwrite"


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

    def read_config(self, remedy: str = RESTORE) -> dict[str, Any]:
        """config.yaml as a mapping (not yet validated: config.resolve does that). A file that is
        not YAML, not text, unreadable, empty or not a mapping is a one-line StoreError naming the
        problem, then `remedy`."""
        try:
            raw = yaml.safe_load(self.config_path.read_text())
        except yaml.MarkedYAMLError as err:  # its str() spans lines: keep the message one line
            mark = err.problem_mark
            problem = f"not YAML: {err.problem}" + (f" at line {mark.line + 1}" if mark is not None else "")
        except yaml.YAMLError as err:
            problem = f"not YAML: {type(err).__name__}"
        except UnicodeDecodeError:
            problem = "not text"
        except OSError as err:
            problem = f"unreadable: {err.strerror}"
        else:
            if isinstance(raw, dict):
                return raw
            problem = "empty" if raw is None else f"not a config: a YAML {type(raw).__name__}, not a mapping"
        raise StoreError(f"{self.config_path} is damaged ({problem}); {remedy}")

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
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"step": str(step), **(metadata or {})}))
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
            raise StoreError(f"checkpoint {path} is corrupt ({err}); delete it to fall back to the one before, "
                             f"which also keeps the optimiser state") from None

    def load_into(self, model: torch.nn.Module, step: int | None = None,
                  tensors: dict[str, torch.Tensor] | None = None) -> tuple[int, dict[str, torch.Tensor]]:
        """Load a checkpoint's parameters into model (the latest when step is None; `tensors` if
        already read) and return (step, all its tensors); one that does not fit is a StoreError."""
        if tensors is None:
            step, tensors = self.load_checkpoint(step)
        assert step is not None
        try:
            model.load_state_dict(self.params_only(tensors))
        except RuntimeError as err:  # name the first offending tensor, not load_state_dict's many lines
            lines = [ln.strip() for ln in str(err).strip().splitlines()[1:] if ln.strip()] or [str(err).strip()]
            first = lines[0] if len(lines[0]) <= 160 else lines[0][:157] + "..."
            raise StoreError(f"checkpoint {self.checkpoint_path(step)} does not match the run's config.yaml "
                             f"({first}); restore the checkpoint or the config") from None
        return step, tensors

    @staticmethod
    def params_only(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Drop the resume state (`optim/...`, `rng/...`) and keep the model's parameters."""
        return {k: v for k, v in tensors.items() if "/" not in k}

    def shed_resume_state(self, keep: int = RESUMABLE) -> None:
        """Strip the resume state from the checkpoint that just fell out of the last `keep`.

        The last two keep it, not only the latest: if the latest is found corrupt, deleting it
        leaves one that training can still resume from exactly.
        """
        steps = self.checkpoint_steps()
        if len(steps) > keep:
            self.strip_resume_state(steps[-keep - 1])

    def strip_resume_state(self, step: int) -> None:
        """Rewrite an older checkpoint with parameters only."""
        path = self.checkpoint_path(step)
        if not path.exists():
            return
        tensors = load_file(path)
        if any("/" in k for k in tensors):
            self.save_checkpoint(step, self.params_only(tensors))

    # ------------------------------------------------------------------------------ metrics
    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A connection for one transaction (committed, or rolled back on error), then closed: an
        open connection would keep the -wal and -shm files beside the database."""
        con = self._connect()
        try:
            with con:
                yield con
        finally:
            con.close()

    def _connect(self) -> sqlite3.Connection:
        self.path.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.db_path, timeout=30)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")  # rows logged before a checkpoint survive power loss
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()  # reads the header: a bad file fails here
        except sqlite3.DatabaseError as err:
            con.close()
            raise db_error(self.db_path, err) from None
        return con

    def append(self, table: str, rows: Iterable[Mapping[str, float | int | str | None]]) -> None:
        """Append rows (dicts keyed by column; must include `step`) to a table, adding columns as needed."""
        rows = list(rows)
        if not rows:
            return
        with self._db() as con:
            con.execute("BEGIN IMMEDIATE")  # new columns and rows together; see replace_table
            _insert(con, _safe_column(table), rows)

    def replace_table(self, table: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Drop and rewrite a table in one transaction (analysis results are recomputed whole): a kill
        midway leaves the old table."""
        table, rows = _safe_column(table), list(rows)
        with self._db() as con:
            # IMMEDIATE: take the write lock now (sqlite3 would run the DROP in autocommit, and a
            # deferred BEGIN that reads first fails at once against a concurrent writer in WAL mode)
            con.execute("BEGIN IMMEDIATE")
            con.execute(f'DROP TABLE IF EXISTS "{table}"')
            if rows:
                _insert(con, table, rows)

    def truncate_after(self, step: int, tables: Iterable[str] | None = None) -> None:
        """Delete rows with step > `step` (a resumed run re-logs them identically)."""
        if not self.db_path.exists():
            return
        with self._db() as con:
            names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for t in names if tables is None else [t for t in tables if t in names]:
                con.execute(f'DELETE FROM "{t}" WHERE step > ?', (step,))

    def tables(self) -> list[str]:
        if not self.db_path.exists():
            return []
        with self._db() as con:
            return [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]

    def metrics(self, table: str = "metrics"):
        """The table as a pandas DataFrame sorted by step (empty if absent)."""
        import pandas as pd

        if table not in self.tables():
            return pd.DataFrame({"step": pd.Series(dtype="int64")})
        with self._db() as con:
            try:
                return pd.read_sql_query(f'SELECT * FROM "{_safe_column(table)}" ORDER BY step', con)
            except (sqlite3.DatabaseError, pd.errors.DatabaseError) as err:  # damage past the header
                raise db_error(self.db_path, err) from None

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
