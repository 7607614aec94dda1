"""What the CLI verbs do, as plain functions: start or resume a run, reproduce an experiment.

The CLI only parses arguments and maps errors to exit codes; everything else lives here so that
sweeps and tests call the same code. The run folder's checks are `grokscope.train.rundir`'s (the
copy-LM trainer shares them), and a run's config is read by `grokscope.store.read_run_config`
(`load_run_config` here is that function, under its old name).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
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
              progress: bool = True, forecast_from: Sequence[Path] | None = None) -> dict[str, Any]:
    """Train `cfg` into `out` (or resume the run there), holding the folder's lock throughout.
    `forecast_from`: folders of grokked, analysed runs to fit a live forecast on (LiveForecast);
    its summary goes into the returned dict under "live_forecast". Returns run.json's content."""
    from grokscope.train.trainer import Trainer

    check_memory(cfg)
    if cfg.task.name == "text":
        if forecast_from:
            raise C.ConfigError("the live forecast reads modular-arithmetic runs' progress measures; "
                                "drop --forecast-from for a copy-LM run")
        from grokscope.lm.trainer import train_text_run  # the copy-LM trainer

        return train_text_run(cfg, out, resume=resume, overwrite=overwrite, progress=progress)
    run = check_run_dir(out, resume, overwrite)
    trainer = Trainer(cfg, run, progress=progress)  # builds the task and model: a bad config fails here
    live = LiveForecast(cfg, trainer, forecast_from) if forecast_from else None  # fitted before anything is written
    if live is not None:
        trainer.callbacks.append(live)
    with run.lock():
        prepare_run_dir(out, resume, overwrite)
        record_config(run, cfg, resume, trainer.total, trainer.model)
        info = trainer.fit(resume=resume)
    return {**info, "live_forecast": live.summary()} if live is not None else info


class LiveForecast:
    """The grokking forecast (analysis.forecast) made while a run trains: `grokscope train
    --forecast-from DIR`.

    It is fitted once, before training starts, on the grokked, analysed runs in DIR (never on a
    run of this run's own setup). At every checkpoint epoch it computes this checkpoint's progress
    measures that need no key frequencies (Gini of W_E and W_L, `excluded_loss_max`, the same
    functions `grokscope analyze` uses) from the live weights, and forecasts from the curves so
    far: the progress bar shows `grok` as "epoch [80% interval]". A resumed run first measures the
    checkpoints already on disk. The cost is that of the analysis per checkpoint (`summary()`
    reports it as a share of the training time); it is off unless asked for.
    """

    def __init__(self, cfg: C.RunConfig, trainer: Any, folders: Sequence[Path]):
        from grokscope.analysis import forecast as fc
        from grokscope.analysis import progress as pg
        from grokscope.analysis.circuits import modular_data
        from grokscope.report.forecast import find_runs, load_many, setup_of

        if cfg.task.name != "modular":
            raise C.ConfigError(f"the live forecast reads modular-arithmetic runs; this run's task is {cfg.task.name!r}")
        self.fc, self.pg = fc, pg
        self.trainer, self.setup = trainer, setup_of(cfg)
        curves, _ = load_many(find_runs(folders))
        others = [c for c in curves if c.grok_epoch is not None and c.setup != self.setup]
        if len(others) < 3:
            raise C.ConfigError(f"--forecast-from found {len(others)} grokked, analysed runs of another setup in "
                                f"{', '.join(map(str, folders))}; the forecast needs 3 to fit on "
                                "(`grokscope analyze` each, e.g. runs/seeds)")
        names = [k for k in fc.common_features(others) if k != "llc_slope"]  # no LLC while training
        try:
            self.model = fc.fit(others, names)
        except fc.ForecastError as err:
            raise C.ConfigError(f"--forecast-from: {err}") from None
        self.ctx = pg.make_context(modular_data(cfg), [])
        self.every = cfg.train.checkpoint_every
        self.steps_per_epoch = trainer.steps_per_epoch
        self.metrics: list[dict[str, float]] | None = None
        self.progress: list[dict[str, float]] = []
        self.first: Any = None  # the first forecast made, and the last
        self.last: Any = None
        self.grokked: float | None = None
        self.seconds = 0.0

    def measure(self, model: Any, step: int) -> None:
        import copy

        if next(model.parameters()).device.type != "cpu":  # a plain-path run on the GPU: measure a CPU copy
            model = copy.deepcopy(model).cpu()
        was_training = model.training
        row = self.pg.progress_row(model, self.ctx)
        model.train(was_training)
        self.progress.append({"step": step, "epoch": step / self.steps_per_epoch,
                              **{k: row.get(k) for k in ("gini_W_E", "gini_W_L", "excluded_loss_max")}})

    def history(self, step: int) -> None:
        """The rows and checkpoints a resumed run already has, up to `step` (not yet evaluated)."""
        import copy

        import pandas as pd

        run = self.trainer.run
        m = run.metrics()
        self.metrics = m[m["step"] < step].to_dict("records") if len(m) else []
        self.grokked = self.fc.grok_epoch(pd.DataFrame(self.metrics))
        model = copy.deepcopy(self.trainer.model)
        for s in run.checkpoint_steps():
            if 0 < s < step and s % self.every == 0:
                run.load_into(model, s)
                self.measure(model, s)

    def __call__(self, step: int, row: dict[str, float]) -> dict[str, str] | None:
        import time

        import pandas as pd

        t0 = time.perf_counter()
        try:
            if self.metrics is None:
                self.history(step)
            assert self.metrics is not None
            self.metrics.append(dict(row, step=step))
            if self.grokked is None and row.get("test_acc", 0.0) > self.fc.GROK_ACC:
                self.grokked = row["epoch"]
            if self.grokked is not None:
                return {"grok": f"at {self.grokked:,.0f}"}
            if step % self.every:
                return self.shown()
            self.measure(self.trainer.model, step)
            curves = self.fc.Curves("this run", pd.DataFrame(self.metrics), pd.DataFrame(self.progress), setup=self.setup)
            try:
                f = self.fc.predict(self.model, curves, row["epoch"])
            except self.fc.ForecastError:  # too early: fewer than 3 measured checkpoints
                return self.shown()
            self.first = self.first or f
            self.last = f
            return self.shown()
        finally:
            self.seconds += time.perf_counter() - t0

    def shown(self) -> dict[str, str] | None:
        f = self.last
        return None if f is None else {"grok": f"~{f.epoch:,.0f} [{f.low:,.0f}-{f.high:,.0f}]"}

    def summary(self) -> dict[str, Any]:
        """The first and last forecasts, the grokking epoch seen, and the cost in seconds."""
        def one(f: Any) -> dict[str, float] | None:
            return None if f is None else {"at": f.at, "epoch": f.epoch, "low": f.low, "high": f.high}

        return {"first": one(self.first), "last": one(self.last), "grokked": self.grokked, "seconds": self.seconds,
                "train_runs": len(self.model.runs), "checkpoints": [r["epoch"] for r in self.progress]}


__all__ = ["check_memory", "load_run_config", "physical_memory", "train_run"]
