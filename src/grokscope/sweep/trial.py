"""One sweep trial: start, resume or skip the run, then analyse it (run by `sweep.worker`).

The decision is made from the run folder alone, so a rerun of a sweep does the right thing for
every trial: a finished run is skipped (only its analysis is done if missing), a run with a
checkpoint is resumed from it (`pipeline.train_run(..., resume=True)`), anything else starts
afresh. Any failure is written into the run's `run.json` (`status`, `error`, `traceback`) so the
folder says why; the exit code is 0 only when the trial finished.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from grokscope import config as C
from grokscope.store import FolderLocked, Run

DONE = ("completed", "stopped_early")


def training_done(run: Run) -> bool:
    if not run.config_path.exists():
        return False
    info = run.read_info()
    return info.get("status") in DONE and bool(run.checkpoint_steps())


def analysis_applies(cfg: C.RunConfig) -> bool:
    """Whether analysis covers such a run (docs/measures.md: modular arithmetic and the copy LM)."""
    from grokscope.analysis.runner import analysis_supported

    return analysis_supported(cfg)


def needs_analysis(run: Run, cfg: C.RunConfig) -> bool:
    return analysis_applies(cfg) and run.read_summary() is None


def record_outcome(run: Run, **fields: Any) -> None:
    """Write why a trial stopped into its run.json, in a folder that is ours only: a run, or a
    folder that is empty or absent, which is then marked as a run (a trial that failed before
    training began, say on a missing corpus, must still be a run that a rerun of the sweep starts
    again). A folder holding anything else is left as it was."""
    if not run.is_run():
        if run.entries():
            return
        run.mark()
    run.update_info(**fields)


def run_trial(cfg: C.RunConfig, out: Path, threads: int | None = None) -> dict[str, Any]:
    """Train (or resume, or skip) and analyse one trial in this process. Returns run.json."""
    from grokscope import pipeline

    if threads is not None and cfg.train.threads is None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"threads": threads})})
    run = Run(out)
    try:
        if not training_done(run):
            resumable = run.config_path.exists() and bool(run.checkpoint_steps())
            pipeline.train_run(cfg, out, resume=resumable, overwrite=not resumable, progress=False)
            run.update_info(error=None, traceback=None)
        if needs_analysis(run, cfg):
            try:
                from grokscope.analysis.runner import analyze_run

                analyze_run(out)
                run.update_info(analysis_error=None)
            except Exception as err:  # the trained run stays good; say why analysis failed
                run.update_info(analysis_error=f"{type(err).__name__}: {err}")
    except FolderLocked:
        raise  # another process is training it: its run.json is that process's to write
    except KeyboardInterrupt:
        record_outcome(run, status="interrupted", error="interrupted (SIGINT/SIGTERM); rerun the sweep to resume")
        raise
    except BaseException as err:
        record_outcome(run, status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        raise
    return run.read_info()
