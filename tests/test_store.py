"""The run store: its metrics database under concurrent writers and damage, and its config reader."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from grokscope.store import Run, StoreError

WRITER = """
import sys
from grokscope.store import Run
run = Run(sys.argv[1])
for i in range(200):
    run.append("metrics", [{"step": i, "train_loss": 1.0 / (i + 1)}])
"""


def test_training_appends_while_the_analysis_rewrites_its_table(tmp_path):
    # A live run: the trainer appends metrics while `grokscope analyze` replaces the progress
    # table. A deferred transaction that reads before it writes failed at once ("database is
    # locked") against the other writer in WAL mode; both must wait their turn instead.
    run = Run(tmp_path / "r")
    run.append("metrics", [{"step": -1}])
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(run.path)], stderr=subprocess.PIPE, text=True)
    i = 0
    while child.poll() is None or i < 50:  # rewrite the table for as long as the other writer appends
        run.replace_table("progress", [{"step": s, "restricted_loss": float(i)} for s in range(20)])
        i += 1
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert len(run.metrics()) == 201 and len(run.metrics("progress")) == 20


def test_damage_past_the_header_is_a_one_line_error(tmp_path):
    run = Run(tmp_path / "r")
    run.append("metrics", [{"step": s, "train_loss": 0.5} for s in range(5000)])
    data = bytearray(run.db_path.read_bytes())
    page = 4096
    data[2 * page:6 * page] = b"\x5a" * (4 * page)  # the header is intact, the table's pages are not
    run.db_path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="is corrupt") as err:
        run.metrics()
    assert "\n" not in str(err.value)


def test_a_locked_database_is_not_called_corrupt(tmp_path):
    run = Run(tmp_path / "r")
    run.append("metrics", [{"step": 0}])
    holder = sqlite3.connect(run.db_path)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        import grokscope.store as S

        con = sqlite3.connect(run.db_path, timeout=0.1)
        with pytest.raises(sqlite3.OperationalError) as raw:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        con.close()
        msg = str(S.db_error(run.db_path, raw.value))
        assert "cannot be used" in msg and "corrupt" not in msg and "--overwrite" not in msg
    finally:
        holder.rollback()
        holder.close()


@pytest.mark.parametrize("content, problem", [
    (b"", "empty"),
    (b"seed: [0\n  bad: :", "not YAML: "),
    (b"- a list\n", "not a config: a YAML list"),
    (b"3\n", "not a config: a YAML int"),
    (b"\xff\xfe\x00binary", "not text"),
])
def test_a_damaged_config_is_one_line_naming_the_problem_and_the_remedy(tmp_path, content, problem):
    run = Run(tmp_path / "r")
    run.path.mkdir()
    run.config_path.write_bytes(content)
    with pytest.raises(StoreError) as err:
        run.read_config(remedy="do this")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{run.config_path} is damaged ({problem}") and msg.endswith("; do this")
    assert run.config_path.read_bytes() == content  # reading never rewrites it


def test_config_reader_returns_the_mapping_and_names_a_missing_file(tmp_path):
    run = Run(tmp_path / "r")
    run.path.mkdir()
    run.write_config("seed: 3\ntask: {p: 7}\n")
    assert run.read_config() == {"seed": 3, "task": {"p": 7}}
    run.config_path.unlink()
    with pytest.raises(StoreError, match=r"is damaged \(unreadable: No such file or directory\); restore it"):
        run.read_config()
