"""`grokscope analyze`: JSON contract on stdout, and bad input -> one line, exit 2, nothing lost."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_cli_here

CONTRACT = ("key_frequencies", "neuron_fve", "logit_fve", "restricted_loss", "excluded_loss", "test_loss",
            "test_acc", "gini_W_E", "gini_W_L", "phases")


def grokscope(*args: str) -> subprocess.CompletedProcess:
    """The CLI in this process: exit codes and output are what a user sees (no process boundary is tested here)."""
    return run_cli_here(*args)


@pytest.fixture
def run_copy(grokked_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(grokked_run, dst)
    return dst


def test_analyze_json_prints_the_contract(run_copy):
    res = grokscope("analyze", str(run_copy), "--json", "--threads", "1")
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    for key in CONTRACT:
        assert key in s
    # what the replication page's claims read (report/claims.py)
    assert isinstance(s["embed_frequencies"], list) and s["clusters"]
    assert all({"self_attention", "sigmoid_linear_fve"} <= h.keys() for h in s["attention_heads"])
    assert all(0 <= c["wl_share"] <= 1 for c in s["clusters"])
    assert set(s["phases"]) == {"memorization", "circuit_formation", "cleanup"}
    assert json.loads((run_copy / "analysis" / "summary.json").read_text()) == s


def test_analyze_step_and_given_keys(run_copy):
    res = grokscope("analyze", str(run_copy), "--json", "--step", "1000", "--keys", "2,3")
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["step"] == 1000 and s["key_frequencies"] == [2, 3]


def test_mlp_ablations_at_the_end_of_cleanup_are_that_checkpoints(run_copy):
    """The summary's end-of-cleanup ablations are what analysing that checkpoint (same keys) gives."""
    full = json.loads(grokscope("analyze", str(run_copy), "--json", "--threads", "1").stdout)
    cleanup, at = full["phases"]["cleanup"], full["mlp_ablations_cleanup_end"]
    assert cleanup is not None, "the grokked fixture run has a cleanup phase"
    assert at["epoch"] == cleanup[1] and at["step"] != full["step"]
    keys = ",".join(map(str, full["key_frequencies"]))
    there = json.loads(grokscope("analyze", str(run_copy), "--json", "--threads", "1", "--step", str(at["step"]),
                                 "--keys", keys).stdout)
    assert there["step"] == at["step"] and at["rows"] == there["mlp_ablations"]
    assert [r["name"] for r in at["rows"]] == [r["name"] for r in full["mlp_ablations"]]
    assert at["rows"] != full["mlp_ablations"]


def test_missing_run_and_missing_step_exit_2(tmp_path, run_copy):
    res = grokscope("analyze", str(tmp_path / "nope"))
    assert res.returncode == 2 and "does not exist" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = grokscope("analyze", str(run_copy), "--step", "123")
    assert res.returncode == 2 and "no checkpoint at step 123" in res.stderr


def test_corrupt_checkpoint_exits_2_and_keeps_the_old_analysis(run_copy):
    ok = grokscope("analyze", str(run_copy), "--json")
    assert ok.returncode == 0
    before = (run_copy / "analysis" / "summary.json").read_bytes()
    (run_copy / "checkpoints" / "step_0000500.safetensors").write_bytes(b"not a safetensors file")
    res = grokscope("analyze", str(run_copy), "--quiet")
    assert res.returncode == 2 and "corrupt" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert (run_copy / "analysis" / "summary.json").read_bytes() == before


def test_non_modular_run_exits_2(tmp_path):
    from grokscope import config as C
    from grokscope.store import Run

    cfg = C.resolve({"task": {"name": "skip_trigram"}, "model": {"attn_only": True}, "train": {"steps": 10}})
    run = Run(tmp_path / "st")
    run.write_config(C.to_yaml(cfg))
    res = grokscope("analyze", str(run.path))
    assert res.returncode == 2 and "modular-arithmetic" in res.stderr


def test_reproduce_runs_the_analysis(tmp_path):
    out = tmp_path / "rep"
    res = grokscope("reproduce", "mainline", "--out", str(out), "--quiet", "--set", "task.p=13",
                    "--set", "model.d_model=16", "--set", "model.d_head=4", "--set", "model.d_mlp=32",
                    "--set", "train.epochs=60", "--set", "train.checkpoint_every=20", "--set", "train.threads=1")
    assert res.returncode == 0, res.stderr
    s = json.loads((out / "analysis" / "summary.json").read_text())
    assert s["step"] == 60 and s["n_checkpoints"] == 4
    assert "key frequencies" in res.stdout and "phases:" in res.stdout


def test_keys_out_of_range_exit_2(run_copy):
    res = grokscope("analyze", str(run_copy), "--keys", "2,40")
    assert res.returncode == 2 and "from 1 to 15" in res.stderr
    res = grokscope("analyze", str(run_copy), "--keys", "two")
    assert res.returncode == 2 and "comma-separated" in res.stderr


@pytest.mark.parametrize("text", ["task: [unclosed", "just a string"])
def test_corrupt_config_exits_2(run_copy, text):
    (run_copy / "config.yaml").write_text(text)
    res = grokscope("analyze", str(run_copy))
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
