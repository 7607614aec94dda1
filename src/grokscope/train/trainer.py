"""The grokking family's trainer: AdamW, warmup, regularisers, full or mini batches.

One step = one optimiser update. With a full batch (the paper's mainline) one step is one epoch.
Every source of randomness after initialisation (minibatch order, fresh data, dropout masks) is
drawn from a generator seeded by (seed, step), so a run resumed from any checkpoint replays the
uninterrupted run bit for bit, with no RNG state to save. The loop itself (cadence, checkpoints,
status, resume) is `train.loop.TrainerCore`'s.

The trainer never plots and never analyses: it writes checkpoints and cheap metrics to the store.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import grokscope
from grokscope import config as C
from grokscope.models.loss import cross_entropy64, loss_and_acc, per_position, sum_sq_weights
from grokscope.models.tabulated import Layout
from grokscope.models.transformer import Transformer, build
from grokscope.store import RUN_FORMAT, Run
from grokscope.tasks import make_task
from grokscope.tasks.base import TaskData
from grokscope.train.filters import GradFilter
from grokscope.train.loop import (  # noqa: F401 - eval_steps, setup_torch: the names callers know
    Callback,
    Rows,
    TrainerCore,
    eval_steps,
    load_optimizer_state,
    lr_at,
    now,
    optimizer_state,
    pick_device,
    setup_torch,
    step_generator,
)


@dataclass
class Batch:
    x: Tensor
    y: Tensor
    layouts: list[Layout] | None = None  # one per micro-batch, when the batch is the fixed train set


class Trainer(TrainerCore):
    """Trains one run into its folder. `fit()` starts or resumes; see module docstring."""

    def __init__(self, cfg: C.RunConfig, run: Run, task: TaskData | None = None, progress: bool = True,
                 callbacks: list[Callback] | None = None):
        self.cfg, self.run = cfg, run
        setup_torch(cfg.train.threads)
        self.task = task or make_task(cfg)
        t = self.task
        self.model: Transformer = build(cfg.model, t.d_vocab, t.d_vocab_out, t.n_ctx, cfg.seed, cfg.optim.dropout)
        self.last_only = t.label_pos == [t.n_ctx - 1]
        fast = self.last_only and cfg.train.fast and self.model.tabulable
        self.device = pick_device(cfg.train.device, "the tabulated fast step (train.fast=true) runs on the CPU; "
                                  "set train.fast=false to train this task on CUDA" if fast else None)
        # the model and the fixed data on the device (on the CPU these are no-ops: the same tensors)
        self.model.to(self.device)
        self.task = t = dataclasses.replace(t, **{k: getattr(t, k).to(self.device)
                                                  for k in ("train_x", "train_y", "test_x", "test_y")})
        self.params = list(self.model.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                                     weight_decay=cfg.optim.weight_decay, fused=True)  # one kernel: 3x faster than foreach here
        self.filter = GradFilter(cfg.optim.filter, self.params) if cfg.optim.filter.kind != "none" else None
        self.total = C.total_steps(cfg, t.n_train)
        self.steps_per_epoch = C.steps_per_epoch(cfg, t.n_train)
        self.progress = progress
        self.callbacks = callbacks or []
        self.eval_layouts, self.step_layouts = self._data_layouts()
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

    def _data_layouts(self) -> tuple[dict[str, Layout], list[Layout] | None]:
        """The tabulated step's layouts of the fixed data (docs/fast-step.md), built once, here:
        the train and test sets' for evaluation, and the full-batch step's, one per micro-batch.
        None of them when the step is not tabulated; a minibatch or a sampled batch gets its
        layout built with its step."""
        t, model, b = self.task, self.model, self.cfg.train.batch_size
        if not (self.last_only and self.cfg.train.fast and model.tabulable):
            return {}, None
        evals = {"train": model.layout(t.train_x), "test": model.layout(t.test_x)}
        if t.sample is not None or (b is not None and b < len(t.train_x)):
            return evals, None
        chunks = t.train_x.chunk(self.cfg.train.grad_accum)
        return evals, [evals["train"]] if len(chunks) == 1 else [model.layout(x) for x in chunks]

    # ------------------------------------------------------------------------------ the step
    def logits(self, x: Tensor, gen: torch.Generator | None = None) -> Tensor:
        """Logits at the label positions: [n, n_label, d_vocab_out]."""
        if self.last_only and self.cfg.train.fast:
            return self.model.forward_last(x, gen)[:, None]
        return self.model(x, gen=gen)[:, self.task.label_pos]

    def loss(self, x: Tensor, y: Tensor, gen: torch.Generator | None = None, layout: Layout | None = None) -> Tensor:
        """Mean float64 cross-entropy over the label positions (y [n, n_label]); `layout` is x's,
        for the tabulated step (built here when not given)."""
        if self.last_only and self.cfg.train.fast:
            return self.model.loss_last(x, y[:, 0], gen, layout)
        return cross_entropy64(self.logits(x, gen), y)

    def batch(self, step: int) -> Batch:
        t, b = self.task, self.cfg.train.batch_size
        if t.sample is not None:
            x, y = t.sample(step_generator(self.cfg.seed, step, 0), b or 128)
            return Batch(x.to(self.device), y.to(self.device))
        n = len(t.train_x)
        if b is None or b >= n:
            return Batch(t.train_x, t.train_y, self.step_layouts)
        epoch, i = divmod(step, self.steps_per_epoch)
        perm = torch.randperm(n, generator=step_generator(self.cfg.seed, epoch, 1))
        idx = perm[i * b:(i + 1) * b]
        return Batch(t.train_x[idx], t.train_y[idx])

    def train_step(self, step: int) -> tuple[float, None]:
        cfg = self.cfg
        lr = lr_at(step, self.total, cfg.optim)
        for g in self.opt.param_groups:
            g["lr"] = lr
        batch = self.batch(step)
        gen = step_generator(cfg.seed, step, 2) if cfg.optim.dropout > 0 else None
        self.opt.zero_grad(set_to_none=True)
        n_micro = cfg.train.grad_accum
        xs_all, ys_all = batch.x.chunk(n_micro), batch.y.chunk(n_micro)
        for xs, ys, layout in zip(xs_all, ys_all, batch.layouts or [None] * len(xs_all), strict=True):
            loss = self.loss(xs, ys, gen, layout) * (len(xs) / len(batch.x))
            if cfg.optim.l1 > 0:
                loss = loss + cfg.optim.l1 * sum(p.abs().sum() for p in self.params) / n_micro
            loss.backward()
        if cfg.optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.grad_clip)
        if self.filter is not None:
            self.filter.apply()
        self.opt.step()
        return lr, None  # the loss is logged at evaluations, not read back each step

    # ------------------------------------------------------------------------------ metrics
    def evaluate(self, step: int, lr: float, loss: float | None) -> Rows:
        return {"metrics": [self.metrics_row(step, lr)]}

    def postfix(self, row: dict[str, Any]) -> dict[str, str]:
        return {"train": f"{row['train_loss']:.3g}", "test": f"{row['test_loss']:.3g}", "acc": f"{row['test_acc']:.3f}"}

    @torch.no_grad()
    def metrics_row(self, step: int, lr: float) -> dict[str, float]:
        t = self.task
        row: dict[str, float] = {"step": step, "epoch": step / self.steps_per_epoch, "lr": lr}
        splits = (("train", t.train_x, t.train_y), ("test", t.test_x, t.test_y))
        if self.last_only and self.cfg.train.fast:
            # one table build for both splits, and the loss without a float64 copy of the logits:
            # evaluation had cost more than a training step
            scores = self.model.loss_and_acc_last([(x, y[:, 0]) for _, x, y in splits],
                                                  [self.eval_layouts.get(split) for split, _, _ in splits])
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
        row["weight_norm"] = sum_sq_weights(self.model.parameters())
        return row

    # ------------------------------------------------------------------------------ state
    def resume_state(self) -> dict[str, Tensor]:
        out = optimizer_state(self.opt, self.params)
        if self.filter is not None:
            out.update(self.filter.state())
        return out

    def checkpoint_params(self) -> dict[str, Tensor]:
        return {k: v.cpu() for k, v in self.model.state_dict().items()}  # a no-op on the CPU

    def load_resume_state(self, tensors: dict[str, Tensor], step: int | None = None) -> None:
        load_optimizer_state(self.opt, self.params, tensors, self.run, self.device, step=step)
        if self.filter is not None:
            self.filter.load(tensors)

    def start_info(self) -> dict[str, Any]:
        return {
            "format": RUN_FORMAT, "status": "running", "seed": self.cfg.seed, "total_steps": self.total,
            "steps_per_epoch": self.steps_per_epoch, "started": now(), "ended": None, "last_step": 0,
            "versions": {"grokscope": grokscope.__version__, "torch": torch.__version__,
                         "python": platform.python_version()},
            "threads": torch.get_num_threads(),
        }

    def end_info(self, steps_done: int, elapsed: float, train_seconds: float) -> dict[str, Any]:
        return grok_epochs(self.run)


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
