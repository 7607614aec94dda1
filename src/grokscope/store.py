"""The run folder: the one place a run's state lives on disk (docs/architecture.md, "The run folder").

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

`read_run_config` is the one reader of a run's validated config: training's resume, analysis,
model loading and the CLI all call it. A sweep folder's own files are read here too
(`sweep_info`, and `read_metrics`, which reads a trial's table without writing into it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from grokscope import config as C
from grokscope.config import read_yaml_file

CKPT_RE = re.compile(r"step_(\d{7,})\.safetensors$")
RESUMABLE = 2  # checkpoints that keep the optimiser and RNG state: the latest and the one before


class StoreError(ValueError):
    """A run folder is missing, incomplete or corrupt: the message is one line for the user."""


LOCK_NAME = ".lock"


class FolderLocked(StoreError):
    """Another process holds the folder's writer lock."""


@contextmanager
def folder_lock(folder: Path, what: str = "run folder") -> Iterator[None]:
    """Hold an exclusive advisory lock on `folder` (its `.lock` file, holding our pid) while the
    block runs. The kernel drops it when the process dies, so a kill -9 never leaves a stale lock;
    a second writer gets a one-line StoreError naming the holder. Readers take no lock."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if err.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        raise FolderLocked(f"{what} {str(folder)!r} is being written by process {holder}; wait for it to finish "
                         f"or stop it, then retry") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def remove_temp_files(folder: Path) -> list[str]:
    """Delete atomic_write's leftover temp files in `folder` (a kill mid-write leaves one).
    Call it only while holding the folder's lock, so that no live write owns them."""
    gone = []
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and TMP_RE.fullmatch(p.name):
                p.unlink(missing_ok=True)
                gone.append(p.name)
    return gone


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
CHECKSUM_KEY = "grokscope_sha256"


class CheckpointDamaged(ValueError):
    """A checkpoint file that cannot be trusted: the message says why, in a few words."""


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().contiguous()
        h.update(f"{k}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors, verified against the checksum in its metadata (files written
    before checksums were kept load unverified). Raises CheckpointDamaged."""
    if path.is_dir():
        raise CheckpointDamaged("a folder stands where the file should be")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iteration
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointDamaged(f"unreadable: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    want = meta.get(CHECKSUM_KEY)
    if want is not None and tensors_digest(tensors) != want:
        raise CheckpointDamaged("its tensor data does not match its checksum")
    return tensors


def checkpoint_has_resume_state(path: Path) -> bool:
    """Whether a checkpoint holds optimiser/RNG state (read from its header only)."""
    try:
        with safe_open(str(path), "pt") as f:
            return any("/" in k for k in f.keys())  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return False


def _checkpoint_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
    meta.pop(CHECKSUM_KEY, None)
    return meta


RUN_FORMAT = "grokscope-run/1"  # run.json's "format": the marker that makes a folder a run
# What a run writes into its folder: --overwrite deletes a folder only if it holds nothing else.
RUN_ENTRIES = frozenset({"config.yaml", "run.json", "checkpoints", "metrics.sqlite", "metrics.sqlite-wal",
                         "metrics.sqlite-shm", "metrics.sqlite-journal", "analysis", "report", LOCK_NAME})
TMP_RE = re.compile(r"\..+\.tmp")  # atomic_write's temp files


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

    def is_run(self) -> bool:
        """A grokscope run by its own marker: run.json naming our format (or, in folders written
        before the marker, run.json's record of the grokscope version)."""
        try:
            info = json.loads(self.info_path.read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(info, dict):
            return False
        versions = info.get("versions")
        return info.get("format") == RUN_FORMAT or (isinstance(versions, dict) and "grokscope" in versions)

    def entries(self) -> list[str]:
        """What the folder holds, less the lock and temp files."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.name != LOCK_NAME and not TMP_RE.fullmatch(p.name))

    def foreign_entries(self) -> list[str]:
        """Entries a run never writes: their presence means the folder is not only a run."""
        return [e for e in self.entries() if e not in RUN_ENTRIES]

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """The writer's lock on this folder (see folder_lock)."""
        return folder_lock(self.path, "run folder")

    def clear(self) -> None:
        """Delete everything a run wrote, for --overwrite; the lock (held by the caller) stays.
        Refuses a folder that is not a run or holds anything a run does not write."""
        if not self.is_run() or self.foreign_entries():
            raise StoreError(f"{str(self.path)!r} is not only a grokscope run; nothing was deleted")
        for p in self.path.iterdir():
            if p.name == LOCK_NAME:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()

    def remove_temp_files(self) -> list[str]:
        """Temp files left by a kill, in the folder and checkpoints/ (the trainer's own files)."""
        return remove_temp_files(self.path) + remove_temp_files(self.ckpt_dir)

    def mark(self) -> None:
        """Write run.json's format marker (first, before any other file of a new run)."""
        self.update_info(format=RUN_FORMAT)

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
        """config.yaml as a mapping, not yet validated (`read_run_config` validates it). A file that is
        not YAML, not text, unreadable, empty or not a mapping is a one-line StoreError naming the
        problem, then `remedy`."""
        try:
            raw = read_yaml_file(self.config_path)
        except ValueError as err:
            problem = str(err)
        else:
            if isinstance(raw, dict):
                return raw
            problem = "empty" if raw is None else f"not a config: a YAML {type(raw).__name__}, not a mapping"
        raise StoreError(f"{self.config_path} is damaged ({problem}); {remedy}")

    def read_info(self) -> dict[str, Any]:
        if not self.info_path.exists():
            return {}
        try:
            info = json.loads(self.info_path.read_bytes())
        except (ValueError, OSError):
            info = None
        if not isinstance(info, dict):
            raise StoreError(f"{self.info_path} is corrupt (not a JSON object); restore it or start the run again "
                             "with --overwrite")
        return info

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
        steps = [int(m.group(1)) for p in self.ckpt_dir.iterdir() if (m := CKPT_RE.fullmatch(p.name))]
        return sorted(steps)

    def save_checkpoint(self, step: int, params: Mapping[str, torch.Tensor], extra: Mapping[str, torch.Tensor] | None = None,
                        metadata: dict[str, str] | None = None) -> Path:
        """Write step's parameters (and, for the latest, resume state in `extra`) atomically, with
        a SHA-256 of the tensors in the metadata that every load verifies."""
        tensors = {k: v.detach().contiguous().clone() for k, v in params.items()}
        for k, v in (extra or {}).items():
            tensors[k] = v.detach().contiguous().clone()
        meta = {"step": str(step), **(metadata or {}), CHECKSUM_KEY: tensors_digest(tensors)}
        path = self.checkpoint_path(step)
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
        return path

    def load_checkpoint(self, step: int | None = None) -> tuple[int, dict[str, torch.Tensor]]:
        """(step, tensors) of a checkpoint, verified against its checksum; the latest when step
        is None. A damaged one is a one-line StoreError that says how to fall back."""
        steps = self.checkpoint_steps()
        if not steps:
            raise StoreError(f"{str(self.path)!r} has no checkpoints; train it first with `grokscope train`")
        if step is None:
            step = steps[-1]
        if step not in steps:
            raise StoreError(f"{str(self.path)!r} has no checkpoint at step {step}; it has steps {steps[0]}..{steps[-1]}")
        path = self.checkpoint_path(step)
        try:
            return step, read_checkpoint(path)
        except CheckpointDamaged as err:
            raise StoreError(f"checkpoint {path} is corrupt ({err}); {self._fallback_advice(step)}") from None

    def verify_checkpoints(self) -> None:
        """Read every checkpoint against its checksum; StoreError (as load_checkpoint) on the first
        damaged one. A report calls it so that a page never presents a damaged run as sound."""
        for step in self.checkpoint_steps():
            self.load_checkpoint(step)

    def _fallback_advice(self, step: int) -> str:
        """What to do about a damaged checkpoint at `step`: exact resume from the one before
        needs that one to hold the optimiser state (only the latest two do)."""
        before = [s for s in self.checkpoint_steps() if s < step]
        if step == max(self.checkpoint_steps()) and before and checkpoint_has_resume_state(self.checkpoint_path(before[-1])):
            return (f"move it out of {self.ckpt_dir} and `grokscope train --resume {self.path}` continues exactly "
                    f"from step {before[-1]}")
        return (f"restore it, or move it out of {self.ckpt_dir} (analysis then uses the other checkpoints; the "
                "checkpoint before it has no optimiser state, so training cannot resume exactly from it)")

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
        """Rewrite an older checkpoint with parameters only (verified first: a damaged one is
        left as it is, never rewritten under a fresh checksum)."""
        path = self.checkpoint_path(step)
        if not path.is_file() or not checkpoint_has_resume_state(path):
            return
        try:
            tensors = read_checkpoint(path)
        except CheckpointDamaged:
            return  # the load that needs it reports it
        self.save_checkpoint(step, self.params_only(tensors), metadata=_checkpoint_metadata(path))

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


# ---------------------------------------------------------------------------------- readers
RESUME_MAY_CHANGE = ("train.epochs", "train.steps", "train.checkpoint_every")


def read_run_config(run: Run, extend: list[str] | None = None) -> C.RunConfig:
    """A run's own config.yaml, validated: the one reader that resume, analysis, model loading and
    the CLI share. `extend` (`--set` items on resume) may only lengthen the run (train.epochs /
    train.steps), space its later checkpoints differently (train.checkpoint_every: a run taken to
    several times its length need not keep its first cadence; the training does not depend on
    it), or restate a value it already has.

    A folder that is no run, or a config.yaml that is damaged or is a mapping the config model cannot
    take, is a one-line StoreError; a config that fails validation, or an `extend` that would change
    it, is a ConfigError.
    """
    raw = run.require().read_config()
    try:
        before = C.resolve(raw)
        for item in extend or []:
            key = item.split("=", 1)[0].strip()
            # the command that started the run, repeated with --resume, may restate its own settings
            if key not in RESUME_MAY_CHANGE and C.resolve(raw, [item]) != before:
                raise C.ConfigError(f"--set {key}: a resumed run keeps its config; only train.epochs, train.steps "
                                    "or train.checkpoint_every may change")
        after = C.resolve(raw, extend)
    except (C.ConfigError, StoreError):  # already one line naming the problem
        raise
    except (AttributeError, TypeError, ValueError) as err:  # a mapping the config model cannot take
        raise StoreError(f"{run.config_path} is corrupt ({type(err).__name__}); restore it from the "
                         "experiment with `grokscope config NAME`") from None
    for key in ("epochs", "steps"):
        old, new = getattr(before.train, key), getattr(after.train, key)
        if old is not None and new is not None and new < old:
            raise C.ConfigError(f"--set train.{key}={new}: a resumed run can only be lengthened (it has {old})")
    return after


def sweep_info(folder: Path) -> dict[str, Any]:
    """A sweep folder's sweep.json (its source, grid and seeds), or {} for a folder that is no sweep."""
    path = Path(folder) / "sweep.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise StoreError(f"{path} is corrupt (not JSON); rerun the sweep command to rewrite it") from None


def read_metrics(path: Path, table: str = "metrics"):
    """A run's metrics table (a pandas DataFrame), read without writing anything into the run folder.

    With no `-wal` file beside the database every row is in the main file, so it is opened
    read-only and immutable (SQLite creates no `-wal`/`-shm` files); a live run, or one killed
    before SQLite folded its log in, is read through the store as usual.
    """
    import pandas as pd

    db = Path(path) / "metrics.sqlite"
    try:
        if not db.exists() or Path(f"{db}-wal").exists():
            return Run(path).metrics(table)
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if table not in names:
                return pd.DataFrame({"step": pd.Series(dtype="int64")})
            return pd.read_sql_query(f'SELECT * FROM "{table}" ORDER BY step', con)
        finally:
            con.close()
    except (sqlite3.DatabaseError, pd.errors.DatabaseError) as err:  # one line for the user, not a traceback
        raise db_error(db, err) from None
