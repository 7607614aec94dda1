"""The run folder's checks before training, shared by both trainers (`train.trainer` through
`pipeline.train_run`, and `lm.trainer.train_text_run`).

Every check is done before the first write: `check_run_dir` refuses to clobber a run by accident
and never deletes a folder that is not only a grokscope run; `prepare_run_dir` clears and marks
the folder under its lock once the new run's config has been fully checked; `record_config`
writes config.yaml, or on resume records a longer length.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from grokscope import config as C
from grokscope.store import Run, StoreError, read_run_config


def check_out_path(out: Path) -> None:
    """A folder path that the file system can hold: every existing part of it a folder, every
    name within the system's limit. Checked before anything is created."""
    for part in out.parts:
        if len(part.encode()) > 255:
            raise StoreError(f"--out: the name {part[:40]!r}... is {len(part.encode())} bytes long; the file system "
                             "allows 255; choose a shorter folder name")
    for parent in [out, *out.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise StoreError(f"--out {str(out)!r}: {str(parent)!r} is a file, not a folder; choose another --out")
            if parent != out and not os.access(parent, os.W_OK | os.X_OK):
                raise StoreError(f"--out {str(out)!r}: {str(parent)!r} is not writable; choose another --out")
            break


def check_run_dir(out: Path, resume: bool, overwrite: bool) -> Run:
    """Check the folder before anything is written or deleted: refuse to clobber a run by accident,
    and never delete a folder that is not only a grokscope run."""
    run = Run(out)
    if resume and overwrite:
        raise C.ConfigError("--resume and --overwrite contradict each other; pick one")
    check_out_path(out)
    if out.exists() and not out.is_dir():
        raise StoreError(f"{str(out)!r} is a file, not a run folder; "
                         + ("pass the folder made by `grokscope train`" if resume else "choose another --out"))
    if resume:
        if unstarted(run):
            raise StoreError(f"{str(out)!r} was stopped before training began; start it again with the command "
                             "that made it (no --resume needed)")
        run.require()
        return run
    if run.entries():
        if not run.is_run():
            raise StoreError(f"{str(out)!r} exists and is not a grokscope run folder (no run.json of ours); "
                             "choose another --out")
        if not overwrite and not unstarted(run):
            raise StoreError(f"{str(out)!r} already holds a run; use --resume to continue it or --overwrite to replace it")
        foreign = run.foreign_entries()
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise StoreError(f"{str(out)!r} holds files a run does not write ({shown}); --overwrite deletes only "
                             "run folders: move them out or choose another --out")
    return run


def unstarted(run: Run) -> bool:
    """A run killed before its config was written: nothing in it is worth keeping, so starting
    it again needs no --overwrite."""
    return run.is_run() and not run.config_path.exists() and not run.checkpoint_steps() and not run.foreign_entries()


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> Run:
    """Under the folder's lock: check_run_dir again (another process may have written it since),
    clear an old run with --overwrite, drop temp files a kill left, and mark a new run (run.json
    first, so that a folder holding any of our files is recognisably a run). Call it only once the
    new run's config has been fully checked (task, data and model built), so that a bad config
    never costs the old run."""
    run = check_run_dir(out, resume, overwrite)
    if not resume and (overwrite or unstarted(run)) and run.entries():
        run.clear()
    run.remove_temp_files()
    run.mark()
    return run


def record_config(run: Run, cfg: C.RunConfig, resume: bool, total: int, model, **info: Any) -> None:
    """Once every check has passed: write a new run's config.yaml, or on resume record_length."""
    if not resume:
        run.write_config(C.to_yaml(cfg))
    else:
        record_length(run, cfg, total, model, **info)


def record_length(run: Run, cfg: C.RunConfig, total: int, model, **info: Any) -> None:
    """On resume: refuse a length below the steps already trained; record a longer one (and a
    new checkpoint cadence) in config.yaml and run.json (`info`: more run.json fields), but only
    once the checkpoint has been seen to load and only if training will go on, so that a resume
    that fails changes nothing."""
    reached = max(run.checkpoint_steps(), default=0)
    if total < reached:
        raise C.ConfigError(f"a resumed run can only be lengthened: it has reached step {reached}, and the new "
                            f"length is {total} steps")
    saved = read_run_config(run)
    changed = {k: getattr(cfg.train, k) for k in ("epochs", "steps", "checkpoint_every")}
    if changed == {k: getattr(saved.train, k) for k in changed}:
        return
    if run.read_info().get("status") == "stopped_early":
        return  # it will not train on: its config stays as it ran
    if reached:
        run.load_into(model)  # a checkpoint that cannot resume fails here, before anything is written
    longer = saved.model_copy(update={"train": saved.train.model_copy(update=changed)})
    run.write_config(C.to_yaml(longer))
    run.update_info(total_steps=total, **info)
