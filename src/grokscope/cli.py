"""The `grokscope` command: train, reproduce (one experiment, or `reproduce --all` and its replication
page), analyze, forecast, report (a run, `report --index`, or `report --replication`), sweep, runs, config.

Exit codes: 0 success, 2 bad input with a one-line message, 3 a run that diverged (its loss
became non-finite; run.json says `diverged`), 130 interrupted, 1 an internal error.
Bad input never touches what is already saved: every check runs before the first write.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from grokscope import config as C
from grokscope import experiments
from grokscope.store import StoreError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train small transformers, watch them grok, and explain why.")

SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a config field: KEY=VALUE (dotted), repeatable.")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default: runs/NAME).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


class BadInput(Exception):
    """Raised for user errors that are not config or store errors."""


def echo_err(msg: str) -> None:
    typer.echo(msg, err=True)


# ------------------------------------------------------------------------------------- train
@app.command()
def train(
    config: Annotated[str | None, typer.Argument(help="YAML config file, or a named experiment.")] = None,
    out: OutOpt = None,
    set_: SetOpt = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue the run in this folder from its latest checkpoint.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a run already in --out.")] = False,
    quiet: QuietOpt = False,
    forecast_from: Annotated[list[Path] | None, typer.Option(
        "--forecast-from", help="Show a live forecast of the grokking epoch in the progress bar, fitted on the grokked, "
        "analysed runs in this folder (repeatable; e.g. runs/seeds). Off by default: it analyses each checkpoint.")] = None,
) -> None:
    """Train one run into a run folder (or resume one)."""
    from grokscope import pipeline
    from grokscope.store import Run

    if resume is not None:
        if config is not None:
            raise BadInput("--resume takes its config from the run folder; drop the CONFIG argument")
        if overwrite:
            raise BadInput("--resume continues the run and --overwrite replaces it; pick one")
        if out is not None and out.resolve() != resume.resolve():
            raise BadInput(f"--resume {str(resume)!r} continues that folder; --out {str(out)!r} names another: drop --out")
        if resume.exists() and not resume.is_dir():
            raise BadInput(f"--resume {str(resume)!r} is a file, not a run folder; pass the folder made by `grokscope train`")
        cfg = pipeline.load_run_config(Run(resume), set_)
        info = pipeline.train_run(cfg, resume, resume=True, progress=not quiet, forecast_from=forecast_from)
        _print_train_summary(resume, info)
        return
    if config is None:
        raise BadInput("give a CONFIG (YAML file or experiment name) or --resume RUN_DIR")
    cfg, _ = experiments.load(config, set_)
    out = out or default_out(cfg.name or Path(config).stem)
    info = pipeline.train_run(cfg, out, overwrite=overwrite, progress=not quiet, forecast_from=forecast_from)
    _print_train_summary(out, info)


def default_out(name: str) -> Path:
    """runs/NAME for a plain name; a name that could leave runs/ needs an explicit --out."""
    return Path("runs") / C.check_name(name, "the run's name")


class Diverged(Exception):
    """Training stopped because the loss or the weights became non-finite."""


def _print_train_summary(out: Path, info: dict) -> None:
    typer.echo(f"run: {out}  status: {info.get('status')}  steps: {info.get('last_step')}")
    if info.get("status") == "diverged":
        raise Diverged(f"the run in {out} diverged at step {info.get('diverged_at_step')} (a non-finite loss or "
                       f"weight norm) and was stopped; lower optim.lr or add optim.grad_clip, then train it afresh")
    if "grok_epoch_50" in info:
        typer.echo(f"test accuracy first above 50% at epoch {_fmt(info.get('grok_epoch_50'))}, "
                   f"above 99% at epoch {_fmt(info.get('grok_epoch_99'))}")
    if info.get("steps_per_second"):
        typer.echo(f"speed: {info['steps_per_second']:.1f} steps/s over {info.get('train_seconds', 0):.0f} s")
    live = info.get("live_forecast")
    if live:
        said = [f"{k} at epoch {f['at']:,.0f}: {f['epoch']:,.0f} [{f['low']:,.0f}-{f['high']:,.0f}]"
                for k, f in (("first", live["first"]), ("last", live["last"])) if f]
        cost = live["seconds"] / max(info.get("train_seconds") or 0, 1e-9)
        typer.echo(f"live forecast of the 99% epoch (fitted on {live['train_runs']} runs): "
                   f"{'; '.join(said) or 'none made (fewer than 3 checkpoints before the run ended or grokked)'}; "
                   f"it cost {live['seconds']:.1f} s, {cost:.1%} of the training time")


def _fmt(x: float | None) -> str:
    return "never" if x is None else f"{x:.0f}"


# ------------------------------------------------------------------------------------- reproduce
@app.command()
def reproduce(
    name: Annotated[str | None, typer.Argument(help="Experiment name (see --list).")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the named experiments.")] = False,
    out: OutOpt = None,
    set_: SetOpt = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Shorthand for --set train.epochs=N.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted reproduction in --out.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace runs already in --out.")] = False,
    workers: Annotated[int | None, typer.Option("--workers", "-w", help="Sweep experiments: trials at once (default: the number of cores).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="Torch threads (per trial of a sweep; default: cores / workers, or train.threads).")] = None,
    quiet: QuietOpt = False,
    all_: Annotated[bool, typer.Option("--all", help="Run every experiment of the grokking paper into --out DIR (default runs/), then write DIR/replication.html, .json and .md; rerun to continue.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="With --all: each experiment at a tiny budget, a small model and one seed (minutes; default --out runs/quick).")] = False,
    only: Annotated[str | None, typer.Option("--only", help="With --all: these experiments only, comma-separated.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --all: print the plan and the time estimate, train nothing.")] = False,
) -> None:
    """Run a named experiment end to end: train, analyze, report. With --all, every experiment and the replication page."""
    if all_:
        _reproduce_all(name, list_, out, set_, epochs, resume, overwrite, workers, threads, quiet, quick, only, dry_run)
        return
    if quick or only is not None or dry_run:
        raise BadInput("--quick, --only and --dry-run go with --all")
    if list_ or name is None:
        for n in experiments.names():
            m = experiments.meta(n)
            typer.echo(f"{n:24s} {m.get('title', '')}  [{m.get('reproduces', '')}]")
        return
    from grokscope import pipeline

    overrides = list(set_ or []) + ([f"train.epochs={epochs}"] if epochs is not None else [])
    cfg, exp = experiments.load(name, overrides)
    out = out or default_out(Path(name).stem if experiments.looks_like_path(name) else name)
    if exp.get("sweep"):  # a sweep experiment: many runs (a rerun resumes, so --resume is implied)
        _run_sweep(name, None, None, out, "local", workers, None, overrides, overwrite, quiet, threads)
        return
    if workers is not None:
        raise BadInput(f"--workers applies to sweep experiments; {name!r} is one run")
    if threads is not None:
        if threads < 1:
            raise BadInput(f"--threads must be at least 1 (got {threads})")
        cfg, exp = experiments.load(name, overrides + [f"train.threads={threads}"])
    if resume:  # the run's own config, as `train --resume` does: --set may only lengthen it
        from grokscope.store import Run

        extra = [f"train.threads={threads}"] if threads is not None else []
        cfg = pipeline.load_run_config(Run(out), overrides + extra)
    info = pipeline.train_run(cfg, out, resume=resume, overwrite=overwrite, progress=not quiet)
    _print_train_summary(out, info)
    from grokscope.analysis.runner import analysis_supported, analyze_run

    if analysis_supported(cfg):
        _print_analysis_summary(analyze_run(out, log=None if quiet else echo_err))

    from grokscope.report import write_report

    typer.echo(f"report: {write_report(out, experiment=exp)}")


def _reproduce_all(name: str | None, list_: bool, out: Path | None, set_: list[str] | None, epochs: int | None,
                   resume: bool, overwrite: bool, workers: int | None, threads: int | None, quiet: bool, quick: bool,
                   only: str | None, dry_run: bool) -> None:
    from grokscope.sweep.suite import run_all

    if name is not None or list_:
        raise BadInput("--all runs every experiment; drop the experiment NAME (or use --only NAME,...)")
    if set_ or epochs is not None:
        raise BadInput("--all runs each experiment with its own settings; --set and --epochs apply to one experiment")
    if resume or overwrite:
        raise BadInput("--all continues what its folder holds by itself (no --resume needed) and never replaces runs; "
                       "use another --out for fresh runs")
    names = [n.strip() for n in only.split(",") if n.strip()] if only is not None else None
    if names is not None and not names:
        raise BadInput("--only needs experiment names, e.g. --only mainline,seeds")
    out = out or Path("runs/quick" if quick else "runs")
    manifest = run_all(out, quick=quick, names=names, workers=workers, threads=threads, progress=not quiet,
                       dry_run=dry_run, echo=typer.echo)
    if manifest.get("failed"):
        echo_err(f"grokscope: {len(manifest['failed'])} experiment(s) did not finish ({', '.join(manifest['failed'])}); "
                 f"{out / 'reproduce.json'} and their folders say why; rerun the same command to continue them")
        sys.exit(1)


# ------------------------------------------------------------------------------------- report
@app.command()
def report(
    run: Annotated[Path | None, typer.Argument(help="Run folder: writes RUN/report/index.html and RUN/report/*.png.")] = None,
    index: Annotated[Path | None, typer.Option("--index", help="Instead: write RUNS_DIR/index.html, a sortable table of every run below RUNS_DIR.")] = None,
    experiment: Annotated[str | None, typer.Option("--experiment", "-e", help="Show this named experiment's paper numbers beside the run's.")] = None,
    no_png: Annotated[bool, typer.Option("--no-png", help="Only the HTML page (faster while a run trains).")] = False,
    replication: Annotated[Path | None, typer.Option("--replication", help="Instead: rebuild DIR/replication.html, .json and .md from the runs `reproduce --all` wrote into DIR.")] = None,
) -> None:
    """Write a run's report (self-contained HTML that opens offline, plus PNGs), an index of runs, or the replication page."""
    from grokscope.report import write_index, write_report

    if replication is not None:
        if run is not None or index is not None or experiment is not None or no_png:
            raise BadInput("--replication DIR takes no RUN, --index, --experiment or --no-png")
        from grokscope.report.replication import write_replication

        paths = write_replication(replication)
        typer.echo(f"replication: {paths['html']}  (also {paths['md']}, {paths['json']})")
        return
    if (run is None) == (index is None):
        raise BadInput("give a RUN folder, or --index RUNS_DIR for an index of runs (not both)")
    if index is not None:
        if experiment is not None or no_png:
            raise BadInput("--experiment and --no-png apply to one RUN's report, not to --index")
        typer.echo(f"index: {write_index(index)}")
        return
    typer.echo(f"report: {write_report(run, experiment=experiment, png=not no_png)}")


# ------------------------------------------------------------------------------------- analyze
@app.command()
def analyze(
    run: Annotated[Path, typer.Argument(help="Run folder made by `grokscope train` or `reproduce`.")],
    json_: Annotated[bool, typer.Option("--json", help="Print the analysis summary as JSON on stdout.")] = False,
    step: Annotated[int | None, typer.Option("--step", help="Checkpoint (step) to reverse-engineer; default the last.")] = None,
    per_checkpoint_keys: Annotated[bool, typer.Option("--per-checkpoint-keys", help="Find key frequencies on every checkpoint instead of reusing the analysed one's.")] = False,
    keys: Annotated[str | None, typer.Option("--keys", help="Use these key frequencies, comma-separated (e.g. 14,35,41).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="Cores to use: torch threads, and with --llc that many single-thread processes for the chains (default: the run's train.threads, else every core).")] = None,
    key_rule: Annotated[str, typer.Option("--key-rule", help="How key frequencies are found: wl (the paper's: "
                                          "the DFT of W_L) or neurons (through the neurons' frequencies).")] = "wl",
    llc: Annotated[bool, typer.Option("--llc", help="Also estimate the local learning coefficient of every checkpoint (SGLD; about a sixth of the training time).")] = False,
    llc_set: Annotated[list[str] | None, typer.Option("--llc-set", help="An LLC setting: KEY=VALUE (epsilon, gamma, nbeta, chains, burnin, draws, batches, seed), repeatable.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Analyse a run (writes RUN/analysis): a modular-arithmetic run is reverse-engineered and its progress
    measures computed; a copy-LM run gets its copy, ICL and induction summary."""
    from grokscope.analysis.runner import analyze_run

    if threads is not None and threads < 1:
        raise BadInput(f"--threads must be at least 1 (got {threads})")
    llc_settings = None
    if llc_set and not llc:
        raise BadInput("--llc-set changes the LLC's settings; add --llc")
    if llc:
        from grokscope.analysis.llc import Settings

        llc_settings = Settings().with_overrides(llc_set or [])
    ks = None
    if keys is not None:
        try:
            ks = sorted({int(k) for k in keys.split(",") if k.strip()})
        except ValueError:
            raise BadInput(f"--keys {keys!r}: expected comma-separated frequencies, e.g. --keys 14,35,41") from None
    summary = analyze_run(run, step=step, per_checkpoint_keys=per_checkpoint_keys, keys=ks, threads=threads,
                          key_rule=key_rule, log=None if (quiet or json_) else echo_err, llc=llc_settings)
    if json_:
        typer.echo(_json_dump(summary))
    else:
        _print_analysis_summary(summary)
        if llc:
            v, sd = summary["llc"], summary["llc_std"]
            typer.echo(f"LLC at step {summary['step']}: " + ("n/a (the chain diverged)" if v is None else f"{v:.3g}")
                       + ("" if sd is None else f" (std over chains {sd:.2g})") + "; every checkpoint's is in the `llc` table")


def _print_analysis_summary(s: dict) -> None:
    if "key_frequencies" not in s:  # another task's analysis: print what it wrote
        typer.echo(_json_dump(s))
        return
    nf = s.get("neuron_fve")
    typer.echo(f"analysis: {s['run']}/analysis  (step {s['step']}, {s['n_checkpoints']} checkpoints, "
               f"{s['timing_seconds']['total']:.1f} s)")
    typer.echo(f"key frequencies {s['key_frequencies']}; neurons explained {'n/a' if nf is None else f'{nf:.1%}'}; "
               f"logit FVE {s['logit_fve']:.3f}; test loss {s['test_loss']:.3g}")
    ph = s["phases"]
    typer.echo("phases: " + ", ".join(f"{k} {'not reached' if v is None else f'{v[0]:.0f}-{v[1]:.0f}'}"
                                      for k, v in ph.items()))


# ------------------------------------------------------------------------------------- forecast
@app.command()
def forecast(
    run: Annotated[Path, typer.Argument(help="An analysed run folder (`grokscope analyze RUN`), before it groks.")],
    at: Annotated[float | None, typer.Option("--at", help="Forecast from the curves up to this epoch (default: the run's latest).")] = None,
    train_on: Annotated[list[Path] | None, typer.Option("--train-on", help="Fit on the grokked, analysed runs in this run folder or "
                                                        "folder of runs, repeatable (default: RUN's parent folder and below).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the forecast as JSON on stdout.")] = False,
) -> None:
    """Forecast the epoch at which RUN's test accuracy will pass 99%, with an interval, beside a naive
    baseline (docs/forecast.md). Fitted on other runs only; reads RUN's rows up to --at only."""
    import math

    from grokscope.analysis import forecast as fc
    from grokscope.report.forecast import find_runs, load_curves, load_many

    target = load_curves(run)
    t = target.last_epoch if at is None else at
    folders = train_on or [run.resolve().parent]
    paths = [p for p in find_runs(folders) if p != run.resolve()]
    curves, _ = load_many(paths)
    others = [c for c in curves if c.grok_epoch is not None and c.setup != target.setup]
    try:
        fc.check_at(target, t)
        if len(others) < 3:
            raise fc.ForecastError(f"found {len(others)} other grokked, analysed runs in {', '.join(map(str, folders))}; "
                                   "the forecast needs 3 to fit on: pass --train-on DIR")
        model = fc.fit(others, fc.common_features(others + [target]))
        f = fc.predict(model, target, t)
    except fc.ForecastError as err:
        raise BadInput(str(err)) from None
    actual = target.grok_epoch
    out = {"run": str(run), "at": t, "forecast": f.epoch, "low": f.low, "high": f.high, "interval": "80%",
           "baseline": f.baseline if math.isfinite(f.baseline) else None, "baseline_loss": model.loss_at_grok,
           "actual": actual, "train_runs": len(model.runs), "ridge_lambda": model.lam,
           "features": {k: v if math.isfinite(v) else None for k, v in f.features.items()},
           "loro_mean_abs_error_log_ratio": model.loro_mae}
    if json_:
        typer.echo(_json_dump(out))
        return
    typer.echo(f"{run} at epoch {t:,.0f}: test accuracy passes 99% at epoch {f.epoch:,.0f} "
               f"(80% interval {f.low:,.0f}-{f.high:,.0f})")
    base = (f"epoch {f.baseline:,.0f}" if math.isfinite(f.baseline) else "never (test loss is not falling)")
    typer.echo(f"baseline (log test loss extrapolated linearly to {model.loss_at_grok:.3g}): {base}")
    typer.echo(f"fitted on {len(model.runs)} other runs; leave-one-run-out error of ln((T - t)/t): {model.loro_mae:.2f}")
    if actual is not None:
        typer.echo(f"actual: epoch {actual:,.0f} (the run's rows after epoch {t:,.0f} were not read)")


# ------------------------------------------------------------------------------------- sweep
@app.command()
def sweep(
    config: Annotated[str, typer.Argument(help="YAML config file, or a named experiment (its `sweep:` grid is the default).")],
    grid: Annotated[list[str] | None, typer.Option("--grid", "-g", help="KEY=V1,V2,... swept values; repeat for more keys (product).")] = None,
    seeds: Annotated[int | None, typer.Option("--seeds", help="Seeds per setting: the config's seed, +1, ... (default 1).")] = None,
    out: OutOpt = None,
    backend: Annotated[str, typer.Option("--backend", help="local (processes on this machine) or ray.")] = "local",
    workers: Annotated[int | None, typer.Option("--workers", "-w", help="Trials at once (default: the number of cores).")] = None,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Ray cluster to join (default: start a local Ray).")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="Torch threads per trial (default: cores / workers).")] = None,
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace this sweep's trial folders already in --out.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Run a grid of trials (x seeds), each an ordinary run folder under --out; rerun to resume."""
    out = out or default_out(f"sweep-{Path(config).stem}")
    _run_sweep(config, grid, seeds, out, backend, workers, ray_address, list(set_ or []), overwrite, quiet, threads)


def _run_sweep(config: str, grid: list[str] | None, seeds: int | None, out: Path, backend: str,
               workers: int | None, ray_address: str | None, overrides: list[str], overwrite: bool, quiet: bool,
               threads: int | None = None) -> None:
    from grokscope.sweep import run_sweep

    results = run_sweep(config, grid, seeds, out, backend=backend, workers=workers, ray_address=ray_address,
                        overrides=overrides, overwrite=overwrite, echo=(lambda m: None) if quiet else typer.echo,
                        threads=threads)
    bad = [r for r in results if r.get("status") not in ("completed", "stopped_early")]
    typer.echo(f"sweep: {out}  report: {out / 'sweep.html'}")
    if bad:
        echo_err(f"grokscope: {len(bad)} of {len(results)} trials did not finish ({', '.join(r['name'] for r in bad)}); "
                 "each folder's run.json says why; rerun the same command to resume them")
        sys.exit(1)  # not typer.Exit: main() runs the app with standalone_mode=False, which drops its code


@app.command()
def runs(
    folder: Annotated[Path, typer.Argument(help="A folder of run folders (e.g. a sweep's --out).")],
    csv: Annotated[Path | None, typer.Option("--csv", help="Where to write the table (default: FOLDER/runs.csv).")] = None,
) -> None:
    """Print the comparison table of all runs in a folder (Table 5 columns), write it as CSV, and draw their curves side by side (sweep.html, or runs.html for runs trained one by one)."""
    import pandas as pd

    from grokscope.sweep.table import runs_table, sweep_info, write_csv

    table = runs_table(folder)
    path = write_csv(table, csv or folder / "runs.csv")
    page = None
    if sweep_info(folder) or len(table) > 1:  # a sweep, or runs trained one by one: their curves side by side
        from grokscope.report.sweep import write_sweep_report

        page = write_sweep_report(folder, table, table.attrs.get("settings"))
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_colwidth", 40):
        shown = table.drop(columns=[c for c in ("error",) if c in table]).astype(object)
        typer.echo(shown.where(shown.notna(), "-").to_string(index=False))
    typer.echo(f"table: {path}" + (f"  page: {page}" if page else ""))


# ------------------------------------------------------------------------------------- config
@app.command("config")
def show_config(
    config: Annotated[str, typer.Argument(help="YAML config file or experiment name.")] = "mainline",
    set_: SetOpt = None,
) -> None:
    """Print a fully resolved config (defaults filled in, overrides applied)."""
    cfg, _ = experiments.load(config, set_)
    typer.echo(C.to_yaml(cfg), nl=False)


def main() -> None:
    """Entry point: map bad input to exit 2 with one line, internal errors to exit 1."""
    from grokscope.sweep.worker import interrupt_on_sigterm

    interrupt_on_sigterm()
    try:
        # typer turns Ctrl-C (and typer.Exit) into a returned exit code when not standalone
        code = app(standalone_mode=False)
        if code == 130:
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except (C.ConfigError, StoreError, BadInput) as err:
        echo_err(f"grokscope: {err}")
        sys.exit(2)
    except Diverged as err:
        echo_err(f"grokscope: {err}")
        sys.exit(3)
    except MemoryError:
        echo_err("grokscope: out of memory; shrink the task (task.p, n_train) or the model, or use fewer --workers")
        sys.exit(2)
    except OSError as err:  # the file system refused a path the user gave (ENAMETOOLONG, EROFS, ENOTDIR...)
        where = f": {err.filename}" if err.filename else ""
        echo_err(f"grokscope: {err.strerror or err}{where}; check the path and its permissions")
        sys.exit(2)
    except typer.Abort:
        echo_err("grokscope: interrupted; continue with `grokscope train --resume RUN_DIR`")
        sys.exit(130)
    except KeyboardInterrupt:
        echo_err("grokscope: interrupted; continue with `grokscope train --resume RUN_DIR`")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as err:
        # click's usage errors (typer may vendor click, so match by shape, not by class)
        if hasattr(err, "show") and hasattr(err, "exit_code") and hasattr(err, "format_message"):
            echo_err(f"grokscope: {err.format_message()}; see `grokscope --help`")
            sys.exit(2)
        raise


def _json_dump(obj: object) -> str:
    return json.dumps(obj, indent=2)


if __name__ == "__main__":
    main()
