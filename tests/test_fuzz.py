"""Property-based fuzzing of config values and CLI arguments (hypothesis).

Every input either works or exits 2 with one line on stderr and no traceback, quickly, and an
input that fails writes nothing. Every valid config round-trips through YAML unchanged.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grokscope import config as C
from grokscope import experiments
from tests.conftest import run_cli_here

KEYS = ["seed", "name", "paper", "task.name", "task.p", "task.frac_train", "task.op", "task.n_digits",
        "task.n_train", "model.d_model", "model.n_heads", "model.d_head", "model.d_mlp", "model.n_layers",
        "model.act_fn", "model.init_std", "model.rope_base", "optim.lr", "optim.weight_decay", "optim.betas",
        "optim.eps", "optim.dropout", "optim.l1", "optim.grad_clip", "optim.filter.kind", "optim.filter.window",
        "optim.filter.alpha", "train.epochs", "train.steps", "train.batch_size", "train.grad_accum",
        "train.threads", "train.eval_every", "train.checkpoint_every", "train.stop", "train.stop.patience",
        "train.eval_schedule", "nosuch.key", "task", "optim"]

WEIRD = ["inf", "-inf", ".inf", ".nan", "nan", "1e12", "1e400", "-0", "*a", "&a x", "{a: 1}", "[", "]", "{",
         "!!python/object/apply:os.system ['true']", "''", "null", "~", "yes", "0x10", "1_000", "[0.9, 0.98]",
         "[1, 2, 3]", "{metric: test_acc, above: 2, patience: -1}", "../../x", "/tmp/x", "a" * 300, "\x00",
         "é", "🙂", "true", "add", "rand", "llama"]

values = st.one_of(
    st.integers(min_value=-10**20, max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False).map(repr),  # FTZ may be on
    st.sampled_from(WEIRD),
    st.text(max_size=20),
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _one_line(res) -> None:
    assert res.returncode == 2, (res.args, res.returncode, res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("grokscope: "), (res.args, res.stderr[-2000:])


@FAST
@given(key=st.sampled_from(KEYS), value=values)
def test_config_overrides_work_or_are_one_line(key, value):
    t0 = time.perf_counter()
    res = run_cli_here("config", "mainline", "--set", f"{key}={value}")
    assert time.perf_counter() - t0 < 5
    assert "Traceback" not in res.stderr, res.stderr
    if res.returncode == 0:  # valid: what it prints reads back to the same config
        cfg, _ = experiments.load("mainline", [f"{key}={value}"])
        assert C.resolve(C.parse_yaml(res.stdout)) == cfg
    else:
        _one_line(res)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(KEYS), value=values)
def test_an_invalid_config_never_writes(key, value):
    try:
        experiments.load("mainline", [f"{key}={value}"])
    except C.ConfigError:
        pass
    else:
        return  # a valid one would train: the property is about invalid ones
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "o"
        res = run_cli_here("train", "mainline", "--out", str(out), "-q", "--set", f"{key}={value}", cwd=d)
        _one_line(res)
        assert sorted(p.name for p in Path(d).iterdir()) == []


@FAST
@given(data=st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_any_config_file_works_or_is_one_line_and_never_writes(data):
    with tempfile.TemporaryDirectory() as d:
        cfg = Path(d) / "c.yaml"
        cfg.write_bytes(data)
        res = run_cli_here("config", str(cfg))
        assert "Traceback" not in res.stderr, res.stderr
        if res.returncode != 0:
            _one_line(res)
        assert sorted(p.name for p in Path(d).iterdir()) == ["c.yaml"]


names = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), min_size=1,
                max_size=300)


@FAST
@given(verb=st.sampled_from(["analyze", "report", "runs", "forecast", "resume"]), name=names)
def test_any_run_path_is_one_line_and_never_writes(verb, name):
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / name.replace("/", "_"))
        args = ["train", "--resume", path] if verb == "resume" else [verb, path]
        res = run_cli_here(*args, cwd=d)
        assert "Traceback" not in res.stderr, res.stderr
        _one_line(res)
        assert sorted(p.name for p in Path(d).iterdir()) == []


flags = st.lists(st.sampled_from(["--overwrite", "--resume", "-q", "--json", "--threads", "0", "-1", "x", "--out",
                                  "--set", "=", "a=b", "--grid", "k=", "--seeds", "-w", "--step", "--keys", "1,x",
                                  "--index", "--epochs", "-5", "--list", "--backend", "nope"]), max_size=6)


@FAST
@given(verb=st.sampled_from(["train", "analyze", "report", "sweep", "runs", "config", "reproduce", "forecast"]), rest=flags)
def test_any_arguments_are_handled_without_a_traceback(verb, rest):
    with tempfile.TemporaryDirectory() as d:
        args = [verb, *(a.replace("x", str(Path(d) / "x")) for a in rest)]
        t0 = time.perf_counter()
        res = _guarded(args, d)
        if res is None:
            return
        assert time.perf_counter() - t0 < 10
        assert "Traceback" not in res.stderr, (args, res.stderr)
        assert res.returncode in (0, 2), (args, res.returncode, res.stderr)
        if res.returncode == 2:
            _one_line(res)


def _guarded(args: list[str], cwd: str):
    """Run the CLI unless these arguments would train (a valid train/reproduce/sweep)."""
    import grokscope.pipeline as pipeline
    import grokscope.sweep as sweep

    started = []

    def refuse(*a, **k):
        started.append(True)
        raise KeyboardInterrupt

    real_train, real_sweep = pipeline.train_run, sweep.run_sweep
    pipeline.train_run = refuse
    sweep.run_sweep = refuse
    try:
        res = run_cli_here(*args, cwd=cwd)
    finally:
        pipeline.train_run, sweep.run_sweep = real_train, real_sweep
    return None if started else res
