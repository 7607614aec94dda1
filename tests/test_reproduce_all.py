"""`grokscope reproduce --all`: every experiment into one folder, resumable, then the replication page.

The default suite runs `--quick` on two experiments (a single run, the mainline, and a sweep,
skip-trigram) in about half a minute; `-m slow` runs the whole quick suite through the CLI, as CI
does (a few minutes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grokscope import experiments, pipeline
from grokscope.report.claims import CLAIMS
from grokscope.store import Run
from grokscope.sweep.suite import QUICK_STEPS, plan_suite, quick_overrides, run_all, suite_names
from tests.conftest import run_cli, run_cli_here

SUBSET = ["mainline", "skip-trigram"]
N_SKIP_TRIGRAM_TRIALS = 3  # --quick keeps the grid's 3 settings and runs 1 seed of each


@pytest.fixture(scope="module")
def quick_subset(tmp_path_factory) -> tuple[Path, dict, list[str]]:
    """The quick suite on SUBSET, its mainline begun beforehand and left half-trained (as a kill would)."""
    out = tmp_path_factory.mktemp("suite") / "runs"
    cfg, _ = experiments.load("mainline", quick_overrides("mainline") + [f"train.epochs={QUICK_STEPS // 2}",
                                                                        "train.threads=1"])
    pipeline.train_run(cfg, out / "mainline", progress=False)
    lines: list[str] = []
    manifest = run_all(out, quick=True, names=SUBSET, workers=2, threads=1, progress=False, echo=lines.append)
    return out, manifest, lines


@pytest.mark.slow
def test_quick_subset_end_to_end(quick_subset):
    out, manifest, lines = quick_subset
    assert manifest["failed"] == [] and manifest["quick"] is True
    assert lines[0].startswith("estimate: about") and "mainline" in lines[1]
    # the half-trained mainline was continued to the quick budget, analysed and reported
    assert any(line.startswith("mainline: resuming") for line in lines)
    run = Run(out / "mainline")
    info = run.read_info()
    assert info["status"] == "completed" and info["last_step"] == QUICK_STEPS
    assert run.read_summary()["step"] == QUICK_STEPS and (run.report_dir / "index.html").is_file()
    # the sweep experiment: its trials, table and page
    sweep = out / "skip-trigram"
    n_trials = len(json.loads((sweep / "sweep.json").read_text())["trials"])
    assert n_trials == N_SKIP_TRIGRAM_TRIALS and (sweep / "sweep.html").is_file()
    # the page: every claim, the quick flag, the subset's rows judged and the others not run
    data = json.loads((out / "replication.json").read_text())
    assert data["quick"] is True and len(data["claims"]) == len(CLAIMS)
    assert (out / "replication.html").is_file() and (out / "replication.md").is_file()
    by = {c["id"]: c for c in data["claims"]}
    assert by["seeds.all-grok"]["verdict"] == "not run"
    assert by["mainline.grokking"]["verdict"] == "not reproduced"  # 30 epochs: no grokking
    assert by["skip-trigram.finite-groks"]["verdict"] != "not run"
    assert "mainline: model.d_model 32 (paper: 128)" in by["mainline.grokking"]["settings_differ"]
    assert set(json.loads((out / "reproduce.json").read_text())["experiments"]) == set(SUBSET)


@pytest.mark.slow
def test_a_rerun_trains_nothing_again(quick_subset):
    out, _, _ = quick_subset
    files = sorted(out.rglob("*.safetensors"))
    before = {p: p.stat().st_mtime_ns for p in files}
    lines: list[str] = []
    manifest = run_all(out, quick=True, names=SUBSET, workers=2, threads=1, progress=True, echo=lines.append)
    assert manifest["failed"] == []
    assert {p: p.stat().st_mtime_ns for p in sorted(out.rglob("*.safetensors"))} == before
    assert any("mainline: already trained" in line for line in lines)
    n = N_SKIP_TRIGRAM_TRIALS
    assert any(f"{n} trials ({n} already finished)" in line for line in lines)


@pytest.mark.slow
def test_a_folder_of_other_runs_is_refused_before_anything_trains(quick_subset):
    from grokscope.config import ConfigError

    out, _, _ = quick_subset
    with pytest.raises(ConfigError, match="different config"):
        plan_suite(out, quick=False, names=["mainline"])  # the full mainline into the quick runs' folder


@pytest.mark.slow
def test_report_replication_rebuilds_the_page(quick_subset):
    out, _, _ = quick_subset
    (out / "replication.html").unlink()
    r = run_cli_here("report", "--replication", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "replication.html").is_file() and "replication:" in r.stdout


def test_dry_run_prints_the_plan_and_estimate_and_writes_nothing(tmp_path):
    r = run_cli_here("reproduce", "--all", "--dry-run", "--out", str(tmp_path / "runs"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("estimate: about") and "upper bound" in r.stdout
    for name in suite_names():
        assert name in r.stdout
    assert "copy-lm" not in r.stdout  # the copy LM's experiments are not the grokking paper's
    assert not (tmp_path / "runs").exists()
    r = run_cli_here("reproduce", "--all", "--quick", "--dry-run", "--out", str(tmp_path / "q"))
    assert r.returncode == 0 and f"{QUICK_STEPS} epochs" in r.stdout and "the full runs would take" in r.stdout


@pytest.mark.parametrize("args", [
    ["reproduce", "--all", "mainline"], ["reproduce", "--quick", "mainline"], ["reproduce", "--dry-run"],
    ["reproduce", "--all", "--set", "optim.lr=1e-2"], ["reproduce", "--all", "--resume"],
    ["reproduce", "--all", "--only", "nosuch", "--dry-run"], ["reproduce", "--all", "--only", ",", "--dry-run"],
    ["report", "--replication", "nosuch-folder"],
])
def test_bad_input_is_one_line_and_exit_2(args, tmp_path):
    r = run_cli_here(*args, cwd=tmp_path)
    assert r.returncode == 2, (args, r.stdout, r.stderr)
    assert r.stderr.startswith("grokscope: ") and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_the_whole_quick_suite_through_the_cli(tmp_path):
    out = tmp_path / "runs"
    # the p = 401 runs' analyses are most of it (primes-401-fractions: 284 s of the suite beside two
    # training jobs, where the whole passed 600 s); the timeout only catches a hang
    r = run_cli("reproduce", "--all", "--quick", "--out", str(out), "-w", "2", "--threads", "1", "-q", timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "replication:" in r.stdout
    for name in suite_names():
        assert (out / name).is_dir(), name
    data = json.loads((out / "replication.json").read_text())
    assert data["quick"] is True and sum(data["counts"].values()) == len(CLAIMS)
    # every experiment ran to its end: no row waits for an unfinished run
    assert not [c["id"] for c in data["claims"] if c["note"].startswith("not finished")]
    assert not [e["name"] for e in data["experiments"] if e["error"]]
