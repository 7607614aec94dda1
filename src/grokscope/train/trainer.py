"""The training loop for the grokking tasks: AdamW, warmup, regularisers, cadence, resume.

One step = one optimiser update. With a full batch (the paper's mainline) one step is one epoch.
Every source of randomness after initialisation (minibatch order, fresh data, dropout masks) is
drawn from a generator seeded by (seed, step), so a run resumed from any checkpoint replays the
uninterrupted run bit for bit, with no RNG state to save.

The trainer never plots and never analyses: it writes checkpoints and cheap metrics to the store.
"""

from __future__ import annotations

import ctypes
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import torch
from torch import Tensor

import grokscope
from grokscope import config as C
from grokscope.models import kernels
from grokscope.models.loss import cross_entropy64, loss_and_acc, per_position
from grokscope.models.transformer import Transformer, build
from grokscope.store import RUN_FORMAT, Run, StoreError
from grokscope.tasks import make_task
from grokscope.tasks.base import TaskData
from grokscope.train.filters import GradFilter

Callback = Callable[[int, dict[str, float]], None]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def setup_torch(threads: int | None) -> None:
    n = threads or os.cpu_count() or 1
    kernels.set_threads(n)  # numba's count (it keeps its own: models/kernels.py), then torch's
    torch.set_num_threads(n)
    torch.set_flush_denormal(True)  # helps on 1 thread; the loss also zeroes subnormal grads
    keep_freed_memory()


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


def sum_sq_weights(model: torch.nn.Module) -> float:
    with torch.no_grad():
        return float(sum(p.double().pow(2).sum() for p in model.parameters()))


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


@dataclass
class Batch:
    x: Tensor
    y: Tensor


class Trainer:
    """Trains one run into its folder. `fit()` starts or resumes; see module docstring."""

    def __init__(self, cfg: C.RunConfig, run: Run, task: TaskData | None = None, progress: bool = True,
                 callbacks: list[Callback] | None = None):
        self.cfg, self.run = cfg, run
        setup_torch(cfg.train.threads)
        self.task = task or make_task(cfg)
        t = self.task
        self.model: Transformer = build(cfg.model, t.d_vocab, t.d_vocab_out, t.n_ctx, cfg.seed, cfg.optim.dropout)
        self.params = list(self.model.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                                     weight_decay=cfg.optim.weight_decay, fused=True)  # one kernel: 3x faster than foreach here
        self.filter = GradFilter(cfg.optim.filter, self.params) if cfg.optim.filter.kind != "none" else None
        self.total = C.total_steps(cfg, t.n_train)
        self.steps_per_epoch = C.steps_per_epoch(cfg, t.n_train)
        self.progress = progress
        self.callbacks = callbacks or []
        self.last_only = t.label_pos == [t.n_ctx - 1]
        self.step = 0
        stop = cfg.train.stop
        if stop is not None and stop.metric not in self.metric_names():
            raise C.ConfigError(f"train.stop.metric={stop.metric!r} is not a logged metric; use one of "
                                f"{', '.join(sorted(self.metric_names()))}")

    def metric_names(self) -> set[str]:
        """The columns `evaluate` logs besides step."""
        names = {"epoch", "lr", "weight_norm"}
        for split in ("train", "test"):
            names |= {f"{split}_loss", f"{split}_acc"}
            if len(self.task.label_pos) > 1:
                names |= {f"{split}_{m}_pos{j}" for m in ("loss", "acc") for j in range(len(self.task.label_pos))}
        return names

    # ------------------------------------------------------------------------------ the step
    def logits(self, x: Tensor, gen: torch.Generator | None = None) -> Tensor:
        """Logits at the label positions: [n, n_label, d_vocab_out]."""
        if self.last_only and self.cfg.train.fast:
            return self.model.forward_last(x, gen)[:, None]
        return self.model(x, gen=gen)[:, self.task.label_pos]

    def loss(self, x: Tensor, y: Tensor, gen: torch.Generator | None = None) -> Tensor:
        """Mean float64 cross-entropy over the label positions (y [n, n_label])."""
        if self.last_only and self.cfg.train.fast:
            return self.model.loss_last(x, y[:, 0], gen)
        return cross_entropy64(self.logits(x, gen), y)

    def batch(self, step: int) -> Batch:
        t, b = self.task, self.cfg.train.batch_size
        if t.sample is not None:
            x, y = t.sample(step_generator(self.cfg.seed, step, 0), b or 128)
            return Batch(x, y)
        n = len(t.train_x)
        if b is None or b >= n:
            return Batch(t.train_x, t.train_y)
        epoch, i = divmod(step, self.steps_per_epoch)
        perm = torch.randperm(n, generator=step_generator(self.cfg.seed, epoch, 1))
        idx = perm[i * b:(i + 1) * b]
        return Batch(t.train_x[idx], t.train_y[idx])

    def train_step(self, step: int) -> float:
        cfg = self.cfg
        lr = lr_at(step, self.total, cfg.optim)
        for g in self.opt.param_groups:
            g["lr"] = lr
        batch = self.batch(step)
        gen = step_generator(cfg.seed, step, 2) if cfg.optim.dropout > 0 else None
        self.opt.zero_grad(set_to_none=True)
        n_micro = cfg.train.grad_accum
        for xs, ys in zip(batch.x.chunk(n_micro), batch.y.chunk(n_micro), strict=True):
            loss = self.loss(xs, ys, gen) * (len(xs) / len(batch.x))
            if cfg.optim.l1 > 0:
                loss = loss + cfg.optim.l1 * sum(p.abs().sum() for p in self.params) / n_micro
            loss.backward()
        if cfg.optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.grad_clip)
        if self.filter is not None:
            self.filter.apply()
        self.opt.step()
        return lr

    # ------------------------------------------------------------------------------ metrics
    @torch.no_grad()
    def evaluate(self, step: int, lr: float) -> dict[str, float]:
        t = self.task
        row: dict[str, float] = {"step": step, "epoch": step / self.steps_per_epoch, "lr": lr}
        splits = (("train", t.train_x, t.train_y), ("test", t.test_x, t.test_y))
        if self.last_only and self.cfg.train.fast:
            # one table build for both splits, and the loss without a float64 copy of the logits:
            # evaluation had cost more than a training step
            scores = self.model.loss_and_acc_last([(x, y[:, 0]) for _, x, y in splits])
            for (split, _, _), (loss, acc) in zip(splits, scores, strict=True):
                row[f"{split}_loss"], row[f"{split}_acc"] = loss, acc
        else:
            for split, x, y in splits:
                logits = self.logits(x)
                row[f"{split}_loss"], row[f"{split}_acc"] = loss_and_acc(logits, y)
                if y.shape[1] > 1:
                    losses, accs = per_position(logits, y)
                    for j, (lo, ac) in enumerate(zip(losses, accs, strict=True)):
                        row[f"{split}_loss_pos{j}"], row[f"{split}_acc_pos{j}"] = lo, ac
        row["weight_norm"] = sum_sq_weights(self.model)
        return row

    # ------------------------------------------------------------------------------ state
    def resume_state(self) -> dict[str, Tensor]:
        out = optimizer_state(self.opt, self.params)
        if self.filter is not None:
            out.update(self.filter.state())
        return out

    def load_resume_state(self, tensors: dict[str, Tensor], step: int | None = None) -> None:
        load_optimizer_state(self.opt, self.params, tensors, self.run, step=step)
        if self.filter is not None:
            self.filter.load(tensors)

    def save(self, step: int) -> None:
        self.run.save_checkpoint(step, self.model.state_dict(), self.resume_state())
        self.run.shed_resume_state()
        self.run.update_info(last_step=step)

    # ------------------------------------------------------------------------------ the loop
    def start(self) -> None:
        info = {
            "format": RUN_FORMAT, "status": "running", "seed": self.cfg.seed, "total_steps": self.total,
            "steps_per_epoch": self.steps_per_epoch, "started": now(), "ended": None, "last_step": 0,
            "versions": {"grokscope": grokscope.__version__, "torch": torch.__version__,
                         "python": platform.python_version()},
            "threads": torch.get_num_threads(),
        }
        self.run.update_info(**info)
        self.step = 0
        # the row before the checkpoint: a kill between them leaves no checkpoint, and a resume
        # without one starts afresh (fit), so the step-0 row can never be lost
        self.run.append("metrics", [self.evaluate(0, lr_at(0, self.total, self.cfg.optim))])
        self.save(0)

    def resume(self) -> None:
        step, tensors = self.run.load_into(self.model)
        self.load_resume_state(tensors, step)
        self.run.truncate_after(step, ["metrics"])
        self.step = step
        self.run.update_info(status="running", resumed_at=now(), ended=None)

    def _should_stop(self, history: list[dict[str, float]]) -> bool:
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

    def fit(self, resume: bool = False) -> dict[str, Any]:
        if resume:
            info = self.run.read_info()
            done = info.get("status") in ("stopped_early", "diverged") or (
                info.get("status") == "completed" and info.get("last_step", 0) >= self.total)
            if done:
                return info  # nothing left to do
            if self.run.checkpoint_steps():
                self.resume()
            else:  # killed before its first checkpoint: start again in place
                self.run.truncate_after(-1)
                resume = False
        cfg, run = self.cfg, self.run
        evals = eval_steps(self.total, cfg.train.eval_every, cfg.train.eval_schedule, cfg.train.checkpoint_every)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total, initial=self.step, unit="step", dynamic_ncols=True, mininterval=0.5,
                       desc=run.path.name)
        pending: list[dict[str, float]] = []
        status = "completed"
        t0, s0 = time.perf_counter(), self.step
        try:
            if not resume:  # inside the try: a start that fails leaves status "failed", not "running"
                self.start()
            history = run.metrics().to_dict("records") if cfg.train.stop else []
            self.model.train()
            while self.step < self.total:
                lr = self.train_step(self.step)
                self.step += 1
                s = self.step
                if s in evals:
                    row = self.evaluate(s, lr)
                    pending.append(row)
                    if diverged(row, ("train_loss", "weight_norm")):
                        status = "diverged"  # nothing after a NaN means anything: stop and say so
                        break
                    if cfg.train.stop:
                        history.append(row)
                    for cb in self.callbacks:
                        cb(s, row)
                    if bar is not None:
                        bar.set_postfix(train=f"{row['train_loss']:.3g}", test=f"{row['test_loss']:.3g}",
                                        acc=f"{row['test_acc']:.3f}", refresh=False)
                if s % cfg.train.checkpoint_every == 0 or s == self.total:
                    run.append("metrics", pending)
                    pending = []
                    self.save(s)
                if bar is not None:
                    bar.update(1)
                if s in evals and self._should_stop(history):
                    status = "stopped_early"
                    break
            if status == "diverged":  # its rows say where; no checkpoint of non-finite weights
                run.append("metrics", pending)
            elif pending or self.step not in run.checkpoint_steps():
                run.append("metrics", pending)
                self.save(self.step)
        except KeyboardInterrupt:
            run.update_info(status="interrupted", ended=now())
            raise
        except BaseException:
            run.update_info(status="failed", ended=now())
            raise
        finally:
            if bar is not None:
                bar.close()
        elapsed = time.perf_counter() - t0
        last = self.step if status != "diverged" else max(run.checkpoint_steps())
        where = {"diverged_at_step": self.step} if status == "diverged" else {}
        return run.update_info(status=status, ended=now(), last_step=last, **where,
                               train_seconds=elapsed, steps_per_second=(self.step - s0) / max(elapsed, 1e-9),
                               **grok_epochs(run))


def diverged(row: dict[str, Any], keys: tuple[str, ...]) -> bool:
    """Whether a metrics row holds a non-finite value under any of `keys`."""
    return any(k in row and row[k] is not None and not math.isfinite(row[k]) for k in keys)


def grok_epochs(run: Run) -> dict[str, float | None]:
    """First epoch at which test accuracy passed 50% and 99% (None if it never did)."""
    m = run.metrics()
    out: dict[str, float | None] = {"grok_epoch_50": None, "grok_epoch_99": None}
    if "test_acc" not in m:
        return out
    for key, thr in (("grok_epoch_50", 0.5), ("grok_epoch_99", 0.99)):
        hit = m.loc[m["test_acc"] > thr, "epoch"]
        out[key] = float(hit.iloc[0]) if len(hit) else None
    return out
