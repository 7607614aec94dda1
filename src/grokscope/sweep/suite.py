"""Reproduce every experiment of the grokking paper into one folder, then its replication page.

    grokscope reproduce --all [--quick] [--out DIR] [--only NAME,...] [--dry-run] [-w N] [--threads N]

Each experiment goes to DIR/<name>, as `grokscope reproduce NAME --out DIR/NAME` would put it: a
run folder for a single-run experiment (the mainline: trained, analysed and reported), a sweep
folder for the others (trials as child processes, `--workers` at once). Running the command
again continues: finished runs are not retrained (only their missing analysis is done), started
ones resume from their latest checkpoint, a single run whose config now asks for more epochs is
lengthened. Every experiment's config and folder is checked before anything trains; a folder
holding a run of another config is refused with one line.

The experiments are every named one whose task is not the copy LM's text (report/claims.py reads
them; copy-LM claims can join the registry later). `--quick` runs each at a tiny budget
(`QUICK_STEPS` epochs or steps, a small model, one seed) to test the whole pipeline in minutes;
its default folder is runs/quick, apart from the full runs. Before training, the command prints
an estimate of the time from the configs' budgets and the speeds measured on the 2-core machine
(`seconds_per_step`). After each experiment it writes DIR/reproduce.json (what ran, how long)
and the replication page (report/replication.py).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grokscope import config as C
from grokscope import experiments
from grokscope.store import Run, atomic_write_json, folder_lock, read_run_config

QUICK_STEPS = 30  # epochs (or steps) per quick run: enough for 3 checkpoints and a few evaluations
QUICK_MODEL = {"d_model": 32, "d_mlp": 128}  # a small model: the quick runs test the code, not the paper
MANIFEST = "reproduce.json"


@dataclass
class Planned:
    """One experiment of the suite, checked and costed before anything trains."""

    name: str
    sweep: bool
    overrides: list[str]
    seeds: int | None  # sweeps: seeds per setting (None: the experiment's own)
    configs: list[C.RunConfig] = field(default_factory=list)  # every run it will train
    cpu_seconds: float = 0.0  # the estimate, in seconds of one thread


def suite_names() -> list[str]:
    """The experiments `--all` runs: every named one whose task is not text (the copy LM's), in the
    order of the paper's claims, then any other by name."""
    from grokscope.report.claims import experiments_of

    chosen = []
    for n in experiments.names():
        try:
            cfg, _ = experiments.load(n)
        except C.ConfigError:
            chosen.append(n)  # a broken YAML is reported by the plan, not skipped silently
            continue
        if cfg.task.name != "text":
            chosen.append(n)
    order = {n: i for i, n in enumerate(experiments_of())}
    return sorted(chosen, key=lambda n: (order.get(n, len(order)), n))


def quick_overrides(name: str) -> list[str]:
    """A tiny budget and model for `name` (keys its sweep grid sets itself are left to the grid)."""
    cfg, exp = experiments.load(name)
    grid = (exp.get("sweep") or {}).get("grid") or {}
    plain = {k.strip() for k in grid if "," not in k}
    length = "train.steps" if cfg.train.steps is not None else "train.epochs"
    out = [f"{length}={QUICK_STEPS}", f"train.checkpoint_every={QUICK_STEPS // 2}",
           f"train.eval_every={max(1, QUICK_STEPS // 10)}"]
    if cfg.model.arch == "transformer":
        d = QUICK_MODEL["d_model"]
        out += [f"model.d_model={d}", f"model.d_head={max(1, d // cfg.model.n_heads)}",
                f"model.d_mlp={QUICK_MODEL['d_mlp']}"]
    return [o for o in out if o.split("=", 1)[0] not in plain]


# ------------------------------------------------------------------------------------ the estimate
def seconds_per_step(cfg: C.RunConfig) -> float:
    """Seconds of one (shared) thread per optimiser step, evaluations included: the speeds measured
    on the 2-core AMD EPYC (README and the experiment YAMLs' comments), scaled by the work."""
    m, t, tr = cfg.model, cfg.task, cfg.train
    width = (m.d_model / 128) * (0.5 + 0.5 * m.d_mlp / 512 if not m.attn_only else 0.5)
    if t.name == "modular":
        pairs = t.p * t.p
        n_train = round(t.frac_train * pairs)
        rows = min(tr.batch_size or n_train, n_train) + pairs / tr.eval_every / 3  # evaluation: forward only
        if m.n_layers == 1 and m.normalization == "none" and tr.fast:
            return 0.03 + 22e-6 * rows * max(width, 0.15)  # the fast step: 40 ms + 22 us per example (primes.yaml)
        return 7.3e-5 * m.n_layers * rows * max(width, 0.15)  # full forward: 0.56 s/epoch for 2 layers (two-layer.yaml)
    if t.name == "text":
        return 0.18 * (tr.batch_size or 16) * tr.grad_accum * t.context / 2048 * m.n_layers / 4 * m.d_model / 64
    # digits and the sequence tasks: 8.1e-6 s per row-position at d_model 128, attention ~ L^2
    # (skip-trigram.yaml: 25 ms per step of 128 x 16; repeated-subsequence.yaml: 0.2 s of 128 x 85)
    if t.name == "digits":
        length = 3 * t.n_digits + 3
        evals = (t.n_train or t.n_test) + t.n_test
    else:
        length = t.seq_len
        evals = (t.n_train or t.n_test) + t.n_test
    rows = (tr.batch_size or t.n_train or 128) + evals / tr.eval_every / 3
    return 0.002 + 8.1e-6 * rows * length * (1 + length / 32) * m.n_layers * max(width * (1.3 if not m.attn_only else 1), 0.1)


def steps_of(cfg: C.RunConfig) -> int:
    """The run's full budget in optimiser steps (stop rules may end it sooner)."""
    if cfg.train.steps is not None:
        return cfg.train.steps
    epochs = cfg.train.epochs or 0
    t = cfg.task
    n = round(t.frac_train * t.p * t.p) if t.name == "modular" else getattr(t, "n_train", None)
    return epochs * C.steps_per_epoch(cfg, n)


def run_seconds(cfg: C.RunConfig) -> float:
    """One run's estimate in seconds of one thread: training, plus ~10 s to start a process and
    analyse a few checkpoints, plus 0.1 s per checkpoint of p = 113 analysed."""
    steps = steps_of(cfg)
    analysis = 0.0
    if cfg.task.name == "modular":
        analysis = 0.1 * (cfg.task.p / 113) ** 2 * (steps // cfg.train.checkpoint_every + 1)
    return 10.0 + steps * seconds_per_step(cfg) + analysis


def fmt_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ------------------------------------------------------------------------------------ planning
def plan_suite(out: Path, quick: bool, names: list[str] | None = None) -> list[Planned]:
    """Every experiment's configs resolved, and its folder checked against them, before anything
    is written (a ConfigError or StoreError names the first problem)."""
    from grokscope.sweep import check_existing, plan

    chosen = names or suite_names()
    known = set(experiments.names())
    for n in chosen:
        if n not in known:
            raise C.ConfigError(f"unknown experiment {n!r}; `grokscope reproduce --list` shows: {', '.join(sorted(known))}")
    planned = []
    for n in chosen:
        overrides = quick_overrides(n) if quick else []
        _, exp = experiments.load(n, overrides)
        if exp.get("sweep"):
            seeds = 1 if quick else None
            p = plan(n, None, seeds, out / n, overrides)
            check_existing(p, overwrite=False)
            item = Planned(n, True, overrides, seeds, [t.config for t in p.trials])
        else:
            cfg, _ = experiments.load(n, overrides)
            check_single(cfg, out / n)
            item = Planned(n, False, overrides, None, [cfg])
        item.cpu_seconds = sum(run_seconds(c) for c in item.configs)
        planned.append(item)
    return planned


def comparable(cfg: C.RunConfig) -> dict[str, Any]:
    """A config without what may change between a run and its continuation (threads, length)."""
    d = cfg.model_dump(mode="json")
    for k in ("threads", "epochs", "steps"):
        d["train"].pop(k, None)
    return d


def check_single(cfg: C.RunConfig, out: Path) -> None:
    """Refuse a folder that holds a run of another config (a longer or shorter one is fine)."""
    run = Run(out)
    if out.exists() and not out.is_dir():
        raise C.ConfigError(f"{out} is a file where the experiment's run folder should be; move it or use another --out")
    if not run.config_path.exists():
        if run.entries() and not run.is_run():
            raise C.ConfigError(f"{out} exists and is not a grokscope run folder; move it or use another --out")
        return
    have = read_run_config(run)
    if comparable(have) != comparable(cfg):
        a, b = comparable(have), comparable(cfg)
        diff = next((f"{s}.{k}" for s in a for k in (a[s] if isinstance(a[s], dict) else {})
                     if isinstance(b.get(s), dict) and a[s].get(k) != b[s].get(k)), "its settings")
        raise C.ConfigError(f"{out} holds a run of a different config ({diff}); use another --out "
                            "(`--quick` runs go to runs/quick by default)")


def estimate_lines(planned: list[Planned], cores: int, quick: bool) -> list[str]:
    """What the command prints before training: each experiment's runs and time, and the total."""
    lines = []
    total = 0.0
    for p in planned:
        budget = {f"{c.train.steps} steps" if c.train.steps is not None else f"{c.train.epochs} epochs" for c in p.configs}
        lines.append(f"  {p.name:22s} {len(p.configs):3d} run(s), {', '.join(sorted(budget))}: "
                     f"~{fmt_duration(p.cpu_seconds / cores)}")
        total += p.cpu_seconds
    head = (f"estimate: about {fmt_duration(total / cores)} on {cores} core(s) "
            "(an upper bound: every run to its full budget, where stop rules end most sooner; from the speeds "
            "measured on a 2-core AMD EPYC)")
    if quick:
        full = sum(sum(run_seconds(c) for c in experiments_configs(p.name)) for p in planned)
        head += f"; the full runs would take about {fmt_duration(full / cores)}"
    return [head, *lines]


def experiments_configs(name: str) -> list[C.RunConfig]:
    """Every run config of an experiment at its full settings (its sweep's trials, or its one run)."""
    from grokscope.sweep.grid import expand

    raw, exp = experiments.raw_config(name)
    sweep = exp.get("sweep") or {}
    if not sweep:
        return [C.resolve(raw)]
    return [t.config for t in expand(raw, sweep.get("grid") or {}, sweep.get("seeds"))]


# ------------------------------------------------------------------------------------ running
def run_single(item: Planned, out: Path, threads: int | None, quick: bool, progress: bool,
               echo: Callable[[str], None]) -> dict[str, Any]:
    """Train (or resume, lengthen, or skip), analyse and report one single-run experiment, as
    `reproduce NAME [--resume]` does. Returns run.json."""
    from grokscope import pipeline
    from grokscope.analysis.runner import analysis_supported, analyze_run
    from grokscope.report import write_report
    from grokscope.sweep.trial import training_done

    extra = [f"train.threads={threads}"] if threads is not None else []
    cfg, exp = experiments.load(item.name, item.overrides + extra)
    run = Run(out)
    started = run.config_path.exists() and bool(run.checkpoint_steps())
    if started:
        have = read_run_config(run)
        longer = [f"train.{k}={getattr(cfg.train, k)}" for k in ("epochs", "steps")
                  if getattr(cfg.train, k) is not None and getattr(have.train, k) is not None
                  and getattr(cfg.train, k) > getattr(have.train, k)]
        if not training_done(run) or longer:
            echo(f"{item.name}: resuming {out} from step {run.checkpoint_steps()[-1]}")
            pipeline.train_run(pipeline.load_run_config(run, longer + extra), out, resume=True, progress=progress)
        else:
            echo(f"{item.name}: already trained ({out})")
    else:  # nothing worth keeping: a config with no checkpoint is a run killed as it started
        pipeline.train_run(cfg, out, overwrite=run.is_run(), progress=progress)
    info = run.read_info()
    summary = run.read_summary()
    steps = run.checkpoint_steps()
    if analysis_supported(cfg) and steps and (summary is None or summary.get("step") != steps[-1]):
        analyze_run(out, log=echo if progress else None)
    page = run.report_dir / "index.html"
    newest = max((p.stat().st_mtime for p in (run.analysis_dir / "summary.json", run.db_path) if p.exists()), default=0)
    if not page.exists() or page.stat().st_mtime < newest:
        write_report(out, experiment=exp, png=not quick)
    return info


def run_all(out: Path, quick: bool = False, names: list[str] | None = None, workers: int | None = None,
            threads: int | None = None, progress: bool = True, dry_run: bool = False,
            echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Plan, estimate and run the suite into `out`, writing the manifest and the replication page
    after each experiment. Returns the manifest (its `failed` lists what did not finish)."""
    from grokscope.sweep import run_sweep

    if workers is not None and workers < 1:
        raise C.ConfigError(f"--workers must be at least 1 (got {workers})")
    if threads is not None and threads < 1:
        raise C.ConfigError(f"--threads must be at least 1 (got {threads})")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise C.ConfigError(f"--out {str(out)!r} is a file, not a folder; choose another --out")
    planned = plan_suite(out, quick, names)
    cores = os.cpu_count() or 1
    for line in estimate_lines(planned, cores, quick):
        echo(line)
    if dry_run:
        return {"planned": [p.name for p in planned], "failed": []}
    with folder_lock(out, "reproduction folder"):
        manifest = read_manifest(out)
        manifest.update(format="grokscope-reproduce/1", quick=quick, started=now(), ended=None,
                        estimate_seconds=sum(p.cpu_seconds for p in planned) / cores)
        manifest.setdefault("experiments", {})
        failed: list[str] = []
        for item in planned:
            t0 = time.perf_counter()
            record: dict[str, Any] = {"overrides": item.overrides, "runs": len(item.configs),
                                      "estimate_seconds": item.cpu_seconds / cores, "error": None}
            echo(f"== {item.name} -> {out / item.name}")
            try:
                if item.sweep:
                    results = run_sweep(item.name, None, item.seeds, out / item.name, workers=workers,
                                        overrides=item.overrides, echo=echo if progress else quiet, threads=threads)
                    bad = [r["name"] for r in results if r.get("status") not in ("completed", "stopped_early")]
                    if bad:
                        record["error"] = f"{len(bad)} trial(s) did not finish: {', '.join(bad)}"
                else:
                    info = run_single(item, out / item.name, threads, quick, progress, echo)
                    if info.get("status") not in ("completed", "stopped_early"):
                        record["error"] = f"status {info.get('status')}: {info.get('error') or ''}".strip()
            except KeyboardInterrupt:
                record["error"] = "interrupted; rerun the same command to continue"
                raise
            except Exception as err:  # one experiment's failure must not cost the others
                record["error"] = f"{type(err).__name__}: {err}"
                echo(f"{item.name} failed: {record['error']}")
            finally:
                record["seconds"] = time.perf_counter() - t0
                manifest["experiments"][item.name] = record
                if record["error"]:
                    failed.append(item.name)
                atomic_write_json(out / MANIFEST, manifest)
                write_page(out, echo)
        manifest["ended"] = now()
        manifest["failed"] = failed
        atomic_write_json(out / MANIFEST, manifest)
        paths = write_page(out, echo)
    if paths:
        counts = json.loads(paths["json"].read_text())["counts"]
        echo(f"replication: {paths['html']}  ({', '.join(f'{k} {v}' for k, v in counts.items())}); "
             f"also {paths['md'].name} and {paths['json'].name}")
    return manifest


def quiet(_msg: str) -> None:
    """An echo that says nothing (`--quiet`: no per-trial lines)."""


def write_page(out: Path, echo: Callable[[str], None]) -> dict[str, Path] | None:
    """The replication page; a failure to draw it is said, never fatal (it is a view)."""
    from grokscope.report.replication import write_replication

    try:
        return write_replication(out)
    except Exception as err:
        echo(f"replication page failed: {type(err).__name__}: {err}")
        return None


def read_manifest(out: Path) -> dict[str, Any]:
    try:
        data = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


__all__ = ["QUICK_STEPS", "estimate_lines", "plan_suite", "quick_overrides", "run_all", "seconds_per_step",
           "suite_names"]
