"""Sweeps against bad state: Ray CPU accounting, the atomic .pid file, damaged trial files."""

from __future__ import annotations

import gc
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from grokscope import config as C
from grokscope.store import Run, StoreError
from grokscope.sweep import check_existing, plan, run_sweep
from grokscope.sweep import local as L
from grokscope.sweep import ray_backend as R
from grokscope.sweep.table import runs_table
from tests.conftest import run_cli_here
from tests.test_sweep import TINY as BASE
from tests.test_sweep import cli, need_ray, write_yaml

TINY = {**BASE, "train": {"epochs": 10, "checkpoint_every": 5, "eval_every": 5}}


def job(tmp_path: Path, name: str, threads: int = 1) -> L.TrialJob:
    return L.TrialJob(name, tmp_path / "cfg.yaml", tmp_path / name, tmp_path / ".trials" / f"{name}.log", threads)


# ------------------------------------------------------------------------------ Ray CPU accounting
class FakeRay:
    """Just enough of `ray` for run_ray: records what it was asked, "runs" each task at once."""

    def __init__(self, cluster_cpus: int | None = None):
        self.cluster_cpus = cluster_cpus  # None: no cluster until init() starts a local one
        self.init_kw: dict | None = None
        self.asked: list[float] = []
        self.shut = False

    def is_initialized(self) -> bool:
        return self.cluster_cpus is not None

    def init(self, **kw) -> None:
        self.init_kw = kw
        if self.cluster_cpus is None:
            self.cluster_cpus = kw["num_cpus"]

    def nodes(self) -> list[dict]:
        return [{"Alive": True, "Resources": {"CPU": float(self.cluster_cpus)}},
                {"Alive": False, "Resources": {"CPU": 64.0}}]  # a dead node's CPUs do not count

    def remote(self, fn):
        fake = self

        class Task:
            def options(self, num_cpus, max_retries):
                fake.asked.append(num_cpus)
                return self

            def remote(self, j):
                return ("ref", j.name)

        return Task()

    def wait(self, refs, num_returns=1):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return {"name": ref[1], "status": "completed"}

    def shutdown(self) -> None:
        self.shut = True


def test_ray_tasks_always_fit_the_cpus_there_are(tmp_path, monkeypatch):
    # local Ray, threads > workers (--workers 1 on 2 cores: 2 threads): room for the 2-CPU task
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    results = R.run_ray([job(tmp_path, "a", threads=2), job(tmp_path, "b", threads=2)], workers=1)
    assert [r["name"] for r in results] == ["a", "b"]
    assert fake.init_kw["num_cpus"] == 2 and fake.asked == [2, 2] and fake.shut
    # a cluster already running, smaller than the threads: each task asks for what a node has
    fake = FakeRay(cluster_cpus=1)
    monkeypatch.setitem(sys.modules, "ray", fake)
    R.run_ray([job(tmp_path, "a", threads=4)], workers=2)
    assert fake.init_kw is None and fake.asked == [1] and not fake.shut  # not ours to shut down
    # joining a cluster with no CPU at all: one line saying so, instead of waiting forever
    fake = FakeRay(cluster_cpus=0)
    fake.is_initialized = lambda: False
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(C.ConfigError, match=r"Ray cluster at ray://h:10001 has no node with a CPU") as e:
        R.run_ray([job(tmp_path, "a")], workers=1, address="ray://h:10001")
    assert "\n" not in str(e.value) and fake.shut and fake.asked == []
    # nothing to run: Ray is not even started
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    assert R.run_ray([], workers=2) == [] and fake.init_kw is None


@pytest.mark.slow  # ~25 s (a CLI process starting Ray); test_ray_tasks_always_fit_the_cpus_there_are checks the same CPU accounting by default
def test_ray_one_worker_many_threads_does_not_hang(tmp_path):
    """`--workers 1 --threads 2`: a local Ray with 1 CPU would never schedule the 2-CPU task."""
    need_ray()
    cfg = write_yaml(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "s"
    r = cli("sweep", str(cfg), "--grid", "optim.lr=0.001", "--backend", "ray", "--workers", "1", "--threads", "2",
            "--out", str(out), "-q")  # a hang fails as TimeoutExpired instead of blocking the suite
    assert r.returncode == 0, r.stderr
    info = Run(out / "optim.lr=0.001__seed=0").read_info()
    assert info["status"] == "completed" and info["last_step"] == 10 and info["threads"] == 2


# ------------------------------------------------------------------------------ the .pid file
def test_pid_file_is_written_atomically(tmp_path, monkeypatch):
    writes = []
    real = L.atomic_write_text
    monkeypatch.setattr(L, "atomic_write_text", lambda path, text: (writes.append((path, text)), real(path, text)))
    monkeypatch.setattr(L, "command", lambda j: [sys.executable, "-c", "pass"])
    j = job(tmp_path, "t")
    pid_path = j.log_path.with_suffix(".pid")
    pid_path.parent.mkdir(parents=True)
    pid_path.write_text("999999\n")  # a stale one from an earlier sweep is replaced whole
    proc = L.start(j)
    proc.wait()
    assert writes == [(pid_path, f"{proc.pid}\n")] and pid_path.read_text() == f"{proc.pid}\n"
    assert sorted(p.name for p in pid_path.parent.iterdir()) == ["t.log", "t.pid"]  # no temp file left


def test_trial_is_stopped_when_its_pid_cannot_be_written(tmp_path, monkeypatch):
    started = []
    real_popen = subprocess.Popen

    def popen(*a, **kw):
        started.append(real_popen(*a, **kw))
        return started[-1]

    def disk_full(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(L.subprocess, "Popen", popen)
    monkeypatch.setattr(L, "atomic_write_text", disk_full)
    monkeypatch.setattr(L, "command", lambda j: [sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(OSError, match="No space"):
        L.start(job(tmp_path, "t"))
    assert len(started) == 1 and started[0].poll() is not None  # no untracked trial left running


# ------------------------------------------------------------------------------ damaged trial config
@pytest.mark.parametrize("content, problem", [
    (b"seed: [0\n  bad: :", "not YAML"),
    (b"- a list\n", "a YAML list"),
    (b"\xff\xfe\x00binary", "not text"),
])
def test_damaged_trial_config_is_one_line_store_error(tmp_path, content, problem):
    cfg = write_yaml(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "s"
    p = plan(str(cfg), ["optim.lr=0.001,0.002"], None, out)
    trial = out / p.trials[1].name
    trial.mkdir(parents=True)
    (trial / "config.yaml").write_bytes(content)
    with pytest.raises(C.ConfigError, match="not only a grokscope run"):
        check_existing(p, overwrite=True)  # without run.json's marker it is not a run: never deleted
    (trial / "run.json").write_text('{"format": "grokscope-run/1", "status": "interrupted"}')
    with pytest.raises(StoreError, match=problem) as e:
        check_existing(p, overwrite=False)
    msg = str(e.value)
    assert "\n" not in msg and str(trial / "config.yaml") in msg and "delete the trial folder" in msg
    assert "--overwrite" in msg
    check_existing(p, overwrite=True)  # --overwrite replaces it: nothing to compare
    # a rerun of the sweep stops there, before writing anything
    with pytest.raises(StoreError, match="is damaged"):
        run_sweep(str(cfg), ["optim.lr=0.001,0.002"], None, out, workers=1, echo=lambda m: None)
    assert sorted(q.name for q in out.iterdir()) == [trial.name]
    assert (trial / "config.yaml").read_bytes() == content


def test_damaged_trial_config_exits_2_from_the_cli(tmp_path):
    cfg = write_yaml(tmp_path / "tiny.yaml", TINY)
    trial = tmp_path / "s" / "optim.lr=0.001__seed=0"
    trial.mkdir(parents=True)
    (trial / "config.yaml").write_text("seed: [0\n")
    r = run_cli_here("sweep", str(cfg), "--grid", "optim.lr=0.001", "--out", str(tmp_path / "s"), "-q")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "is damaged" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------ damaged runs in the table
def fake_trial(folder: Path, name: str, lr: float) -> Run:
    """A finished, analysed trial folder written by hand (no training: milliseconds)."""
    run = Run(folder / name)
    run.write_config(C.to_yaml(C.resolve({**TINY, "optim": {**TINY["optim"], "lr": lr}})))
    run.update_info(status="completed", last_step=10, grok_epoch_99=None, steps_per_epoch=1)
    run.append("metrics", [{"step": s, "epoch": s, "train_loss": 1.0 / (s + 1), "test_loss": 3.0 - 0.1 * s,
                            "test_acc": 0.1} for s in (0, 5, 10)])
    run.write_summary({"test_loss": 2.0, "test_acc": 0.1, "gini_W_E": 0.2, "gini_W_L": 0.3,
                       "key_frequencies": [1, 2], "logit_fve": 0.5, "neuron_fve": 0.4})
    return run


def damaged_sweep(folder: Path) -> list[str]:
    names = [f"optim.lr={lr}__seed=0" for lr in ("0.001", "0.002", "0.003", "0.004", "0.005")]
    runs = [fake_trial(folder, n, 0.001 * (i + 1)) for i, n in enumerate(names)]
    gc.collect()  # closes the store's SQLite connections: the folders look like finished runs (no -wal)
    assert not list(folder.rglob("*-wal"))
    (runs[1].analysis_dir / "summary.json").write_text("{oops")
    runs[2].info_path.write_text("{oops")
    runs[3].db_path.write_bytes(b"this is not an SQLite database" * 10)
    (runs[4].analysis_dir / "summary.json").write_text("[1, 2]")  # JSON, but not a summary
    (folder / "sweep.json").write_text(json.dumps({
        "source": "tiny.yaml", "grid": {"optim.lr": [0.001, 0.002, 0.003, 0.004, 0.005]}, "seeds": None,
        "trials": [{"name": n, "settings": {"optim.lr": 0.001 * (i + 1), "seed": 0}} for i, n in enumerate(names)]}))
    return names


def test_runs_table_marks_damaged_trials_and_keeps_the_rest(tmp_path):
    from grokscope.report.sweep import write_sweep_report

    names = damaged_sweep(tmp_path)
    table = runs_table(tmp_path)
    rows = {r["run"]: r for r in table.to_dict("records")}
    assert list(rows) == names
    good, bad_summary, bad_info, bad_db, list_summary = (rows[n] for n in names)
    assert good["status"] == "completed" and good["gini_W_E"] == 0.2 and not isinstance(good["damaged"], str)
    assert bad_summary["status"] == "completed" and bad_summary["damaged"] == "analysis/summary.json"
    assert bad_summary["test_loss"] == 2.0  # the last evaluation stands in for the summary's test loss
    assert "grokscope analyze" in bad_summary["error"]
    assert bad_info["status"] == "damaged" and bad_info["damaged"] == "run.json" and bad_info["gini_W_E"] == 0.2
    assert bad_db["damaged"] == "metrics.sqlite" and "is corrupt" in bad_db["error"] and bad_db["gini_W_E"] == 0.2
    assert list_summary["damaged"] == "analysis/summary.json" and "holds a list" in list_summary["error"]
    assert all("\n" not in r["error"] for r in (bad_summary, bad_info, bad_db, list_summary))
    assert "damaged" in write_sweep_report(tmp_path, table).read_text()  # the page is drawn all the same


def test_runs_command_prints_the_table_despite_damaged_trials(tmp_path):
    names = damaged_sweep(tmp_path)
    before = {n: sorted(p.name for p in (tmp_path / n).rglob("*")) for n in names}
    r = run_cli_here("runs", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert all(n in r.stdout for n in names) and "damaged" in r.stdout
    assert (tmp_path / "runs.csv").read_text().count("\n") == 6 and (tmp_path / "sweep.html").exists()
    assert before == {n: sorted(p.name for p in (tmp_path / n).rglob("*")) for n in names}  # nothing repaired or lost


# ------------------------------------------------------------------------------ --ray-address
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_address_where_nothing_listens_is_refused_at_once(tmp_path):
    """Ray's own retries took over 200 s to give up on such an address; the check takes a moment."""
    need_ray()
    cfg = write_yaml(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "s"
    port = _closed_port()
    t0 = time.monotonic()
    r = run_cli_here("sweep", str(cfg), "--grid", "optim.lr=0.001", "--backend", "ray", "--ray-address",
                     f"127.0.0.1:{port}", "--out", str(out), "-q")
    assert r.returncode == 2 and time.monotonic() - t0 < 60
    assert f"--ray-address 127.0.0.1:{port}: nothing answers at 127.0.0.1:{port}" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


def test_ray_address_check_passes_a_listening_port_and_leaves_other_forms_to_ray():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        R.check_address(f"127.0.0.1:{port}")
        R.check_address(f"ray://127.0.0.1:{port}")
    for form in ("auto", "localhost:notaport"):
        R.check_address(form)  # Ray's own forms and errors
    with pytest.raises(C.ConfigError, match="nothing answers at 127.0.0.1:"):
        R.check_address(f"ray://127.0.0.1:{_closed_port()}")
