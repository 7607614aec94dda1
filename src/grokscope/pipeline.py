"""What the CLI verbs do, as plain functions: start or resume a run, reproduce an experiment.

The CLI only parses arguments and maps errors to exit codes; everything else lives here so that
sweeps and tests call the same code.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from grokscope import config as C
from grokscope.store import Run, StoreError


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> Run:
    """Check the folder before anything is written: refuse to clobber a run by accident."""
    run = Run(out)
    if resume and overwrite:
        raise C.ConfigError("--resume and --overwrite contradict each other; pick one")
    if resume:
        run.require()
        if not run.checkpoint_steps():
            raise StoreError(f"{str(out)!r} has no checkpoint to resume from; start it again with --overwrite")
        return run
    if out.exists() and any(out.iterdir()):
        if not run.exists():
            raise StoreError(f"{str(out)!r} exists and is not a run folder; choose another --out")
        if not overwrite:
            raise StoreError(f"{str(out)!r} already holds a run; use --resume to continue it or --overwrite to replace it")
        shutil.rmtree(out)
    return run


def train_run(cfg: C.RunConfig, out: Path, resume: bool = False, overwrite: bool = False,
              progress: bool = True) -> dict[str, Any]:
    """Train `cfg` into `out` (or resume the run there). Returns run.json's content."""
    from grokscope.train.trainer import Trainer

    if cfg.task.name == "text":
        from grokscope.lm.trainer import train_text_run  # the copy-LM trainer (SPEC section 7)

        return train_text_run(cfg, out, resume=resume, overwrite=overwrite, progress=progress)
    run = prepare_run_dir(out, resume, overwrite)
    if not resume:
        run.write_config(C.to_yaml(cfg))
    return Trainer(cfg, run, progress=progress).fit(resume=resume)


def load_run_config(run: Run, extend: list[str] | None = None) -> C.RunConfig:
    """A run's own config; `extend` may only lengthen it (train.epochs / train.steps)."""
    import yaml

    run.require()
    raw = yaml.safe_load(run.config_path.read_text())
    for item in extend or []:
        key = item.split("=", 1)[0].strip()
        if key not in ("train.epochs", "train.steps"):
            raise C.ConfigError(f"--set {key}: a resumed run keeps its config; only train.epochs or train.steps may change")
    return C.resolve(raw, extend)
