"""Bad input to the LM trainer and analysis: one-line errors, exit 2, and the saved run left whole."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from grokscope import config as C
from grokscope import pipeline
from grokscope.lm.analysis import analyze_lm_run
from grokscope.lm.trainer import model_from_run
from grokscope.store import Run, StoreError
from tests.conftest import run_cli_here
from tests.test_lm_trainer import tiny_cfg

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> Path:
    """A finished 8-step LM run (checkpoints 0, 3, 6, 8); tests that change it work on a copy."""
    tmp = tmp_path_factory.mktemp("lm")
    cfg = tiny_cfg(tmp)
    pipeline.train_run(cfg, tmp / "run", progress=False)
    return tmp / "run"


def copy_of(run: Path, tmp: Path) -> Path:
    shutil.copytree(run, tmp / "run")
    return tmp / "run"


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("bad", ["task.corpus=/nonexistent.txt", "task.val_book=nope", "task.cache_dir=/dev/null/x"])
def test_overwrite_with_a_bad_config_keeps_the_old_run(lm_run, tmp_path, bad):
    out = copy_of(lm_run, tmp_path)
    before = snapshot(out)
    cfg = C.resolve(yaml.safe_load((out / "config.yaml").read_text()), [bad])
    with pytest.raises(C.ConfigError):
        pipeline.train_run(cfg, out, overwrite=True, progress=False)
    assert snapshot(out) == before  # the old run is whole: config, run.json, checkpoints, metrics


def test_cli_overwrite_with_a_missing_corpus_is_exit_2_and_keeps_the_run(lm_run, tmp_path):
    out = copy_of(lm_run, tmp_path)
    before = snapshot(out)
    res = run_cli_here("train", str(out / "config.yaml"), "--out", str(out), "--overwrite", "-q",
                       "--set", "task.corpus=/nonexistent.txt")
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip()
    assert "\n" not in err and "task.corpus" in err and "Traceback" not in err
    assert snapshot(out) == before
    assert Run(out).checkpoint_steps() == [0, 3, 6, 8]


def test_a_failed_start_leaves_no_half_made_folder(tmp_path):
    cfg = tiny_cfg(tmp_path)
    bad = cfg.model_copy(update={"task": cfg.task.model_copy(update={"val_book": "nope"})})
    with pytest.raises(C.ConfigError, match="val_book"):
        pipeline.train_run(bad, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    info = pipeline.train_run(cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 2})}),
                              tmp_path / "run", progress=False)  # no --overwrite needed: nothing was left
    assert info["status"] == "completed"


def test_overwrite_replaces_a_run_once_the_config_is_good(lm_run, tmp_path):
    out = copy_of(lm_run, tmp_path)
    cfg = C.resolve(yaml.safe_load((out / "config.yaml").read_text()), ["train.steps=2", "train.checkpoint_every=1"])
    info = pipeline.train_run(cfg, out, overwrite=True, progress=False)
    assert info["last_step"] == 2 and Run(out).checkpoint_steps() == [0, 1, 2]
    assert int(Run(out).metrics()["step"].max()) == 2  # no rows of the old run survive


def test_resume_with_an_edited_config_is_a_one_line_store_error(lm_run, tmp_path):
    out = copy_of(lm_run, tmp_path)
    raw = yaml.safe_load((out / "config.yaml").read_text())
    raw["model"]["d_model"] = 32
    raw["train"]["steps"] = 12
    (out / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    before = snapshot(out)
    cfg = pipeline.load_run_config(Run(out))
    with pytest.raises(StoreError, match="does not match the run's config.yaml") as err:
        pipeline.train_run(cfg, out, resume=True, progress=False)
    assert "\n" not in str(err.value) and "step_0000008" in str(err.value)
    assert snapshot(out) == before  # run.json not marked failed, no rows truncated
    with pytest.raises(StoreError, match="does not match the run's config.yaml"):
        model_from_run(str(out))
    res = run_cli_here("train", "--resume", str(out), "-q")
    assert res.returncode == 2 and "does not match" in res.stderr and "Traceback" not in res.stderr, res.stderr


@pytest.mark.parametrize("text", ["", "model: [unclosed\n", "- a list\n"])
def test_model_from_run_with_a_damaged_config_is_a_store_error(lm_run, tmp_path, text):
    out = copy_of(lm_run, tmp_path)
    (out / "config.yaml").write_text(text)
    with pytest.raises(StoreError, match="config.yaml"):
        model_from_run(str(out))


def test_model_from_run_loads_a_checkpoint(lm_run):
    model, cfg, step = model_from_run(str(lm_run), 6)
    assert step == 6 and cfg.model.arch == "llama" and not model.training
    _, tensors = Run(lm_run).load_checkpoint(6)
    assert torch.equal(model.embed.W_E, tensors["embed.W_E"])


def test_analyze_a_step_past_the_run_is_an_error_naming_its_steps(lm_run):
    with pytest.raises(StoreError, match=r"has no step 99; it has steps 0\.\.8"):
        analyze_lm_run(lm_run, step=99)
    with pytest.raises(StoreError, match="has no step -1"):
        analyze_lm_run(lm_run, step=-1)
    assert analyze_lm_run(lm_run, step=8)["step"] == 8
    assert analyze_lm_run(lm_run, step=5)["step"] <= 5  # between evaluations: the last one before it
    res = run_cli_here("analyze", str(lm_run), "--step", "99")
    assert res.returncode == 2 and "has no step 99" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_model_from_run_keeps_the_stores_own_message(lm_run, tmp_path):
    # read_config wrapped every ValueError, StoreError included, as "config.yaml is corrupt (StoreError)"
    out = copy_of(lm_run, tmp_path)
    (out / "config.yaml").write_text("- a list\n")
    with pytest.raises(StoreError, match="not a config: a YAML list") as err:
        model_from_run(str(out))
    assert "StoreError" not in str(err.value)
