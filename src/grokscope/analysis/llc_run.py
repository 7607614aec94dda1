"""The LLC of a run's checkpoints, spread over single-thread processes (`analyze --llc`).

SGLD's steps are small (a minibatch of a few hundred examples through a 1-layer model) and gain
little from a second thread, while the checkpoints' chains are independent. So the checkpoints
are shared out among `workers` processes of one thread each, every process loading its own copy
of the model from the run folder. Each estimate seeds its own generator (llc.py) and runs on one
thread whatever the number of processes, so the numbers do not depend on how many there are:
one process (in this one, torch's thread count lowered for the while) and eight give the same
bits (tests/test_llc.py).
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from torch import nn

from grokscope.analysis import llc as lc
from grokscope.analysis.circuits import modular_data
from grokscope.config import ConfigError, RunConfig
from grokscope.models.transformer import build
from grokscope.store import Run, read_run_config
from grokscope.train.loop import setup_torch


def _modular(cfg: RunConfig, s: lc.Settings) -> tuple[nn.Module, lc.LossFn, list[lc.Batch]]:
    """The 1-layer model, its float64 loss at the `=` position, the train set cut into minibatches."""
    data = modular_data(cfg)
    model = build(cfg.model, data.p + 1, data.p, 3, cfg.seed)
    batches = lc.split_batches(data.all_x[data.train_mask], data.all_y[data.train_mask], s.batches, s.seed)
    return model, model.loss_last, batches


def _text(run: Run, cfg: RunConfig, s: lc.Settings) -> tuple[nn.Module, lc.LossFn, list[lc.Batch]]:
    """The LM, its mean next-token loss, and `s.windows` training windows (evenly spaced over the
    training stream, so the same at every checkpoint; with the run's repeated spans written in, as
    training saw them) cut into minibatches: a window of context + 1 tokens is an input [context]
    and its targets [context]. n is the number of predicted tokens."""
    from grokscope.lm.text import fixed_windows, prepare, repeat_spans
    from grokscope.lm.trainer import lm_loss
    from grokscope.models.loading import model_from_run

    model, _, _ = model_from_run(run.path)
    model.train(False)  # dropout off: the LLC is of the loss landscape, not of a noisy copy of it
    t = cfg.task
    windows = fixed_windows(prepare(t).train, s.windows, t.context + 1)
    gen = torch.Generator().manual_seed(s.seed)
    if t.repeat_frac > 0:
        windows = repeat_spans(windows, t.repeat_frac, gen, t.repeat_max_len, t.repeat_random,
                               model.embed.W_E.shape[0])
    k = max(1, min(s.batches, len(windows)))
    perm = torch.randperm(len(windows), generator=gen)
    batches = [(windows[i, :-1].contiguous(), windows[i, 1:].contiguous()) for i in perm.tensor_split(k)]
    return model, lambda x, y: lm_loss(model(x), y), batches


class _Chains:
    """One process's model, loss, batches and settings: the LLC of any of the run's checkpoints."""

    def __init__(self, run_dir: str, s: lc.Settings) -> None:
        self.run = Run(run_dir).require()
        cfg = read_run_config(self.run)
        if cfg.task.name == "modular":
            self.model, self.loss_fn, self.batches = _modular(cfg, s)
        elif cfg.task.name == "text":
            self.model, self.loss_fn, self.batches = _text(self.run, cfg, s)
        else:
            raise ConfigError(f"--llc handles modular-arithmetic and language-model runs; {str(self.run.path)!r} "
                              f"is a {cfg.task.name!r} run")
        self.params = list(self.model.parameters())
        self.s = s

    def at(self, step: int) -> tuple[int, dict[str, float], np.ndarray, int]:
        """(step, `Estimate.row()`, trace, n) at checkpoint `step`."""
        self.run.load_into(self.model, step)
        e = lc.estimate(self.loss_fn, self.params, self.batches, self.s)
        return step, e.row(), e.trace.numpy(), sum(by.numel() for _, by in self.batches)


_WORKER: _Chains | None = None  # a pool process's state, built once by _init


def _init(run_dir: str, s: lc.Settings) -> None:
    global _WORKER
    setup_torch(1)
    _WORKER = _Chains(run_dir, s)


def _at(step: int) -> tuple[int, dict[str, float], np.ndarray, int]:
    assert _WORKER is not None, "the pool's initializer did not run"
    return _WORKER.at(step)


def default_workers(threads: int | None) -> int:
    """Processes for the chains: `threads` when given (the cores the analysis may use), else every core."""
    return max(1, threads or os.cpu_count() or 1)


def over_checkpoints(run_dir: str | Path, steps: Sequence[int], per_epoch: int | None, s: lc.Settings, workers: int = 1,
                     log: Callable[[str], None] | None = None) -> tuple[list[dict], dict[str, torch.Tensor], int]:
    """The LLC of each checkpoint at `steps`, over `workers` single-thread processes.

    Returns one row per checkpoint in `steps`' order (step, epoch unless per_epoch is None,
    `Estimate.row()` with nan as None), the traces, {"steps": [k] int64, "trace": [k, chains, burnin + draws] float64}, and n,
    the size of the LLC's train set (examples, or predicted tokens for a language model)."""
    workers = max(1, min(workers, len(steps)))
    done: dict[int, tuple[dict[str, float], np.ndarray]] = {}
    sizes: set[int] = set()

    def keep(step: int, row: dict[str, float], trace: np.ndarray, n: int) -> None:
        done[step] = (row, trace)
        sizes.add(n)
        if log is not None and len(done) % 25 == 0:
            log(f"LLC: {len(done)} of {len(steps)} checkpoints")

    if workers == 1:
        threads = torch.get_num_threads()
        setup_torch(1)
        try:
            chains = _Chains(str(run_dir), s)
            for st in steps:
                keep(*chains.at(st))
        finally:
            setup_torch(threads)
    else:
        # spawn, not fork: a forked child inherits the parent's OpenMP and numba thread pools
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init,
                                 initargs=(str(run_dir), s)) as pool:
            for fut in as_completed([pool.submit(_at, st) for st in steps]):
                keep(*fut.result())
    rows = [{"step": st, **({} if per_epoch is None else {"epoch": st / per_epoch}),
             **{k: (None if math.isnan(v) else v) for k, v in done[st][0].items()}} for st in steps]
    trace = torch.from_numpy(np.stack([done[st][1] for st in steps]))
    return rows, {"steps": torch.tensor(list(steps), dtype=torch.int64), "trace": trace}, sizes.pop()
