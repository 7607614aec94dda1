"""Sweeps: grid expansion, the local and Ray backends, kill and resume, the runs table."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

import grokscope
from grokscope import config as C
from grokscope import experiments
from grokscope.store import Run
from grokscope.sweep import local as L
from grokscope.sweep import plan, run_sweep
from grokscope.sweep.grid import expand, parse_grid, trial_name
from grokscope.sweep.table import runs_in, runs_table
from grokscope.sweep.trial import run_trial
from tests.conftest import need_extra, run_cli_here

TINY = {
    "seed": 0,
    "task": {"name": "modular", "p": 23, "frac_train": 0.5},
    "model": {"d_model": 32, "n_heads": 2, "d_head": 16, "d_mlp": 64},
    "optim": {"lr": 3e-3, "weight_decay": 1.0},
    "train": {"epochs": 100, "checkpoint_every": 50, "eval_every": 10},
}
SRC = str(Path(grokscope.__file__).resolve().parents[1])


def write_yaml(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI in a process of its own: for a parent whose exit or hang is what is tested (a sweep's
    trials are processes of their own either way; run_cli_here runs the parent in this one)."""
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run([sys.executable, "-m", "grokscope.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """mtime and content hash of every file in a folder."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ grid
def test_grid_parsing_and_names():
    grid = parse_grid(["optim.weight_decay=0.3,1", "task.n_train=700,null", "optim.betas=[0.9, 0.98],[0.9,0.999]"])
    assert grid == {"optim.weight_decay": [0.3, 1], "task.n_train": [700, None],
                    "optim.betas": [[0.9, 0.98], [0.9, 0.999]]}
    assert trial_name({"optim.weight_decay": 0.3, "seed": 1}) == "optim.weight_decay=0.3__seed=1"
    assert trial_name({"task.n_train": None, "optim.lr": 1e-4, "x": "a/b c"}) == "task.n_train=null__optim.lr=0.0001__x=a_b_c"
    with pytest.raises(C.ConfigError, match="KEY=V1"):
        parse_grid(["optim.weight_decay"])
    with pytest.raises(C.ConfigError, match="empty"):
        parse_grid(["optim.weight_decay=0.1,"])


def test_expand_product_seeds_and_validation():
    trials = expand(TINY, {"optim.weight_decay": [0.3, 1.0], "task.p": [23, 29]}, 2, ["train.epochs=7"])
    assert [t.name for t in trials][:3] == ["optim.weight_decay=0.3__task.p=23__seed=0",
                                           "optim.weight_decay=0.3__task.p=23__seed=1",
                                           "optim.weight_decay=0.3__task.p=29__seed=0"]
    assert len(trials) == 8 and len({t.name for t in trials}) == 8
    last = trials[-1].config
    assert (last.optim.weight_decay, last.task.p, last.seed, last.train.epochs) == (1.0, 29, 1, 7)
    assert last.name == trials[-1].name
    assert TINY["optim"]["weight_decay"] == 1.0  # the base config is not mutated
    with pytest.raises(C.ConfigError, match="task.p"):
        expand(TINY, {"task.p": [23, 24]}, None)  # 24 is not prime: refused before anything runs
    with pytest.raises(C.ConfigError, match="unknown key"):
        expand(TINY, {"optim.weight_dekay": [1]}, None)
    with pytest.raises(C.ConfigError, match="not both"):
        expand(TINY, {"seed": [1, 2]}, 3)
    with pytest.raises(C.ConfigError, match="drop one"):
        expand(TINY, {"optim.weight_decay": [0.3, 1.0]}, None, ["optim.weight_decay=2"])
    # zipped keys: one trial per tuple; --set wins over a zipped component (smoke runs)
    zipped = expand(TINY, {"task.p,train.epochs": [[23, 50], [29, 70]]}, None, ["train.epochs=5"])
    assert [t.name for t in zipped] == ["task.p=23__train.epochs=5__seed=0", "task.p=29__train.epochs=5__seed=0"]
    assert [(t.config.task.p, t.config.train.epochs) for t in zipped] == [(23, 5), (29, 5)]
    # a zip that names the seed: more seeds at one setting than another, seed last in the name
    seeded = expand(TINY, {"task.p,seed": [[23, 0], [23, 1], [29, 0]]}, None)
    assert [t.name for t in seeded] == ["task.p=23__seed=0", "task.p=23__seed=1", "task.p=29__seed=0"]
    assert [(t.config.task.p, t.config.seed) for t in seeded] == [(23, 0), (23, 1), (29, 0)]
    one = expand(TINY, {"task.p,seed": [[23, 0], [23, 1], [29, 0]]}, 1)  # --seeds 1: the first seed of each
    assert [t.name for t in one] == ["task.p=23__seed=0", "task.p=29__seed=0"]
    with pytest.raises(C.ConfigError, match="zips seed"):
        expand(TINY, {"task.p,seed": [[23, 0]], "seed": [1, 2]}, None)
    with pytest.raises(C.ConfigError, match="list of 2"):
        expand(TINY, {"task.p,train.epochs": [[23, 50], 29]}, None)


def test_every_named_experiment_plans(tmp_path):
    """Each named experiment resolves into valid trials, and says what it reproduces."""
    counts = {}
    for name in experiments.names():
        meta = experiments.meta(name)
        assert meta.get("reproduces") and meta.get("paper"), name
        counts[name] = len(plan(name, None, None, tmp_path / name).trials)
    assert not any(tmp_path.iterdir())  # planning writes nothing
    expected = {"seeds": 5, "data-fraction": 18, "weight-decay": 5, "primes": 4, "digit-addition": 2,
                "repeated-subsequence": 2, "skip-trigram": 9, "copy-lm-deep-seeds": 2,
                "copy-batch-size-large": 6, "dropout": 9, "dropout-long": 3}
    for name, n in expected.items():
        assert counts[name] == n, (name, counts[name])


# ------------------------------------------------------------------------------ local backend
def test_local_pool_runs_at_most_workers_at_once(tmp_path, monkeypatch):
    """The scheduler never has more than `workers` trial processes alive, and uses all of them.

    Each trial marks itself alive and stays until it has seen another trial alive (or every other
    trial is done), lingers 0.3 s more, and records the most trials it saw alive at once. A slow
    machine can delay a trial's start but not make the test fail; a pool that starts too many is
    seen during the linger.
    """
    for sub in ("alive", "done"):
        (tmp_path / sub).mkdir()
    script = """
import pathlib, sys, time
d, name, n = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
(d / "alive" / name).touch()
seen, t0, until = 0, time.monotonic(), None
while time.monotonic() - t0 < 20 and (until is None or time.monotonic() < until):
    seen = max(seen, len(list((d / "alive").iterdir())))
    if until is None and (seen >= 2 or len(list((d / "done").iterdir())) == n - 1):
        until = time.monotonic() + 0.3  # linger a little: a third trial started too soon is seen
    time.sleep(0.01)
(d / "alive" / name).unlink()
(d / "done" / name).write_text(str(seen))
"""
    n = 5
    monkeypatch.setattr(L, "command", lambda job: [sys.executable, "-c", script, str(tmp_path), job.name, str(n)])
    jobs = [L.TrialJob(f"t{i}", tmp_path / "cfg", tmp_path / f"t{i}", tmp_path / "logs" / f"t{i}.log", 1) for i in range(n)]
    results = L.run_local(jobs, workers=2)
    assert sorted(r["name"] for r in results) == [f"t{i}" for i in range(n)]
    seen = [int((tmp_path / "done" / f"t{i}").read_text()) for i in range(n)]
    assert max(seen) == 2, seen  # two at once, never three


def test_local_sweep_two_workers_and_runs_table(tmp_path):
    cfg = write_yaml(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "sweep"
    r = run_cli_here("sweep", str(cfg), "--grid", "optim.weight_decay=0.3,1", "--out", str(out), "--workers", "2")
    assert r.returncode == 0, r.stderr
    names = ["optim.weight_decay=0.3__seed=0", "optim.weight_decay=1__seed=0"]
    for n in names:
        info = Run(out / n).read_info()
        assert info["status"] == "completed" and info["last_step"] == 100
        assert info["threads"] == 1  # 2 cores or fewer shared by 2 workers
        assert yaml.safe_load((out / n / "config.yaml").read_text())["optim"]["weight_decay"] in (0.3, 1.0)
    table = runs_table(out)
    assert list(table["run"]) == names and list(table["optim.weight_decay"]) == [0.3, 1.0]
    assert {"test_loss", "gini_W_E", "gini_W_L", "key_frequencies", "logit_fve", "neuron_fve", "grok_epoch"} <= set(table.columns)
    assert (out / "runs.csv").read_text().count("\n") == 3  # header + one row per trial
    assert (out / "sweep.html").exists() and (out / "sweep_test_loss.png").stat().st_size > 1000
    # `grokscope runs` prints the same table
    r = run_cli_here("runs", str(out))
    assert r.returncode == 0 and all(n in r.stdout for n in names)
    (tmp_path / "empty").mkdir()
    r = run_cli_here("runs", str(tmp_path / "empty"))
    assert r.returncode == 2 and "holds no run folders" in r.stderr
    # a second run of the same sweep finds everything finished and touches no run folder
    before = {n: snapshot(out / n) for n in names}
    r = run_cli_here("sweep", str(cfg), "--grid", "optim.weight_decay=0.3,1", "--out", str(out), "--workers", "2")
    assert r.returncode == 0 and "2 already finished" in r.stdout
    assert before == {n: snapshot(out / n) for n in names}
    # the same folder with another config is refused, nothing touched
    r = run_cli_here("sweep", str(cfg), "--grid", "optim.weight_decay=0.3,1", "--out", str(out), "--set", "optim.lr=0.01")
    assert r.returncode == 2 and "different config" in r.stderr and "optim.lr" in r.stderr
    assert before == {n: snapshot(out / n) for n in names}
    r = run_cli_here("sweep", str(cfg), "--grid", "optim.weight_decay=0.3,1", "--out", str(out), "--threads", "0")
    assert r.returncode == 2 and "--threads must be at least 1" in r.stderr
    assert before == {n: snapshot(out / n) for n in names}


@pytest.mark.slow  # ~7 s, a trial process; by default test_threads_option_reaches_each_trials_job
def test_threads_option_sets_torch_threads_per_trial(tmp_path):
    cfg = write_yaml(tmp_path / "tiny.yaml", TINY)
    r = run_cli_here("sweep", str(cfg), "--grid", "train.epochs=20", "--out", str(tmp_path / "s"), "--workers", "1", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert Run(tmp_path / "s" / "train.epochs=20__seed=0").read_info()["threads"] == 1  # not cores // 1 worker


def test_threads_option_reaches_each_trials_job(tmp_path, monkeypatch):
    # test_threads_option_sets_torch_threads_per_trial without the trial's process: its command and
    # environment carry --threads (a trial records the threads its command gives it:
    # test_local_sweep_two_workers_and_runs_table)
    jobs: list[L.TrialJob] = []
    monkeypatch.setattr(L, "run_local", lambda js, workers, on_done=None: jobs.extend(js) or [])
    cfg = write_yaml(tmp_path / "tiny.yaml", TINY)
    r = run_cli_here("sweep", str(cfg), "--grid", "train.epochs=20", "--out", str(tmp_path / "s"), "--workers", "1",
                     "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert [j.threads for j in jobs] == [1]  # not cores // 1 worker
    assert L.command(jobs[0])[-2:] == ["--threads", "1"] and L.child_env(jobs[0].threads)["OMP_NUM_THREADS"] == "1"


@pytest.mark.slow  # ~15 s, three trial processes; test_a_killed_trial_is_recorded_as_interrupted_and_the_other_finishes checks the kill's bookkeeping by default
def test_killed_trial_is_resumed_and_the_others_untouched(tmp_path):
    raw = {**TINY, "train": {"epochs": 100, "checkpoint_every": 20, "eval_every": 10}}
    cfg = write_yaml(tmp_path / "tiny.yaml", raw)
    out = tmp_path / "sweep"
    args = ["sweep", str(cfg), "--grid", "train.epochs=100,300", "--out", str(out), "--workers", "2"]
    long = out / "train.epochs=300__seed=0"
    pid_file = out / ".trials" / "train.epochs=300__seed=0.pid"
    killed: list[int] = []

    def kill_the_long_trial() -> None:  # the sweep runs in this process, its trials in their own
        deadline = time.time() + 120
        while time.time() < deadline and not (pid_file.exists() and any(s > 0 for s in Run(long).checkpoint_steps())):
            time.sleep(0.02)
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGKILL)  # mid-run: it has a checkpoint after step 0
        killed.append(pid)

    killer = threading.Thread(target=kill_the_long_trial, daemon=True)
    killer.start()
    r = run_cli_here(*args)
    killer.join(timeout=240)
    assert killed, "the long trial was not killed"
    assert r.returncode == 1 and "1 of 2 trials did not finish" in r.stderr, r.stderr
    info = Run(long).read_info()
    assert info["status"] == "interrupted" and "SIGKILL" in info["error"]
    killed_at = max(Run(long).checkpoint_steps())
    assert 0 < killed_at < 300
    short = out / "train.epochs=100__seed=0"
    assert Run(short).read_info()["status"] == "completed"  # the other trial finished regardless
    before = snapshot(short)

    r = run_cli_here(*args)
    assert r.returncode == 0, r.stderr
    assert "1 already finished" in r.stdout
    info = Run(long).read_info()
    assert info["status"] == "completed" and info["last_step"] == 300 and info.get("resumed_at")
    assert info.get("error") is None
    steps = Run(long).metrics()["step"].tolist()
    assert steps == sorted(set(steps)) and steps[-1] == 300  # resumed, no step logged twice
    assert snapshot(short) == before


def test_failed_trial_says_why(tmp_path):
    cfg = C.resolve(TINY)
    out = tmp_path / "run"
    run = Run(out)
    run.write_config(C.to_yaml(cfg))
    run.update_info(status="running", last_step=50)
    run.ckpt_dir.mkdir(parents=True)
    run.checkpoint_path(50).write_bytes(b"not a safetensors file")
    with pytest.raises(Exception, match="corrupt"):
        run_trial(cfg, out, threads=1)
    info = run.read_info()
    assert info["status"] == "failed" and "corrupt" in info["error"] and "Traceback" in info["traceback"]


def test_copy_lm_deep_seeds_is_copy_lm_deep_at_other_seeds():
    deep, _ = experiments.load("copy-lm-deep")
    seeds = [t.config for t in plan("copy-lm-deep-seeds", None, None, Path("unused")).trials]
    assert [c.seed for c in seeds] == [1, 2]
    assert all(c.model_copy(update={"seed": deep.seed, "name": deep.name}) == deep for c in seeds)  # all else equal


def test_copy_batch_size_large_is_copy_batch_size_at_larger_batches():
    small, _ = experiments.load("copy-batch-size")
    large = [t.config for t in plan("copy-batch-size-large", None, None, Path("unused")).trials]
    assert sorted({(c.train.batch_size, c.train.steps) for c in large}) == [(64, 4000), (128, 4000)]
    assert sorted(c.seed for c in large) == [0, 0, 1, 1, 2, 2]
    for c in large:  # all else equal
        same = c.model_copy(update={"seed": small.seed, "name": small.name,
                                    "train": c.train.model_copy(update={"batch_size": small.train.batch_size,
                                                                        "steps": small.train.steps})})
        assert same == small


def test_dropout_long_is_dropout_at_p_0_1_for_longer():
    short = {t.config.name: t.config for t in plan("dropout", None, None, Path("unused")).trials}
    long = [t.config for t in plan("dropout-long", None, None, Path("unused")).trials]
    assert sorted((c.optim.dropout, c.seed, c.train.epochs) for c in long) == [(0.1, s, 150000) for s in (0, 1, 2)]
    for c in long:  # all else equal to the same trial of `dropout`
        same = short[c.name]
        assert c.model_copy(update={"train": c.train.model_copy(update={"epochs": same.train.epochs,
                                                                        "checkpoint_every": same.train.checkpoint_every})}) == same


def test_a_trial_that_fails_before_training_is_started_again_by_a_rerun(tmp_path, monkeypatch):
    from grokscope import pipeline

    def missing_corpus(*args, **kwargs):  # as the copy LM fails when a corpus is not installed
        raise C.ConfigError("the default corpus needs Jane Austen's novels")

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "train_run", missing_corpus)
        with pytest.raises(C.ConfigError):
            run_trial(C.resolve(TINY), out, threads=1)
    assert Run(out).is_run() and Run(out).read_info()["status"] == "failed"
    info = run_trial(C.resolve(TINY), out, threads=1)  # the sweep rerun, once the corpus is there
    assert info["status"] == "completed" and info.get("error") is None


def test_a_failing_trial_leaves_a_folder_that_is_not_a_run_as_it_was(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(Exception, match="not a grokscope run folder"):
        run_trial(C.resolve(TINY), out, threads=1)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


STAND_IN = """
import json, pathlib, sys, time
out, name = pathlib.Path(sys.argv[1]), sys.argv[2]
out.mkdir(parents=True, exist_ok=True)
if name.startswith("train.epochs=100_"):
    (out / "run.json").write_text(json.dumps({"status": "completed"}))
else:  # a long trial, still running when it is killed
    (out / "run.json").write_text(json.dumps({"status": "running"}))
    time.sleep(120)
"""


def test_a_killed_trial_is_recorded_as_interrupted_and_the_other_finishes(tmp_path, monkeypatch):
    # test_killed_trial_is_resumed_and_the_others_untouched with stand-ins for the trials' processes
    # (no torch to import): one marks its run finished, the other marks it running and is killed
    # (SIGKILL, of a real process). Resuming killed training is test_faults.py's; a rerun that skips
    # finished trials and touches nothing is test_local_sweep_two_workers_and_runs_table's.
    monkeypatch.setattr(L, "command", lambda job: [sys.executable, "-c", STAND_IN, str(job.out), job.name])
    cfg = write_yaml(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "sweep"
    long, short = out / "train.epochs=300__seed=0", out / "train.epochs=100__seed=0"
    pid_file = out / ".trials" / "train.epochs=300__seed=0.pid"
    killed: list[int] = []

    def kill_the_long_trial() -> None:
        deadline = time.time() + 60
        while time.time() < deadline and not (pid_file.exists() and Run(long).info_path.exists()):
            time.sleep(0.02)
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_the_long_trial, daemon=True)
    killer.start()
    r = run_cli_here("sweep", str(cfg), "--grid", "train.epochs=100,300", "--out", str(out), "--workers", "2")
    killer.join(timeout=60)
    assert killed, "the long trial was not killed"
    assert r.returncode == 1 and "1 of 2 trials did not finish (train.epochs=300__seed=0)" in r.stderr, r.stderr
    info = Run(long).read_info()
    assert info["status"] == "interrupted" and "killed by SIGKILL" in info["error"] and "rerun the sweep" in info["error"]
    assert Run(short).read_info() == {"status": "completed"}  # the other trial finished regardless


# ------------------------------------------------------------------------------ ray backend
def test_ray_backend_without_ray_exits_2(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    cfg = write_yaml(tmp_path / "tiny.yaml", TINY)
    with pytest.raises(C.ConfigError, match=r"pip install 'grokscope\[ray\]'"):
        run_sweep(str(cfg), ["optim.weight_decay=0.3,1"], None, tmp_path / "out", backend="ray", echo=lambda m: None)
    assert not (tmp_path / "out").exists()  # refused before the first write


def need_ray() -> None:
    need_extra("ray", "ray")


@pytest.mark.slow  # ~25 s, most of it starting Ray; test_sweep_robust's FakeRay tests check run_ray's scheduling by default
def test_ray_backend_local_cluster(tmp_path):
    need_ray()
    cfg = write_yaml(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "sweep"
    lines: list[str] = []
    results = run_sweep(str(cfg), ["optim.weight_decay=0.3,1"], None, out, backend="ray", workers=2, echo=lines.append)
    assert sorted(r["status"] for r in results) == ["completed", "completed"]
    assert len(runs_table(out)) == 2
    for r in results:
        assert Run(out / r["name"]).read_info()["last_step"] == 100


# ------------------------------------------------------------------------------ experiment sweeps
def test_yaml_sweep_section_is_the_default_grid(tmp_path):
    raw = {**TINY, "experiment": {"title": "t", "sweep": {"grid": {"task.frac_train": [0.4, 0.6]}, "seeds": 2}}}
    cfg = write_yaml(tmp_path / "exp.yaml", raw)
    p = plan(str(cfg), None, None, tmp_path / "out")
    assert [t.name for t in p.trials] == ["task.frac_train=0.4__seed=0", "task.frac_train=0.4__seed=1",
                                         "task.frac_train=0.6__seed=0", "task.frac_train=0.6__seed=1"]
    p = plan(str(cfg), ["optim.lr=0.01"], 1, tmp_path / "out")  # the command line replaces it
    assert [t.name for t in p.trials] == ["optim.lr=0.01__seed=0"]
    json.dumps(p.grid)


# ------------------------------------------------------------------------------ sweep report
def test_sweep_summary_by_hand(tmp_path):
    import pandas as pd

    from grokscope.report.sweep import grok_figure, ours_table, time_axis

    table = pd.DataFrame({"run": ["a", "b", "c", "d"], "task.n_train": pd.Series([700, 700, None, None], dtype=object),
                          "grok_epoch": [100.0, 300.0, None, None], "grok_step": [1100, 3300, None, None],
                          "test_loss": [0.1, 0.3, 2.0, 4.0], "epoch": [500.0, 500.0, 900.0, 900.0],
                          "step": [5500, 5500, 900, 900]})
    ours = ours_table(table, ["task.n_train"]).to_dict("records")
    assert ours[0] == {"setting": "task.n_train=700", "runs": 2, "grokked": 2, "mean grok epoch": 200.0,
                       "mean test loss": pytest.approx(0.2)}
    assert ours[1]["setting"] == "task.n_train=null" and ours[1]["grokked"] == 0 and pd.isna(ours[1]["mean grok epoch"])
    full = {"a": pd.DataFrame({"step": [0, 10], "epoch": [0.0, 10.0]})}
    mini = {"a": pd.DataFrame({"step": [0, 11], "epoch": [0.0, 1.0]})}
    assert time_axis(full) == "epoch" and time_axis(mini) == "step"
    assert grok_figure(table, "task.n_train", tmp_path / "g.png", unit="step").stat().st_size > 1000


def test_an_interrupted_trial_is_not_drawn_as_one_that_did_not_grok():
    from grokscope.report.sweep import grok_outcomes

    group = [{"status": "stopped_early", "grok_epoch": 2300.0, "epoch": 3300.0},
             {"status": "completed", "grok_epoch": None, "epoch": 25000.0},
             {"status": "interrupted", "grok_epoch": None, "epoch": 600.0},
             {"status": "failed", "grok_epoch": float("nan"), "epoch": 50.0},
             {"grok_epoch": None, "epoch": 900.0}]  # no status column: a table of finished runs
    assert grok_outcomes(group, "grok_epoch", "epoch") == ([2300.0], [25000.0, 900.0], [600.0, 50.0])


def test_runs_are_listed_in_numeric_order(tmp_path):
    names = ["task.frac_train=0.95__seed=0", "task.frac_train=0.9__seed=0", "task.frac_train=0.25__seed=10",
             "task.frac_train=0.25__seed=2"]
    for n in names:
        Run(tmp_path / n).write_config("seed: 0\n")
    assert [p.name for p in runs_in(tmp_path)] == [
        "task.frac_train=0.25__seed=2", "task.frac_train=0.25__seed=10", "task.frac_train=0.9__seed=0",
        "task.frac_train=0.95__seed=0"]


def test_reproduce_passes_workers_and_threads_to_a_sweep_experiment(tmp_path, monkeypatch, capsys):
    import grokscope.sweep as S
    from grokscope import cli

    seen = {}

    def fake_run_sweep(config, grid, seeds, out, **kw):
        seen.update(config=config, out=out, **kw)
        return []

    monkeypatch.setattr(S, "run_sweep", fake_run_sweep)
    monkeypatch.setattr(sys, "argv", ["grokscope", "reproduce", "copy-batch-size", "--out", str(tmp_path / "s"),
                                      "--workers", "1", "--threads", "1", "-q"])
    cli.main()
    assert seen["config"] == "copy-batch-size" and seen["workers"] == 1 and seen["threads"] == 1
    # a one-run experiment has no workers: one line on stderr, exit 2, nothing written
    monkeypatch.setattr(sys, "argv", ["grokscope", "reproduce", "mainline", "--out", str(tmp_path / "m"), "--workers", "2"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2 and "--workers applies to sweep experiments" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_differing_settings_names_what_sets_runs_apart(tmp_path):
    from grokscope.sweep.table import differing_settings

    base = {"seed": 0, "task": {"name": "modular", "p": 23, "cache_dir": "/a"}, "optim": {"weight_decay": 1.0}}
    other = {"seed": 1, "task": {"name": "modular", "p": 23, "cache_dir": "/b"}, "optim": {"weight_decay": 0.3},
             "train": {"stop": {"metric": "test_acc"}}}
    for name, raw in (("a", base), ("b", other)):
        Run(tmp_path / name).write_config(yaml.safe_dump(raw))
    Run(tmp_path / "broken").write_config("seed: [unclosed\n")
    got = differing_settings(runs_in(tmp_path))
    assert got == {"a": {"optim.weight_decay": 1.0, "seed": 0, "train.stop.metric": None},
                   "b": {"optim.weight_decay": 0.3, "seed": 1, "train.stop.metric": "test_acc"}}
    assert differing_settings([tmp_path / "a"]) == {}  # one run: nothing to compare


def test_runs_compares_runs_trained_one_by_one(tmp_path):
    from grokscope.pipeline import train_run

    folder = tmp_path / "mine"
    for name, wd in (("low", 0.3), ("high", 3.0)):
        cfg = C.resolve(TINY, [f"optim.weight_decay={wd}", "train.epochs=40", "train.threads=1"])
        train_run(cfg, folder / name, progress=False)
    r = run_cli_here("runs", str(folder))
    assert r.returncode == 0, r.stderr
    table = runs_table(folder)
    assert table.attrs["settings"] == ["optim.weight_decay"]
    assert dict(zip(table["run"], table["optim.weight_decay"], strict=True)) == {"high": 3.0, "low": 0.3}
    assert "optim.weight_decay" in r.stdout and f"page: {folder / 'runs.html'}" in r.stdout
    page = (folder / "runs.html").read_text()
    assert "Runs in mine" in page and "<code>optim.weight_decay</code>" in page
    assert (folder / "runs_test_loss.png").stat().st_size > 1000
    assert (folder / "runs_grok_optim_weight_decay.png").stat().st_size > 1000
    assert not (folder / "sweep.html").exists()
