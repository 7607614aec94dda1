"""Sweeps: many configs -> many ordinary run folders, through an executor (docs/architecture.md, "The flow").

    grokscope sweep CONFIG --grid KEY=v1,v2 ... --seeds N --out DIR [--backend local|ray] [--workers N]

Layout of a sweep folder:

    DIR/sweep.json            the sweep: its source, grid, seeds, overrides and trial list
    DIR/<trial name>/         one run folder per trial (config.yaml, run.json, checkpoints, ...)
    DIR/.trials/<name>.yaml   the trial's resolved config, .log its output, .pid its process id
    DIR/runs.csv, sweep.html  the comparison table and the sweep figures

Running the same sweep again skips finished trials and resumes the others from their latest
checkpoints. Everything is validated before the first write: a bad key, value or backend exits
2 with one line, and a trial folder holding a run of a different config is never overwritten
unless asked (`--overwrite`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from grokscope import config as C
from grokscope import experiments
from grokscope.store import (
    Run,
    atomic_write_json,
    atomic_write_text,
    folder_lock,
    remove_temp_files,
)
from grokscope.sweep.grid import Trial, expand, parse_grid
from grokscope.sweep.local import TrialJob, threads_per_trial
from grokscope.sweep.trial import needs_analysis, training_done

BACKENDS = ("local", "ray")


@dataclass
class SweepPlan:
    source: str
    out: Path
    grid: dict[str, list[Any]]
    seeds: int | None
    overrides: list[str]
    experiment: dict[str, Any]
    trials: list[Trial]


def plan(config: str, grid_items: list[str] | None, seeds: int | None, out: Path,
         overrides: list[str] | None = None) -> SweepPlan:
    """Resolve every trial's config (raises ConfigError before anything is written)."""
    raw, exp = experiments.raw_config(config)
    exp_sweep = exp.get("sweep") or {}
    if not isinstance(exp_sweep, dict):
        raise C.ConfigError(f"{config}: experiment.sweep must be a mapping with grid and seeds")
    if grid_items:
        grid = parse_grid(grid_items)
    else:
        grid = exp_sweep.get("grid") or {}
        if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
            raise C.ConfigError(f"{config}: experiment.sweep.grid must map each key to a list of values")
    if seeds is None:
        seeds = exp_sweep.get("seeds")
    trials = expand(raw, grid, seeds, overrides)
    return SweepPlan(config, Path(out), grid, seeds, list(overrides or []), exp, trials)


def _comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """A config without the settings that do not change results (torch threads)."""
    d = yaml.safe_load(yaml.safe_dump(cfg_dict))
    d.get("train", {}).pop("threads", None)
    return d


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
    return f"{prefix.rstrip('.')} ({a!r} there, {b!r} now)"


def _trial_config(run: Run) -> dict[str, Any]:
    """A trial folder's saved config.yaml as a mapping; StoreError (exit 2, one line) when it is damaged."""
    return run.read_config(f"delete the trial folder {run.path} to train it afresh, or rerun with --overwrite "
                           "to replace every trial folder")


def check_existing(p: SweepPlan, overwrite: bool) -> None:
    """Refuse to mix runs of another config into this sweep's trial folders, and to let
    --overwrite delete a trial folder that is not only a run."""
    for t in p.trials:
        run = Run(p.out / t.name)
        if run.path.exists() and not run.path.is_dir():
            raise C.ConfigError(f"{run.path} is a file where trial {t.name!r} needs a folder; move it or use another --out")
        if overwrite and run.entries() and (not run.is_run() or run.foreign_entries()):
            raise C.ConfigError(f"{run.path} is not only a grokscope run, so --overwrite will not delete it; "
                                "move it or use another --out")
        if overwrite or not run.config_path.exists():
            continue
        have = _comparable(_trial_config(run))
        want = _comparable(t.config.model_dump(mode="json"))
        if have != want:
            raise C.ConfigError(f"{run.path} holds a run of a different config ({_first_difference(have, want)}); "
                                "use another --out, or --overwrite to replace it")


def write_plan(p: SweepPlan, overwrite: bool, threads: int) -> list[TrialJob]:
    """Write sweep.json and the trials' configs; return the jobs still to run."""
    p.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(p.out / "sweep.json", {
        "source": p.source, "grid": p.grid, "seeds": p.seeds, "set": p.overrides,
        "experiment": {k: v for k, v in p.experiment.items() if k != "sweep"},
        "trials": [{"name": t.name, "settings": t.settings} for t in p.trials],
    })
    jobs = []
    for t in p.trials:
        run_dir = p.out / t.name
        if overwrite and Run(run_dir).entries():
            Run(run_dir).clear()  # only a run folder, and only of our files (checked by check_existing)
        cfg_path = p.out / ".trials" / f"{t.name}.yaml"
        atomic_write_text(cfg_path, C.to_yaml(t.config))
        run = Run(run_dir)
        if training_done(run) and not needs_analysis(run, t.config):
            continue
        jobs.append(TrialJob(t.name, cfg_path, run_dir, p.out / ".trials" / f"{t.name}.log", threads))
    return jobs


def run_sweep(config: str, grid_items: list[str] | None, seeds: int | None, out: Path,
              backend: str = "local", workers: int | None = None, ray_address: str | None = None,
              overrides: list[str] | None = None, overwrite: bool = False,
              echo: Callable[[str], None] = print, threads: int | None = None) -> list[dict[str, Any]]:
    """Plan, validate, run and summarise a sweep. Returns one result per trial that ran.

    `threads`: torch threads per trial (default: the cores shared among the trials at once).
    """
    if backend not in BACKENDS:
        raise C.ConfigError(f"--backend {backend!r}: choose local or ray")
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise C.ConfigError(f"--workers must be at least 1 (got {workers})")
    if threads is not None and threads < 1:
        raise C.ConfigError(f"--threads must be at least 1 (got {threads})")
    if ray_address and backend != "ray":
        raise C.ConfigError("--ray-address needs --backend ray")
    p = plan(config, grid_items, seeds, out, overrides)
    if backend == "ray":
        from grokscope.sweep.ray_backend import check_address, require_ray

        require_ray()
        if ray_address:
            check_address(ray_address)
    if p.out.exists() and not p.out.is_dir():
        raise C.ConfigError(f"--out {str(p.out)!r} is a file, not a folder; choose another --out")
    check_existing(p, overwrite)
    threads = threads or threads_per_trial(min(workers, max(1, len(p.trials))))
    with folder_lock(p.out, "sweep folder"):
        check_existing(p, overwrite)  # again under the lock: another sweep may have written since
        remove_temp_files(p.out)
        remove_temp_files(p.out / ".trials")
        return _run_locked(p, overwrite, threads, backend, workers, ray_address, echo)


def _run_locked(p: SweepPlan, overwrite: bool, threads: int, backend: str, workers: int,
                ray_address: str | None, echo: Callable[[str], None]) -> list[dict[str, Any]]:
    jobs = write_plan(p, overwrite, threads)
    skipped = len(p.trials) - len(jobs)
    echo(f"sweep {p.out}: {len(p.trials)} trials ({skipped} already finished), backend {backend}, "
         f"{min(workers, max(1, len(jobs)))} at once, {threads} torch thread(s) each")
    n_done = [0]

    def on_done(res: dict[str, Any]) -> None:
        n_done[0] += 1
        grok = res.get("grok_epoch_99")
        extra = f", grokked at epoch {grok:.0f}" if grok is not None else ""
        err = f" - {res['error']}" if res.get("status") not in ("completed", "stopped_early") and res.get("error") else ""
        secs = f" in {res['seconds']:.0f} s" if res.get("seconds") is not None else ""
        echo(f"[{n_done[0]}/{len(jobs)}] {res['name']}: {res.get('status')}{secs}{extra}{err}")

    results: list[dict[str, Any]] = []
    try:
        if backend == "local":
            from grokscope.sweep.local import run_local

            results = run_local(jobs, workers, on_done)
        else:
            from grokscope.sweep.ray_backend import run_ray

            results = run_ray(jobs, workers, ray_address, on_done)
    finally:
        summarise(p.out, echo)
    return results


def summarise(out: Path, echo: Callable[[str], None] = print) -> None:
    """Write DIR/runs.csv and DIR/sweep.html from whatever runs the folder holds.

    Copy-LM trials (task.name text) also get their own report page here, with the sweep's
    experiment beside them (each copy experiment gets a report page); the
    sweep page links to them.
    """
    from grokscope.report.sweep import write_sweep_report
    from grokscope.sweep.table import runs_in, runs_table, sweep_info, write_csv

    paths = runs_in(out)
    if not paths:
        return
    trial_reports(paths, (sweep_info(out).get("experiment") or {}), echo)
    table = runs_table(out)
    write_csv(table, out / "runs.csv")
    html = write_sweep_report(out, table)
    echo(f"table: {out / 'runs.csv'}  figures: {html}")


def trial_reports(paths: list[Path], experiment: dict[str, Any], echo: Callable[[str], None] = print) -> None:
    """A report page for each copy-LM trial; a trial whose page fails says so and the rest go on."""
    from grokscope.report import write_report

    for path in paths:
        try:
            raw = Run(path).read_config()
            if (raw.get("task") or {}).get("name") != "text":
                continue
            write_report(path, experiment=experiment or None)
        except Exception as err:  # a report is a view: never lose the sweep's table over one
            echo(f"report of {path.name} failed: {type(err).__name__}: {err}")
