"""The fit loop every model family shares, and the schedule and state helpers it uses.

`TrainerCore.fit()` starts or resumes a run and owns everything that is not the family's own
arithmetic: run.json's status (running, completed, stopped_early, diverged, interrupted,
failed), the evaluation and checkpoint cadence, the order of writes (rows before their
checkpoint), the stop rule, divergence, the progress bar and exact resume. A family (the grokking
trainer in `train.trainer`, the copy LM's in `lm.trainer`) subclasses it and supplies the hooks:
`train_step`, `evaluate`, its run.json fields, and its resume state. As in minGPT, the loop knows
nothing about models or data.

Resume replays the uninterrupted run bit for bit: every source of randomness after
initialisation is drawn from generators seeded by (seed, step) (`step_generator`), and the
checkpoints a run resumes from hold the optimiser state.
"""

from __future__ import annotations

import ctypes
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import torch
from torch import Tensor

from grokscope import config as C
from grokscope.models import kernels
from grokscope.store import Run, StoreError
from grokscope.train.interrupts import deferred_interrupts

# called with (step, the evaluation's metrics row) on the writer; what it returns, if anything, is
# shown in the progress bar beside the row (the live forecast's "grok" field, say)
Callback = Callable[[int, dict[str, float]], dict[str, str] | None]
Rows = dict[str, list[dict[str, Any]]]  # table name -> rows to append


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def setup_torch(threads: int | None) -> None:
    n = threads or os.cpu_count() or 1
    kernels.set_threads(n)  # numba's count (it keeps its own: models/kernels.py), then torch's
    torch.set_num_threads(n)
    torch.set_flush_denormal(True)  # helps on 1 thread; the loss also zeroes subnormal grads
    keep_freed_memory()


def pick_device(want: str, cpu_only: str | None = None, index: int = 0) -> torch.device:
    """The device `train.device` names: "cpu"; "cuda" (one line if torch sees none); "auto", CUDA
    when there is one. `cpu_only` names why this run can only train on the CPU (the grokking tasks'
    fast step), which keeps "auto" there and refuses "cuda"."""
    has_cuda = torch.cuda.is_available()
    if want == "cuda" and not has_cuda:
        raise C.ConfigError("train.device=cuda but torch sees no CUDA device (a CPU build, or no GPU); "
                            "use train.device=auto or cpu")
    if want == "cuda" and cpu_only:
        raise C.ConfigError(f"train.device=cuda: {cpu_only}")
    if want == "cpu" or not has_cuda or cpu_only:
        return torch.device("cpu")
    return torch.device("cuda", index)


def keep_freed_memory() -> None:
    """Make glibc keep freed tensor buffers instead of returning them to the kernel.

    A step allocates and frees the same few multi-MB activations; glibc serves those with mmap
    and unmaps them on free, so every step page-faulted ~5,000 fresh zeroed pages (15 ms of a
    65 ms step here). Raising the mmap and trim thresholds keeps them on the heap for reuse.
    No-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        pass


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A generator that depends only on (seed, step, stream): resume needs no RNG state."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 8 + stream)


def lr_at(step: int, total: int, cfg: C.OptimConfig) -> float:
    """Linear warmup from 0 over warmup_steps, then constant or cosine down to min_lr_frac."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps  # step 0 takes lr 0, as in the paper's LambdaLR
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, total - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.min_lr_frac * cfg.lr
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * frac))


@dataclass(frozen=True)
class EvalSchedule:
    """The steps at which metrics are logged: 0, the last, every checkpoint (so every checkpoint
    has its row), and every `every` steps (linear), or 60 log-spaced steps plus every
    max(`every`, total / 20) (log). A predicate, not a set: a run of 10^8 steps costs nothing."""

    total: int
    every: int
    checkpoint_every: int | None = None
    log_points: frozenset[int] = frozenset()

    def __contains__(self, step: object) -> bool:
        if not isinstance(step, int) or not 0 <= step <= self.total:
            return False
        if step in (0, self.total) or step in self.log_points or step % self.every == 0:
            return True
        return self.checkpoint_every is not None and step % self.checkpoint_every == 0

    def steps(self) -> set[int]:
        return {s for s in range(self.total + 1) if s in self}


def eval_steps(total: int, every: int, schedule: str, checkpoint_every: int | None = None) -> EvalSchedule:
    """The evaluation schedule of a run (see EvalSchedule)."""
    if schedule == "log":
        pts = {int(round(x)) for x in torch.logspace(0, math.log10(max(total, 1)), 60).tolist()}
        return EvalSchedule(total, max(every, total // 20 or 1), checkpoint_every, frozenset(pts))
    return EvalSchedule(total, every, checkpoint_every)


def optimizer_state(opt: torch.optim.Optimizer, params: list[Tensor]) -> dict[str, Tensor]:
    """The optimiser's per-parameter state as flat tensors `optim/{param index}/{name}`."""
    out: dict[str, Tensor] = {}
    index = {id(p): i for i, p in enumerate(params)}
    for p, st in opt.state.items():
        for k, v in st.items():
            out[f"optim/{index[id(p)]}/{k}"] = (v if isinstance(v, Tensor) else torch.tensor(v)).cpu()
    return out


def load_optimizer_state(opt: torch.optim.Optimizer, params: list[Tensor], tensors: dict[str, Tensor], run: Run,
                         device: torch.device | str = "cpu", step: int | None = None) -> None:
    """Inverse of `optimizer_state`; a checkpoint without it cannot be resumed exactly.

    The step-0 checkpoint has none because AdamW creates its state at the first step: a fresh
    optimiser is that state, so a run stopped before its second checkpoint resumes from step 0.
    """
    keys = [k for k in tensors if k.startswith("optim/")]
    if not keys and step == 0:
        return
    if not keys:
        raise StoreError(f"the latest checkpoint of {str(run.path)!r} has no optimiser state, so it cannot be resumed "
                         f"exactly; restore the newer checkpoint, or start the run again with --overwrite")
    for k in keys:
        _, i, name = k.split("/")
        v = tensors[k].clone()
        opt.state[params[int(i)]][name] = v if name == "step" else v.to(device)


def diverged(row: dict[str, Any], keys: tuple[str, ...]) -> bool:
    """Whether a metrics row holds a non-finite value under any of `keys`."""
    return any(k in row and row[k] is not None and not math.isfinite(row[k]) for k in keys)


DONE = ("completed", "stopped_early", "diverged")


class TrainerCore:
    """The shared fit loop (see the module docstring). A subclass sets `cfg`, `run`, `model`,
    `opt`, `params`, `total` and `progress`, and implements the hooks below."""

    cfg: C.RunConfig
    run: Run
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    params: list[Tensor]
    total: int
    progress: bool
    step: int = 0
    writer: bool = True  # the one process that writes the run folder (rank 0 under torchrun)
    tables: tuple[str, ...] = ("metrics",)  # what a resume truncates to its checkpoint
    callbacks: list[Callback]
    # columns of an evaluation row that must stay finite; the loss a step returns is checked too
    finite: tuple[str, ...] = ("train_loss", "weight_norm")

    # ------------------------------------------------------------------------------ hooks
    def train_step(self, step: int) -> tuple[float, float | None]:
        """One optimiser update; (lr, the step's loss if the family computes it, else None)."""
        raise NotImplementedError

    def evaluate(self, step: int, lr: float, loss: float | None) -> Rows:
        """The rows to log at `step`: {"metrics": [one row], other tables: rows...}."""
        raise NotImplementedError

    def start_info(self) -> dict[str, Any]:
        """run.json's family-specific fields, written when a run starts."""
        return {}

    def end_info(self, steps_done: int, elapsed: float, train_seconds: float) -> dict[str, Any]:
        """run.json's family-specific fields, written when fit ends."""
        return {}

    def postfix(self, row: dict[str, Any]) -> dict[str, str]:
        """What the progress bar shows of an evaluation row."""
        return {}

    def checkpoint_params(self) -> dict[str, Tensor]:
        return self.model.state_dict()

    def checkpoint_info(self, step: int) -> dict[str, Any]:
        """run.json fields updated with each checkpoint, besides last_step."""
        return {}

    def resume_state(self) -> dict[str, Tensor]:
        """What a checkpoint must hold besides the parameters to resume exactly."""
        return optimizer_state(self.opt, self.params)

    def load_resume_state(self, tensors: dict[str, Tensor], step: int | None = None) -> None:
        load_optimizer_state(self.opt, self.params, tensors, self.run, step=step)

    def after_resume(self, step: int) -> None:
        """Called on the writer once a resume has loaded its checkpoint."""

    def barrier(self) -> None:
        """Wait for the other data-parallel processes (none by default)."""

    def diverged_row(self, step: int, lr: float, loss: float) -> dict[str, Any]:
        """The metrics row that records a non-finite step loss."""
        return {"step": step, "lr": lr, "batch_loss": loss}

    def train_mode(self) -> None:
        self.model.train()

    # ------------------------------------------------------------------------------ state
    def save(self, step: int) -> None:
        if self.writer:
            self.run.save_checkpoint(step, self.checkpoint_params(), self.resume_state())
            self.run.shed_resume_state()
            self.run.update_info(last_step=step, **self.checkpoint_info(step))
        self.barrier()

    def log(self, rows: Rows) -> None:
        if self.writer:
            for table, table_rows in rows.items():
                self.run.append(table, table_rows)

    def start(self) -> None:
        if self.writer:
            self.run.update_info(**self.start_info())
        self.step = 0
        # the rows before the checkpoint: a kill between them leaves no checkpoint, and a resume
        # without one starts afresh (fit), so the step-0 rows can never be lost
        if self.writer:
            self.log(self.evaluate(0, lr_at(0, self.total, self.cfg.optim), None))
        self.save(0)

    def resume(self) -> None:
        step, tensors = self.run.load_into(self.model)
        self.load_resume_state(tensors, step)
        if self.writer:
            self.run.truncate_after(step, list(self.tables))
            self.run.update_info(status="running", resumed_at=now(), ended=None)
            self.after_resume(step)
        self.step = step
        self.barrier()

    def should_stop(self, history: list[dict[str, Any]]) -> bool:
        """train.stop: the metric has stayed above its threshold for `patience` steps."""
        rule = self.cfg.train.stop
        if rule is None or not history or rule.metric not in history[-1]:
            return False
        since = None
        for row in reversed(history):
            if row[rule.metric] > rule.above:
                since = row["step"]
            else:
                break
        return since is not None and history[-1]["step"] - since >= rule.patience

    # ------------------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Start, or resume, and train to the end (or the stop rule, or divergence); returns
        run.json's content."""
        if resume:
            info = self.run.read_info()
            if info.get("status") in DONE and (info.get("status") != "completed" or info.get("last_step", 0) >= self.total):
                return info  # nothing left to do
            if self.run.checkpoint_steps():
                self.resume()
            else:  # killed before its first checkpoint: start again in place
                if self.writer:
                    self.run.truncate_after(-1)
                resume = False
        cfg, run = self.cfg, self.run
        evals = eval_steps(self.total, cfg.train.eval_every, cfg.train.eval_schedule, cfg.train.checkpoint_every)
        bar = None
        if self.progress and self.writer:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total, initial=self.step, unit="step", dynamic_ncols=True, mininterval=0.5,
                       desc=run.path.name)
        pending: Rows = {}
        status = "completed"
        self.clock_start, s0, self.train_seconds = time.perf_counter(), self.step, 0.0
        self.start_step = s0
        try:
            if not resume:  # inside the try: a start that fails leaves status "failed", not "running"
                self.start()
            history = run.metrics().to_dict("records") if cfg.train.stop and self.writer else []
            self.train_mode()
            with deferred_interrupts() as stop:
                while self.step < self.total:
                    if stop:  # a stop asked during the last step
                        raise KeyboardInterrupt
                    t_step = time.perf_counter()
                    lr, loss = self.train_step(self.step)
                    self.train_seconds += time.perf_counter() - t_step
                    self.step += 1
                    s = self.step
                    if loss is not None and not math.isfinite(loss):
                        status = "diverged"  # nothing after a NaN means anything: stop and say so
                        _extend(pending, {"metrics": [self.diverged_row(s, lr, loss)]})
                        break
                    if s in evals and self.writer:
                        rows = self.evaluate(s, lr, loss)
                        _extend(pending, rows)
                        row = rows["metrics"][0]
                        if diverged(row, self.finite):
                            status = "diverged"
                            break
                        if cfg.train.stop:
                            history.append(row)
                        shown = self.postfix(row)
                        for cb in self.callbacks:
                            shown.update(cb(s, row) or {})
                        if bar is not None:
                            bar.set_postfix(shown, refresh=False)
                    if s % cfg.train.checkpoint_every == 0 or s == self.total:
                        self.log(pending)
                        pending = {}
                        self.save(s)
                    if bar is not None:
                        bar.update(1)
                    if s in evals and self.should_stop(history):
                        status = "stopped_early"
                        break
                if status == "diverged":  # its rows say where; no checkpoint of non-finite weights
                    self.log(pending)
                elif pending or self.step not in run.checkpoint_steps():
                    self.log(pending)
                    self.save(self.step)
        except KeyboardInterrupt:
            if self.writer:
                run.update_info(status="interrupted", ended=now())
            raise
        except BaseException:
            if self.writer:
                run.update_info(status="failed", ended=now())
            raise
        finally:
            if bar is not None:
                bar.close()
        info: dict[str, Any] = {}
        if self.writer:
            elapsed = time.perf_counter() - self.clock_start
            last = self.step if status != "diverged" else max(run.checkpoint_steps())
            where = {"diverged_at_step": self.step} if status == "diverged" else {}
            info = run.update_info(status=status, ended=now(), last_step=last, **where, train_seconds=elapsed,
                                   steps_per_second=(self.step - s0) / max(elapsed, 1e-9),
                                   **self.end_info(self.step - s0, elapsed, self.train_seconds))
        self.barrier()
        if stop:  # asked during the run's last save: it ended whole, as its status says; stop as asked
            raise KeyboardInterrupt
        return info if self.writer else run.read_info()


def _extend(pending: Rows, rows: Rows) -> None:
    for table, table_rows in rows.items():
        pending.setdefault(table, []).extend(table_rows)
