"""The trainer and the run store: learning, exact resume, refusing to clobber, bad checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from grokscope import config as C
from grokscope import pipeline
from grokscope.models.loss import loss_and_acc
from grokscope.store import Run, StoreError
from grokscope.train.trainer import Trainer, grok_epochs, lr_at
from tests.conftest import GROK, TINY, config_of, run_cli_here


def _cfg(*extra: str) -> C.RunConfig:
    return C.resolve({}, [*TINY, *extra])


def test_tiny_modular_run_memorises_the_train_set(tmp_path):
    info = pipeline.train_run(_cfg("train.epochs=300"), tmp_path / "r", progress=False)
    m = Run(tmp_path / "r").metrics()
    assert info["status"] == "completed" and info["last_step"] == 300
    assert m["train_acc"].iloc[-1] == 1.0
    assert m["train_loss"].iloc[-1] < 0.5 < 2.5 < m["train_loss"].iloc[0]  # chance: ln 23 = 3.1
    assert list(m["step"]) == list(range(0, 301, 10))
    assert Run(tmp_path / "r").checkpoint_steps() == [0, 50, 100, 150, 200, 250, 300]


def test_only_the_last_two_checkpoints_keep_resume_state_and_names_are_tl(tmp_path):
    pipeline.train_run(_cfg("train.epochs=150"), tmp_path / "r", progress=False)
    run = Run(tmp_path / "r")
    old, prev, new = (load_file(run.checkpoint_path(s)) for s in (50, 100, 150))
    assert not any("/" in k for k in old)
    assert any(k.startswith("optim/") for k in prev) and any(k.startswith("optim/") for k in new)
    assert "blocks.0.mlp.W_in" in old and "embed.W_E" in old


def test_a_corrupt_latest_checkpoint_can_be_deleted_and_the_run_resumed_exactly(tmp_path):
    cfg = _cfg("train.epochs=150")
    pipeline.train_run(cfg, tmp_path / "full", progress=False)
    cut = Run(tmp_path / "cut")
    pipeline.train_run(cfg, cut.path, progress=False)
    cut.update_info(status="interrupted")  # as if killed just after its last checkpoint ...
    cut.checkpoint_path(150).write_bytes(b"not a checkpoint")  # ... and that file was lost
    with pytest.raises(StoreError, match="move it out of .* continues exactly from step 100"):
        pipeline.train_run(pipeline.load_run_config(cut), cut.path, resume=True, progress=False)
    cut.checkpoint_path(150).unlink()  # what the message says to do
    pipeline.train_run(pipeline.load_run_config(cut), cut.path, resume=True, progress=False)
    _, ta = Run(tmp_path / "full").load_checkpoint()
    _, tb = cut.load_checkpoint()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert Run(tmp_path / "full").metrics().equals(cut.metrics())


def _interrupt_at(step: int):
    def cb(s, row):
        if s == step:
            raise KeyboardInterrupt
    return cb


@pytest.mark.parametrize("extra", [
    [],
    ["train.batch_size=64", "optim.dropout=0.1"],  # minibatch order and dropout masks replay too
    ["optim.filter.kind=ema", "optim.l1=1e-5"],
])
def test_resume_after_interrupt_is_bit_identical(tmp_path, extra):
    cfg = _cfg("train.epochs=60", "train.checkpoint_every=25", *extra)
    pipeline.train_run(cfg, tmp_path / "full", progress=False)
    run = Run(tmp_path / "cut")
    run.write_config(C.to_yaml(cfg))
    stop = 40 * Trainer(cfg, run).steps_per_epoch
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, run, progress=False, callbacks=[_interrupt_at(stop)]).fit()
    assert run.read_info()["status"] == "interrupted"
    assert 0 < run.checkpoint_steps()[-1] < stop  # the resume replays the steps since a checkpoint
    pipeline.train_run(pipeline.load_run_config(run), run.path, resume=True, progress=False)
    a, b = Run(tmp_path / "full"), run
    ma, mb = a.metrics(), b.metrics()
    assert ma.equals(mb)
    sa, ta = a.load_checkpoint()
    sb, tb = b.load_checkpoint()
    assert sa == sb and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_run_stopped_before_its_second_checkpoint_resumes_from_step_0(tmp_path):
    # The step-0 checkpoint holds no optimiser state (AdamW has none yet); resuming must still work.
    cfg = _cfg("train.epochs=60")
    pipeline.train_run(cfg, tmp_path / "full", progress=False)
    run = Run(tmp_path / "cut")
    run.write_config(C.to_yaml(cfg))
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, run, progress=False, callbacks=[_interrupt_at(20)]).fit()
    assert run.checkpoint_steps() == [0]
    pipeline.train_run(pipeline.load_run_config(run), run.path, resume=True, progress=False)
    assert Run(tmp_path / "full").metrics().equals(run.metrics())
    _, ta = Run(tmp_path / "full").load_checkpoint()
    _, tb = run.load_checkpoint()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.mark.slow  # by default test_faults.py kills training processes (SIGKILL) 3 times and resumes bit-identically
def test_kill_9_then_resume_matches_uninterrupted_run(tmp_path):
    args = [a for x in [*TINY, "train.epochs=400", "train.checkpoint_every=20"] for a in ("--set", x)]
    full = run_cli_here("train", "mainline", "--out", str(tmp_path / "full"), "-q", *args)
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen([sys.executable, "-m", "grokscope.cli", "train", "mainline", "--out",
                             str(tmp_path / "cut"), "-q", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cut = Run(tmp_path / "cut")
    deadline = time.time() + 120
    while time.time() < deadline and max(cut.checkpoint_steps() or [0]) < 60:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert cut.read_info()["status"] == "running" and max(cut.checkpoint_steps()) < 400
    res = run_cli_here("train", "--resume", str(tmp_path / "cut"), "-q")
    assert res.returncode == 0, res.stderr
    a, b = Run(tmp_path / "full"), cut
    assert a.metrics().equals(b.metrics())
    _, ta = a.load_checkpoint()
    _, tb = b.load_checkpoint()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_refuses_existing_run_without_resume_or_overwrite(tmp_path):
    out = tmp_path / "r"
    pipeline.train_run(_cfg("train.epochs=20"), out, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "sqlite" not in p.name}
    res = run_cli_here("train", "mainline", "--out", str(out), *[a for x in TINY for a in ("--set", x)])
    assert res.returncode == 2 and "already holds a run" in res.stderr
    assert all(p.read_bytes() == b for p, b in before.items())
    res = run_cli_here("train", "mainline", "--out", str(out), "--overwrite", "-q",
                       *[a for x in [*TINY, "train.epochs=10"] for a in ("--set", x)])
    assert res.returncode == 0 and Run(out).read_info()["last_step"] == 10


def test_corrupt_checkpoint_is_a_clear_error_and_nothing_is_lost(tmp_path):
    out = tmp_path / "r"
    pipeline.train_run(_cfg("train.epochs=100"), out, progress=False)
    run = Run(out)
    path = run.checkpoint_path(100)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(StoreError, match="corrupt"):
        run.load_checkpoint()
    res = run_cli_here("train", "--resume", str(out), "--set", "train.epochs=200")
    assert res.returncode == 2 and "corrupt" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert path.read_bytes() == b"not a safetensors file" and run.checkpoint_path(50).exists()


def test_resume_rejects_config_changes_other_than_length(tmp_path):
    out = tmp_path / "r"
    pipeline.train_run(_cfg("train.epochs=20"), out, progress=False)
    res = run_cli_here("train", "--resume", str(out), "--set", "optim.lr=0.1")
    assert res.returncode == 2 and "keeps its config" in res.stderr
    res = run_cli_here("train", "--resume", str(out), "--set", "train.epochs=40", "-q")
    assert res.returncode == 0 and Run(out).read_info()["last_step"] == 40
    # the new length is recorded: config and run.json say 40, and a shorter one is refused
    run = Run(out)
    assert pipeline.load_run_config(run).train.epochs == 40 and run.read_info()["total_steps"] == 40
    res = run_cli_here("train", "--resume", str(out), "--set", "train.epochs=30")
    assert res.returncode == 2 and "only be lengthened" in res.stderr


def test_resume_may_space_later_checkpoints_differently_and_the_numbers_do_not_change(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    pipeline.train_run(_cfg("train.epochs=200", "optim.dropout=0.1"), straight, progress=False)
    pipeline.train_run(_cfg("train.epochs=100", "optim.dropout=0.1"), resumed, progress=False)
    res = run_cli_here("train", "--resume", str(resumed), "--set", "train.epochs=200",
                       "--set", "train.checkpoint_every=100", "-q")
    assert res.returncode == 0, res.stderr
    run = Run(resumed)
    assert run.checkpoint_steps() == [0, 50, 100, 200] and Run(straight).checkpoint_steps() == [0, 50, 100, 150, 200]
    assert pipeline.load_run_config(run).train.checkpoint_every == 100
    _, a = run.load_checkpoint(200)
    _, b = Run(straight).load_checkpoint(200)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # dropout masks included


def _args(*overrides: str) -> list[str]:
    return [a for x in [*TINY, *overrides] for a in ("--set", x)]


def test_reproduce_resume_keeps_the_runs_config(tmp_path):
    out = tmp_path / "r"
    assert run_cli_here("train", "mainline", "--out", str(out), "-q", *_args("train.epochs=20")).returncode == 0
    before = Run(out).config_path.read_text()
    res = run_cli_here("reproduce", "mainline", "--out", str(out), "--resume", "--set", "optim.lr=0.5", "--epochs", "40")
    assert res.returncode == 2 and "keeps its config" in res.stderr and "Traceback" not in res.stderr
    assert Run(out).config_path.read_text() == before and Run(out).read_info()["last_step"] == 20


def test_a_bad_config_with_overwrite_keeps_the_old_run(tmp_path):
    out = tmp_path / "r"
    pipeline.train_run(_cfg("train.epochs=20"), out, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "sqlite" not in p.name}
    # p=3 with 1% of the 9 pairs: no train pair. The config itself is valid; the task is not.
    res = run_cli_here("train", "mainline", "--out", str(out), "--overwrite", *_args("task.p=3", "task.frac_train=0.01"))
    assert res.returncode == 2 and "no train pairs" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert all(p.exists() and p.read_bytes() == b for p, b in before.items())
    # and a fresh folder is not left half-made
    res = run_cli_here("train", "mainline", "--out", str(tmp_path / "new"), *_args("task.p=3", "task.frac_train=0.01"))
    assert res.returncode == 2 and not (tmp_path / "new").exists()


def test_damaged_run_files_are_one_line_errors(tmp_path):
    out = tmp_path / "r"
    pipeline.train_run(_cfg("train.epochs=20"), out, progress=False)
    run = Run(out)
    file = tmp_path / "a_file"
    file.write_text("x")
    res = run_cli_here("train", "mainline", "--out", str(file), *_args())
    assert res.returncode == 2 and "is a file" in res.stderr and file.read_text() == "x"
    config = run.config_path.read_text()
    for bad in ("model: [unclosed", ""):
        run.config_path.write_text(bad)
        res = run_cli_here("train", "--resume", str(out))
        assert res.returncode == 2 and "config.yaml" in res.stderr and "Traceback" not in res.stderr, res.stderr
    run.config_path.write_text(config.replace("d_mlp: 64", "d_mlp: 32"))  # no longer the checkpoint's shape
    res = run_cli_here("train", "--resume", str(out), "--set", "train.epochs=40")
    assert res.returncode == 2 and "does not match the run's config.yaml" in res.stderr and "Traceback" not in res.stderr
    run.config_path.write_text(config)
    db = run.db_path.read_bytes()
    run.db_path.write_bytes(b"garbage" * 200)
    for verb in (["train", "--resume", str(out), "--set", "train.epochs=40"], ["analyze", str(out)]):
        res = run_cli_here(*verb)
        assert res.returncode == 2 and "metrics.sqlite is corrupt" in res.stderr and "Traceback" not in res.stderr, (verb, res.stderr)
    assert run.db_path.read_bytes() == b"garbage" * 200 and len(db) > 0  # nothing rewritten


def test_warmup_is_linear_from_zero():
    cfg = C.OptimConfig()
    assert [lr_at(s, 100, cfg) for s in (0, 5, 10, 50)] == [0.0, 5e-4, 1e-3, 1e-3]
    cos = C.OptimConfig(schedule="cosine", warmup_steps=0, min_lr_frac=0.1)
    assert lr_at(0, 100, cos) == pytest.approx(1e-3) and lr_at(100, 100, cos) == pytest.approx(1e-4)


def test_stop_rule_ends_the_run_early(tmp_path):
    cfg = _cfg("train.epochs=2000", "task.frac_train=0.6", "optim.lr=3e-3",
               "train.stop={metric: train_acc, above: 0.99, patience: 50}")
    info = pipeline.train_run(cfg, tmp_path / "r", progress=False)
    assert info["status"] == "stopped_early" and info["last_step"] < 2000
    m = Run(tmp_path / "r").metrics()
    assert (m.loc[m["step"] >= info["last_step"] - 50, "train_acc"] > 0.99).all()


# ------------------------------------------------------------------------------ fidelity of the fast step
def _loss_curve(overrides: list[str], steps: int, perturb: float = 0.0) -> np.ndarray:
    """Full-batch train loss every 5 steps; `perturb` scales every initial weight by 1 + perturb * N(0, 1)."""
    tr = Trainer(_grok_cfg(*overrides), Run("/nonexistent"), progress=False)
    if perturb:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in tr.model.parameters():
                p.mul_(1 + perturb * torch.randn(p.shape, generator=g))
    out = []
    for s in range(steps):
        if s % 5 == 0:
            with torch.no_grad():
                out.append(loss_and_acc(tr.model(tr.task.train_x)[:, -1], tr.task.train_y[:, 0])[0])
        tr.train_step(s)
    return np.array(out)


def _grok_cfg(*extra: str) -> C.RunConfig:
    return config_of([*GROK, *extra])  # as the session's grokked_run fixture builds it


def test_fast_step_follows_the_plain_loss_curve_as_closely_as_float32_allows():
    # Training at lr 1e-2 is chaotic: a 0.1% change of the learning rate moves the loss by 10% or
    # more within 60 steps. The fast step reorders float32 sums, so it may depart from the plain one
    # by amplified rounding: as far as the plain step departs from itself when its initial weights
    # move by one float32 rounding (1e-7 relative), times 10, or by 1e-4. How far that nudge travels
    # depends on the CPU's kernels (2e-6 relative by step 55 on one AVX-512 machine, above 1e-3 on
    # another), hence the floor; a wrong term in the step departs like the lr change, 1e-2 and more.
    chaotic = ["optim.lr=1e-2", "task.frac_train=0.5"]  # the tiny grokking fixture's earlier config
    plain = _loss_curve(["train.fast=false", *chaotic], 60)
    fast = _loss_curve(["train.fast=true", *chaotic], 60)
    nudged = _loss_curve(["train.fast=false", *chaotic], 60, perturb=1e-7)
    other_lr = _loss_curve(["train.fast=false", "optim.lr=1.001e-2", "task.frac_train=0.5"], 60)
    d_fast, d_nudged = np.abs(fast - plain) / plain, np.abs(nudged - plain) / plain
    assert d_fast[:3].max() < 1e-8  # before chaos has amplified anything: the same numbers
    assert np.all(d_fast <= np.maximum(10 * np.maximum.accumulate(d_nudged), 1e-4)), (d_fast, d_nudged)
    assert (np.abs(other_lr - plain) / plain).max() > 1e-2  # the comparison has teeth


@pytest.mark.slow  # ~40-60 s: 3,000 plain epochs; the test below checks the same on a run 7x shorter
def test_fast_and_plain_steps_grok_at_the_same_epoch(grokked_run, tmp_path):
    # The session's tiny grokking run uses the fast step; the plain step must grok alike. This
    # kind of run is chaotic at its edge: with an earlier lr 1e-2 fixture, plain runs whose initial
    # weights moved by 1e-7 passed 50% test accuracy anywhere from epoch 900 to 1250. With
    # tests/conftest.py's GROK config, seed 0 passed 50% at epoch 750 (plain) and 750-800 (two
    # fast steps). So: the 50% epochs agree within 30%, and both runs end above 97% test accuracy,
    # far from the ~45% of a memorising one.
    cfg = _grok_cfg("train.fast=false")
    pipeline.train_run(cfg, tmp_path / "plain", progress=False)
    fast, plain = grok_epochs(Run(grokked_run)), grok_epochs(Run(tmp_path / "plain"))
    assert fast["grok_epoch_50"] is not None and plain["grok_epoch_50"] is not None
    assert abs(fast["grok_epoch_50"] - plain["grok_epoch_50"]) <= 0.3 * plain["grok_epoch_50"], (fast, plain)
    for run in (grokked_run, tmp_path / "plain"):
        assert Run(run).metrics()["test_acc"].iloc[-1] > 0.97, run


def test_fast_and_plain_steps_generalise_at_the_same_epoch_on_a_small_run(tmp_path):
    # The slow test above on a smaller case (p=23, 60% of the pairs, 450 epochs: a few seconds for
    # both steps): train accuracy reaches 100% at epoch 60, where test accuracy is 49%, and test
    # accuracy passes 99% at ~320. With seed 0 the fast and plain steps passed 99% at epochs 310-330,
    # also when their initial weights moved by 1e-7 (four draws each), and all ended above 99%.
    # Other seeds are less settled (seed 2's fast step ended at 96.7%): pinned to seed 0.
    small = ["task.p=23", "task.frac_train=0.6", "train.epochs=450", "train.eval_every=10",
             "train.checkpoint_every=450", "seed=0"]
    runs = {}
    for fast in ("true", "false"):
        pipeline.train_run(_grok_cfg(*small, f"train.fast={fast}"), tmp_path / fast, progress=False)
        runs[fast] = Run(tmp_path / fast)
    epochs = {fast: grok_epochs(run)["grok_epoch_99"] for fast, run in runs.items()}
    assert epochs["true"] is not None and epochs["false"] is not None, epochs
    assert abs(epochs["true"] - epochs["false"]) <= 0.3 * epochs["false"], epochs
    for fast, run in runs.items():
        m = run.metrics()
        memorised = m.loc[m["train_acc"] >= 1.0, "epoch"].iloc[0]
        assert m.loc[m["epoch"] == memorised, "test_acc"].iloc[0] < 0.6, fast  # memorised first ...
        assert 3 * memorised < epochs[fast], (fast, memorised, epochs)  # ... generalised much later
        assert m["test_acc"].iloc[-1] > 0.97, fast


def test_grad_accum_splits_a_step_and_epochs_count_whole_passes(tmp_path):
    # 264 train rows (half of 23^2, rounded down) in steps of 10 rows split into 3 micro-batches:
    # 27 steps an epoch, and the logged epoch of the last step is exactly 2
    cfg = _cfg("train.epochs=2", "train.batch_size=10", "train.grad_accum=3", "train.eval_every=1")
    info = pipeline.train_run(cfg, tmp_path / "r", progress=False)
    n = int(0.5 * 23 * 23)
    assert info["last_step"] == 2 * -(-n // 10)
    assert Run(tmp_path / "r").metrics()["epoch"].iloc[-1] == 2.0


def test_grad_accum_gives_the_full_batch_update():
    one = Trainer(_cfg("train.epochs=5"), Run("/nonexistent"), progress=False)
    three = Trainer(_cfg("train.epochs=5", "train.grad_accum=3"), Run("/nonexistent"), progress=False)
    for s in range(5):
        one.train_step(s)
        three.train_step(s)
    for a, b in zip(one.model.parameters(), three.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("task", [
    ["task.p=23"],  # modular: one label position
    ["task.name=digits", "task.n_digits=2", "task.n_train=20", "task.n_test=20"],  # per-position metrics too
])
def test_metric_names_are_what_evaluate_logs_and_stop_must_name_one(task):
    def cfg(*extra: str) -> C.RunConfig:
        return C.resolve({}, [*[o for o in TINY if not o.startswith("task.")], *task, "train.epochs=1", *extra])

    tr = Trainer(cfg(), Run("/nonexistent"), progress=False)
    assert set(tr.metrics_row(0, 0.0)) - {"step"} == tr.metric_names()
    with pytest.raises(C.ConfigError, match="not a logged metric"):
        Trainer(cfg("train.stop={metric: test_accuracy, above: 0.9}"), Run("/nonexistent"))


@pytest.mark.slow
def test_two_thread_runs_of_the_general_path_are_bit_identical():
    # The untabulated model on 2 threads: the embedding's backward must sum repeated tokens in a
    # fixed order (indexing W_E[tokens] did not: two runs of this config differed in the last bits)
    from grokscope import experiments

    cfg, _ = experiments.load("skip-trigram", ["train.steps=20", "train.threads=2"])
    before = torch.get_num_threads()
    try:
        runs = []
        for _ in range(2):
            tr = Trainer(cfg, Run("/nonexistent"), progress=False)
            for s in range(20):
                tr.train_step(s)
            runs.append([p.detach().clone() for p in tr.model.parameters()])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


@pytest.mark.parametrize("schedule", ["linear", "log"])
def test_every_checkpoint_is_evaluated(schedule):
    from grokscope.train.trainer import eval_steps

    steps = eval_steps(14000, 250, schedule, checkpoint_every=500).steps()
    assert set(range(0, 14001, 500)) <= steps and {0, 14000} <= steps and max(steps) == 14000
    if schedule == "linear":
        assert steps == set(range(0, 14001, 250))


def test_a_resume_that_cannot_go_on_changes_nothing_and_steps_cannot_shorten_it(tmp_path):
    out = tmp_path / "r"
    pipeline.train_run(_cfg("train.epochs=40", "train.checkpoint_every=20"), out, progress=False)
    run = Run(out)
    before = (run.config_path.read_text(), run.read_info()["total_steps"])
    # train.steps overrides train.epochs: 5 steps would end before the 40 already trained
    res = run_cli_here("train", "--resume", str(out), "--set", "train.steps=5")
    assert res.returncode == 2 and "only be lengthened" in res.stderr
    run.update_info(status="interrupted")
    run.checkpoint_path(40).write_bytes(b"damaged")
    res = run_cli_here("train", "--resume", str(out), "--set", "train.epochs=80")
    assert res.returncode == 2 and "corrupt" in res.stderr
    assert (run.config_path.read_text(), run.read_info()["total_steps"]) == before  # the failed resume wrote nothing


def test_resume_may_restate_the_runs_own_settings(tmp_path):
    out = tmp_path / "r"
    assert run_cli_here("train", "mainline", "--out", str(out), "-q", *_args("train.epochs=20")).returncode == 0
    # the starting command again, with --resume and a longer run: its --set values are the run's own
    res = run_cli_here("reproduce", "mainline", "--out", str(out), "--resume", "-q", *_args("train.epochs=30"))
    assert res.returncode == 0, res.stderr
    assert Run(out).read_info()["last_step"] == 30 and pipeline.load_run_config(Run(out)).train.epochs == 30
