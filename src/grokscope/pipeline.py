"""What the CLI verbs do, as plain functions: start or resume a run, reproduce an experiment.

The CLI only parses arguments and maps errors to exit codes; everything else lives here so that
sweeps and tests call the same code. The run folder's checks are `grokscope.train.rundir`'s (the
copy-LM trainer shares them), and a run's config is read by `grokscope.store.read_run_config`
(`load_run_config` here is that function, under its old name).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from grokscope import config as C
from grokscope.store import (
    read_run_config as load_run_config,  # the one validated reader; its old name here
)
from grokscope.train.rundir import check_run_dir, prepare_run_dir, record_config


def check_memory(cfg: C.RunConfig) -> None:
    """Refuse a config whose rough memory need exceeds this machine's memory, before allocating."""
    need = C.estimate_bytes(cfg)
    have = physical_memory()
    if have and need > have:
        raise C.ConfigError(f"this config needs about {need / 2**30:.0f} GiB of memory and the machine has "
                            f"{have / 2**30:.0f} GiB; shrink the task (task.p, n_train) or the model")


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def train_run(cfg: C.RunConfig, out: Path, resume: bool = False, overwrite: bool = False,
              progress: bool = True) -> dict[str, Any]:
    """Train `cfg` into `out` (or resume the run there), holding the folder's lock throughout.
    Returns run.json's content."""
    from grokscope.train.trainer import Trainer

    check_memory(cfg)
    if cfg.task.name == "text":
        from grokscope.lm.trainer import train_text_run  # the copy-LM trainer

        return train_text_run(cfg, out, resume=resume, overwrite=overwrite, progress=progress)
    run = check_run_dir(out, resume, overwrite)
    trainer = Trainer(cfg, run, progress=progress)  # builds the task and model: a bad config fails here
    with run.lock():
        prepare_run_dir(out, resume, overwrite)
        record_config(run, cfg, resume, trainer.total, trainer.model)
        return trainer.fit(resume=resume)


__all__ = ["check_memory", "load_run_config", "physical_memory", "train_run"]
