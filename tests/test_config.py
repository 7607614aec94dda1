"""Config at the edge: overrides, validation, one-line errors with exit code 2."""

from __future__ import annotations

import pytest

from grokscope import config as C
from grokscope import experiments
from tests.conftest import run_cli_here


def test_mainline_defaults_match_spec():
    cfg, exp = experiments.load("mainline")
    assert (cfg.task.p, cfg.task.frac_train, cfg.task.op) == (113, 0.3, "add")
    assert (cfg.model.d_model, cfg.model.n_heads, cfg.model.d_head, cfg.model.d_mlp) == (128, 4, 32, 512)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.betas, cfg.optim.warmup_steps) == (1e-3, 1.0, (0.9, 0.98), 10)
    assert cfg.train.epochs == 15000 and cfg.train.checkpoint_every == 100 and cfg.train.batch_size is None
    assert "reproduces" in exp


def test_dotted_overrides_parse_yaml_scalars():
    cfg = C.resolve({}, ["optim.weight_decay=0.3", "optim.betas=[0.8, 0.9]", "train.batch_size=null",
                         "train.epochs=5", "task.op=mul"])
    assert cfg.optim.weight_decay == 0.3 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.train.batch_size is None and cfg.train.epochs == 5 and cfg.task.op == "mul"


@pytest.mark.parametrize(("override", "needle"), [
    ("task.p=112", "task.p must be a prime"),
    ("task.frac_train=1.5", "task.frac_train"),
    ("task.frac_train=0", "task.frac_train"),
    ("optim.lr=-1", "optim.lr"),
    ("model.act_fn=tanh", "model.act_fn"),
    ("optim.betas=[0.9, 1.5]", "optim.betas"),
    ("foo.bar=1", "foo: unknown key"),
    ("task.name=nope", "unknown task"),
    ("train.epochs=abc", "train.epochs"),
])
def test_bad_values_raise_one_line(override, needle):
    with pytest.raises(C.ConfigError) as err:
        C.resolve({}, [override])
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


@pytest.mark.parametrize(("name", "override", "needle"), [
    ("copy-lm", "model.arch=transformer", "set model.arch=llama"),
    ("mainline", "model.arch=llama", "needs task.name=text"),
])
def test_the_task_and_the_architecture_must_go_together(name, override, needle):
    with pytest.raises(C.ConfigError, match=needle):
        experiments.load(name, [override])


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    res = run_cli_here("train", "mainline", "--out", str(tmp_path / "r"), "--set", "task.p=112")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "task.p must be a prime" in lines[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "r").exists()  # nothing was written


@pytest.mark.parametrize("args", [
    ["train", "no-such-experiment"],
    ["train", "--resume", "/nonexistent/run"],
    ["train", "mainline", "--no-such-flag"],
    ["reproduce", "nope"],
])
def test_cli_other_bad_input_exits_2(args):
    res = run_cli_here(*args)
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_bad_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n")
    res = run_cli_here("train", str(bad), "--out", str(tmp_path / "r"))
    assert res.returncode == 2 and "not valid YAML" in res.stderr
