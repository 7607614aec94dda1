"""What grokscope promises about a user's files: nothing outside what the user named is written
or deleted, damage is detected, one writer per folder, bounded inputs, one line for bad input.

Each test drives the real CLI (in a subprocess where the exit code, a kill or a second process
matters) on runs of a few dozen steps.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from grokscope import config as C
from grokscope import experiments, pipeline
from grokscope.store import LOCK_NAME, Run, StoreError, read_checkpoint
from tests.conftest import TINY, run_cli_here

SET = [a for o in TINY for a in ("--set", o)]


def _train(out: Path, *extra: str, epochs: int = 60) -> subprocess.CompletedProcess:
    return run_cli_here("train", "mainline", "--out", str(out), "-q", *SET, "--set", f"train.epochs={epochs}",
                   "--set", "train.checkpoint_every=20", *extra)


def _one_line_exit_2(res: subprocess.CompletedProcess, *words: str) -> None:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("grokscope: "), res.stderr
    assert "Traceback" not in res.stderr
    for w in words:
        assert w in lines[0], lines[0]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rel") / "run"
    res = _train(out)
    assert res.returncode == 0, res.stderr
    return out


# --------------------------------------------------------------------------- names and --overwrite
@pytest.mark.parametrize("name", ["../../escaped", "/tmp/grokscope-absolute", "a/b", "..", ".hidden", "x" * 101])
def test_a_name_is_one_plain_path_component(tmp_path, name):
    res = run_cli_here("train", "mainline", "-q", *SET, "--set", f"name={name}", cwd=str(tmp_path))
    _one_line_exit_2(res, "name")
    assert list(tmp_path.iterdir()) == []  # nothing written, here or anywhere the name pointed
    assert not Path("/tmp/grokscope-absolute").exists()


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("name: looks like a run\n")
    (out / "important.txt").write_text("keep me")
    before = _tree(out)
    _one_line_exit_2(_train(out, "--overwrite"), "not a grokscope run")
    assert _tree(out) == before


def test_overwrite_refuses_a_run_folder_holding_the_users_files(trained, tmp_path):
    out = tmp_path / "run"
    assert _train(out, epochs=20).returncode == 0
    (out / "notes.txt").write_text("my notes")
    before = _tree(out)
    _one_line_exit_2(_train(out, "--overwrite", epochs=20), "notes.txt")
    assert _tree(out) == before


def test_overwrite_replaces_a_run(tmp_path):
    out = tmp_path / "run"
    assert _train(out, epochs=20).returncode == 0
    res = _train(out, "--overwrite", "--set", "seed=1", epochs=20)
    assert res.returncode == 0, res.stderr
    assert Run(out).read_info()["seed"] == 1 and Run(out).read_info()["format"] == "grokscope-run/1"


def test_a_sweep_overwrite_never_deletes_a_trial_folder_that_is_not_a_run(tmp_path):
    out = tmp_path / "sw"
    trial = out / "seed=0"
    trial.mkdir(parents=True)
    (trial / "data.csv").write_text("1,2\n")
    res = run_cli_here("sweep", "mainline", "--seeds", "1", "--out", str(out), "--overwrite", "-q", *SET,
                  "--set", "train.epochs=10")
    _one_line_exit_2(res, "not only a grokscope run")
    assert (trial / "data.csv").read_text() == "1,2\n"


# --------------------------------------------------------------------------- damaged checkpoints
def _flip_middle(path: Path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) - len(data) // 3  # inside the tensor data, past the JSON header
    data[mid:mid + n] = bytes(b ^ 0xFF for b in data[mid:mid + n])
    path.write_bytes(bytes(data))


def test_every_checkpoint_carries_a_checksum_that_every_load_verifies(trained, tmp_path):
    run = Run(trained)
    path = run.checkpoint_path(run.checkpoint_steps()[-1])
    good = read_checkpoint(path)
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes())
    _flip_middle(copy)
    with pytest.raises(ValueError, match="checksum"):
        read_checkpoint(copy)
    assert all(torch.equal(good[k], v) for k, v in read_checkpoint(path).items())


@pytest.mark.parametrize("damage", ["mid-data", "truncated", "zero-length", "header", "folder"])
def test_a_damaged_checkpoint_stops_resume_analyze_and_report_with_one_line(tmp_path, damage):
    out = tmp_path / "run"
    assert _train(out).returncode == 0
    run = Run(out)
    run.update_info(status="interrupted")  # as after a kill: resume would train on
    path = run.checkpoint_path(60)
    if damage == "mid-data":
        _flip_middle(path)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "zero-length":
        path.write_bytes(b"")
    elif damage == "header":
        data = bytearray(path.read_bytes())
        data[8:40] = b"\xff" * 32
        path.write_bytes(bytes(data))
    else:
        path.unlink()
        path.mkdir()
    others = {p: p.read_bytes() for p in run.ckpt_dir.iterdir() if p.is_file() and p != path}
    for args in (["train", "--resume", str(out), "--set", "train.epochs=80"], ["analyze", str(out)],
                 ["report", str(out), "--no-png"]):
        res = run_cli_here(*args)
        _one_line_exit_2(res, str(path))
    res = run_cli_here("train", "--resume", str(out), "--set", "train.epochs=80")
    assert "continues exactly from step 40" in res.stderr  # the way back is named
    assert {p: p.read_bytes() for p in others} == others  # nothing else touched
    assert run.read_info()["last_step"] == 60


def test_after_moving_a_damaged_checkpoint_aside_resume_ends_where_an_unbroken_run_does(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert _train(ref, epochs=80).returncode == 0
    assert _train(out, epochs=60).returncode == 0
    _flip_middle(Run(out).checkpoint_path(60))
    Run(out).checkpoint_path(60).rename(tmp_path / "damaged.safetensors")
    res = run_cli_here("train", "--resume", str(out), "-q", "--set", "train.epochs=80")
    assert res.returncode == 0, res.stderr
    _assert_same_run(ref, out)


def _assert_same_run(a: Path, b: Path) -> None:
    ra, rb = Run(a), Run(b)
    ta, tb = ra.load_checkpoint()[1], rb.load_checkpoint()[1]
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    ma, mb = ra.metrics().drop(columns=[], errors="ignore"), rb.metrics()
    assert ma.to_dict("records") == mb.to_dict("records")


# --------------------------------------------------------------------------- one writer per folder
@contextlib.contextmanager
def _lock_held(folder: Path) -> Iterator[subprocess.Popen]:
    """Another process holding a folder's writer lock, as a training would; SIGKILLed after."""
    code = ("import sys, time; from pathlib import Path; from grokscope.store import folder_lock\n"
            "with folder_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_writer_on_a_run_folder_is_refused_naming_the_holder(trained):
    with _lock_held(trained) as holder:
        before = _tree(trained)
        res = run_cli_here("train", "--resume", str(trained), "--set", "train.epochs=80")
        _one_line_exit_2(res, "being written by process", str(holder.pid))
        assert _tree(trained) == before
        # readers keep working meanwhile
        assert len(Run(trained).metrics()) > 0
        assert run_cli_here("runs", str(trained.parent)).returncode == 0


def test_a_second_sweep_into_one_folder_is_refused(tmp_path):
    out = tmp_path / "sw"
    with _lock_held(out) as holder:
        res = run_cli_here("sweep", "mainline", "--seeds", "1", "--out", str(out), "-q", *SET, "--set", "train.epochs=10")
        _one_line_exit_2(res, "sweep folder", str(holder.pid))
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    with _lock_held(out):
        pass  # leaving kills the holder with SIGKILL: no cleanup code of its runs
    fd = os.open(out / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free at once
    finally:
        os.close(fd)


@pytest.mark.slow  # ~7-20 s, two CLI processes; by default test_a_second_writer_on_a_run_folder_is_refused_naming_the_holder
def test_two_resumes_at_once_one_trains_the_other_refuses(tmp_path):
    out = tmp_path / "run"
    assert _train(out, epochs=40).returncode == 0
    Run(out).update_info(status="interrupted")
    args = [sys.executable, "-m", "grokscope.cli", "train", "--resume", str(out), "-q", "--set", "train.epochs=400"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes == [0, 2], results
    steps = Run(out).metrics()["step"].tolist()
    assert steps == sorted(set(steps)) and steps[-1] == 400  # no duplicated rows


# --------------------------------------------------------------------------- sizes and YAML
def test_an_alias_bomb_is_refused_at_once(tmp_path):
    bomb = ["paper:", '  a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        bomb.append(f"  {name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]")
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text("\n".join(bomb) + "\n")
    t0 = time.perf_counter()
    res = run_cli_here("train", str(cfg), "--out", str(tmp_path / "o"))
    assert time.perf_counter() - t0 < 60
    _one_line_exit_2(res, "aliases")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("override, words", [
    ("train.epochs=1e12", "train.epochs"),
    ("train.epochs=1000000000000", "train.epochs"),
    ("task.p=100003", "task.p"),
    ("model.d_model=100000000", "model.d_model"),
    ("optim.filter.window=1000000000", "window"),
    ("train.threads=100000", "train.threads"),
    ("optim.lr=inf", "optim.lr"),
    ("optim.weight_decay=.inf", "optim.weight_decay"),
    ("optim.lr=1e30", "optim.lr"),
    ("model.rope_base=inf", "rope_base"),
    ("optim.lr=nan", "optim.lr"),
    ("seed=-1", "seed"),
])
def test_out_of_bounds_values_are_refused_before_anything_is_written(tmp_path, override, words):
    out = tmp_path / "o"
    res = run_cli_here("train", "mainline", "--out", str(out), "-q", "--set", override)
    _one_line_exit_2(res, words)
    assert not out.exists()


def test_a_config_too_big_for_memory_is_refused_before_allocating(tmp_path):
    out = tmp_path / "o"
    res = run_cli_here("train", "mainline", "--out", str(out), "-q", "--set", "task.p=4099")
    _one_line_exit_2(res, "GiB")
    assert not out.exists()


@pytest.mark.parametrize("content, words", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not text"),
    (b"paper: " + b"{a: " * 3000 + b"1" + b"}" * 3000 + b"\n", "nested too deeply"),
    (b"[" * 5000, "nested too deeply"),
    (b"paper:\n" + b"".join(b"  " * i + b"b:\n" for i in range(1, 1200)), "too large"),
    (b"seed: 1\nseed: 2\n", "duplicate key"),
    (b"", "empty"),
    (b"# only a comment\n", "empty"),
    (b"- a\n- b\n", "mapping"),
], ids=["binary", "deep-flow", "deep-list", "huge", "duplicate", "empty", "comment", "list"])
def test_a_bad_config_file_is_one_line(tmp_path, content, words):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(content)
    res = run_cli_here("train", str(cfg), "--out", str(tmp_path / "o"))
    _one_line_exit_2(res, words)
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- paths
def test_bad_out_paths_are_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, words in ((afile / "sub", "is a file"), (tmp_path / ("n" * 300), "255"),
                       (Path("/proc/grokscope-x"), "")):
        res = run_cli_here("train", "mainline", "--out", str(out), "-q", *SET, "--set", "train.epochs=5")
        _one_line_exit_2(res, words)
    assert afile.read_text() == "x"


def test_resume_of_a_file_or_a_missing_folder_is_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    _one_line_exit_2(run_cli_here("train", "--resume", str(afile)), "is a file")
    _one_line_exit_2(run_cli_here("train", "--resume", str(tmp_path / "nope")), "does not exist")


@pytest.mark.parametrize("args, words", [
    (["train", "--resume", "RUN", "--overwrite"], "pick one"),
    (["train", "--resume", "RUN", "--out", "SW"], "drop --out"),
    (["analyze", "RUN", "--threads", "0"], "--threads"),
    (["sweep", "mainline", "-w", "0", "--out", "SW"], "--workers"),
    (["train", "missing.yaml"], "does not exist"),
    (["train", "no-such-experiment"], "unknown experiment"),
])
def test_small_misuses_are_one_line(trained, tmp_path, args, words):
    args = [a.replace("RUN", str(trained)).replace("SW", str(tmp_path / "sw")) for a in args]
    before = _tree(trained)
    _one_line_exit_2(run_cli_here(*args, cwd=str(tmp_path)), words)
    assert _tree(trained) == before
    assert not (tmp_path / "sw").exists()


# --------------------------------------------------------------------------- diverged runs
def test_a_run_whose_loss_becomes_non_finite_is_marked_diverged_and_stops(tmp_path):
    out = tmp_path / "run"
    res = _train(out, "--set", "optim.lr=10", "--set", "optim.warmup_steps=0", "--set", "model.init_std=100",
                 epochs=200)
    assert res.returncode == 3 and "diverged" in res.stderr, res.stderr
    info = Run(out).read_info()
    assert info["status"] == "diverged" and info["diverged_at_step"] < 200
    for tensor in Run(out).load_checkpoint()[1].values():  # the kept checkpoint is finite
        assert torch.isfinite(tensor).all()
    res = run_cli_here("train", "--resume", str(out), "-q")
    assert res.returncode == 3  # a resume says so again, and trains no further
    assert Run(out).read_info()["diverged_at_step"] == info["diverged_at_step"]


# --------------------------------------------------------------------------- the start-up window, temp files
def test_a_kill_between_the_first_row_and_the_first_checkpoint_loses_nothing(tmp_path, monkeypatch):
    ref, out = tmp_path / "ref", tmp_path / "run"
    cfg, _ = experiments.load("mainline", TINY + ["train.epochs=40", "train.checkpoint_every=20"])
    pipeline.train_run(cfg, ref, progress=False)

    real = Run.save_checkpoint

    def killed(self, step, *a, **k):
        if step == 0:
            raise KeyboardInterrupt  # the process dies here: the row is written, the checkpoint not
        return real(self, step, *a, **k)

    monkeypatch.setattr(Run, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        pipeline.train_run(cfg, out, progress=False)
    monkeypatch.setattr(Run, "save_checkpoint", real)
    assert Run(out).checkpoint_steps() == []
    pipeline.train_run(pipeline.load_run_config(Run(out)), out, resume=True, progress=False)
    _assert_same_run(ref, out)


def test_temp_files_left_by_a_kill_are_removed_on_the_next_open(tmp_path):
    out = tmp_path / "run"
    assert _train(out, epochs=40).returncode == 0
    run = Run(out)
    run.update_info(status="interrupted")
    leftovers = [run.ckpt_dir / ".step_0000060.safetensors.abc123.tmp", out / ".run.json.xyz.tmp",
                 out / ".config.yaml.q1.tmp"]
    for p in leftovers:
        p.write_bytes(b"half")
    res = run_cli_here("train", "--resume", str(out), "-q", "--set", "train.epochs=60")
    assert res.returncode == 0, res.stderr
    assert not any(p.exists() for p in leftovers)


def test_run_json_garbage_and_a_damaged_database_are_one_line(tmp_path):
    out = tmp_path / "run"
    assert _train(out, epochs=20).returncode == 0
    run = Run(out)
    info = run.info_path.read_bytes()
    for garbage in (b"\x00\xff garbage", b"[1, 2]"):
        run.info_path.write_bytes(garbage)
        _one_line_exit_2(run_cli_here("train", "--resume", str(out), "--set", "train.epochs=40"), "run.json")
        assert run.info_path.read_bytes() == garbage
    run.info_path.write_bytes(info)
    run.db_path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    _one_line_exit_2(run_cli_here("analyze", str(out), "-q"), "metrics.sqlite")


def test_config_round_trips_through_yaml():
    cfg, _ = experiments.load("mainline", ["optim.filter.kind=ema", "train.stop={metric: test_acc, above: 0.9, patience: 5}"])
    assert C.resolve(C.parse_yaml(C.to_yaml(cfg))) == cfg
    with pytest.raises(StoreError):
        Run("/nonexistent-grokscope").require()
    assert json.loads(json.dumps(cfg.model_dump(mode="json")))["optim"]["filter"]["kind"] == "ema"
