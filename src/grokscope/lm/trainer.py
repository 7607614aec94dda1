"""The minibatch trainer for the copy LM (Lv et al. 2024): next-token loss on packed text windows.

One step = one optimiser update on `train.batch_size * train.grad_accum` windows of
`task.context + 1` tokens (global, across data-parallel ranks; see `grokscope.lm.ddp`). Steps
and tokens are both counted, since the paper's claim is that copying arrives after a number of
updates, not of tokens. AdamW (weight decay on matrices only, not norm gains), linear warmup then
constant or cosine (`grokscope.train.trainer.lr_at`), gradient clipping, gradient accumulation.

At each evaluation step (`train.eval_schedule: log` spaces them logarithmically) it records, in
the run store's `metrics` table: train and validation loss on fixed windows, the in-context
learning score, the paper's copy test (`pcopy_*`: random token ids over the vocabulary; the
headline), the hex copy test (`copy_*`) and its random-id-with-newline variant (`rcopy_*`), and per
layer the largest induction score A, A * EP, prefix-matching and previous-token scores; per-head
scores go to the `heads` table (step, layer, head, induction, prefix_matching, copying,
induction_copying, previous_token).
Wall-clock time goes to a separate `timing` table, so `metrics` is the same after a resume.

Windows, span repetition and dropout masks are drawn from generators seeded by (seed, step),
so a run resumed from its latest checkpoint (which keeps the optimiser state) replays the
uninterrupted run exactly.
"""

from __future__ import annotations

import contextlib
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import grokscope
from grokscope import config as C
from grokscope.lm import ddp
from grokscope.lm.copytest import build_copy_set, evaluate_copy
from grokscope.lm.induction import (
    head_scores,
    icl_score,
    per_position_loss,
    repeat_gain,
    with_repeated_span,
)
from grokscope.lm.text import fixed_windows, prepare, repeat_spans, sample_windows
from grokscope.models import loading
from grokscope.models.llama import Llama, build_llama, n_params
from grokscope.store import RUN_FORMAT, Run, StoreError, read_run_config
from grokscope.train.loop import (
    Rows,
    TrainerCore,
    load_optimizer_state,
    lr_at,
    now,
    setup_torch,
    step_generator,
)
from grokscope.train.rundir import check_run_dir, prepare_run_dir, record_config

TABLES = ["metrics", "heads", "timing"]


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean next-token cross-entropy of logits [n, L, V] against targets [n, L].

    float32 is enough here: LM losses stay far from zero, where the grokking runs needed float64.
    """
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def total_steps(cfg: C.RunConfig, n_train_tokens: int) -> int:
    if cfg.train.steps is not None:
        return cfg.train.steps
    per_step = (cfg.train.batch_size or 8) * cfg.train.grad_accum * cfg.task.context
    return math.ceil((cfg.train.epochs or 0) * n_train_tokens / per_step)


class LMTrainer(TrainerCore):
    """Trains one text run into its folder; `fit()` starts or resumes (see module docstring)."""

    tables = tuple(TABLES)

    def __init__(self, cfg: C.RunConfig, run: Run, progress: bool = True):
        if cfg.task.name != "text" or cfg.model.arch != "llama":
            raise C.ConfigError("the LM trainer needs task.name=text and model.arch=llama")
        self.cfg, self.run = cfg, run
        setup_torch(cfg.train.threads)
        self.rank, self.world = ddp.init_from_env()
        self.device = ddp.device_for(self.rank, cfg.train.device)
        self.batch = cfg.train.batch_size or 8  # sequences per micro-step, global
        if self.batch % self.world:
            raise C.ConfigError(f"train.batch_size={self.batch} must be a multiple of the {self.world} data-parallel processes")
        check_config(cfg)
        task = cfg.task
        if self.rank == 0:  # rank 0 trains the tokenizer and fills the cache; the others then read it
            self.data = prepare(task)
        ddp.barrier()
        if self.rank != 0:
            self.data = prepare(task)
        # task.repeat_symbols extra ids (only random repeated spans of training windows use them) widen the
        # model's vocabulary; the probes use the tokenizer's ids only, but for the paper's copy test when
        # task.copy_vocab is "model".
        self.vocab = self.data.vocab_size + task.repeat_symbols
        self.model: Llama = build_llama(cfg.model, self.vocab, task.context, cfg.seed).to(self.device)
        self.net = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.model)
        self.params = list(self.model.parameters())
        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]  # RMSNorm gains: decaying them only fights the norm
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.optim.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps)
        self.total = total_steps(cfg, len(self.data.train))
        self.tokens_per_step = self.batch * cfg.train.grad_accum * task.context
        self.progress = progress and self.rank == 0
        self.writer = self.rank == 0
        self.callbacks = []
        self.step = 0
        self._eval_sets()

    # ------------------------------------------------------------------------------ eval data
    def _eval_sets(self) -> None:
        task, seed, L = self.cfg.task, self.cfg.seed, self.cfg.task.context
        self.train_eval = fixed_windows(self.data.train, task.eval_windows, L + 1).to(self.device)
        self.val_eval = fixed_windows(self.data.val, task.eval_windows, L + 1).to(self.device)
        tok = self.data.tokenizer
        try:
            self.copy_set = build_copy_set(tok, L, task.copy_samples, task.copy_lines, task.copy_queries, seed + 1)
            self.rcopy_set = build_copy_set(tok, L, task.copy_samples, task.copy_lines, task.copy_queries, seed + 2,
                                            random_ids=True)
            # seed + 3 draws the induction probes; the paper's test has its own seed
            self.pcopy_set = build_copy_set(tok, L, task.copy_samples, task.copy_lines, task.copy_queries, seed + 4,
                                            kind="paper", vocab=self.vocab if task.copy_vocab == "model" else None)
        except ValueError as err:
            raise C.ConfigError(f"task.context={L}: {err}; use at least 64") from None
        for cs in (self.copy_set, self.rcopy_set, self.pcopy_set):
            for name in ("tokens", "pos", "targets", "mask"):
                setattr(cs, name, getattr(cs, name).to(self.device))

    # ------------------------------------------------------------------------------ the step
    def windows(self, step: int) -> Tensor:
        """The global batch of step `step`: [batch * grad_accum, context + 1] token ids."""
        gen = step_generator(self.cfg.seed, step, 0)
        n = self.batch * self.cfg.train.grad_accum
        x = sample_windows(self.data.train, n, self.cfg.task.context + 1, gen)
        if self.cfg.task.repeat_frac > 0:
            t = self.cfg.task
            x = repeat_spans(x, t.repeat_frac, gen, t.repeat_max_len, t.repeat_random, self.vocab)
        return x

    def train_step(self, step: int) -> tuple[float, float]:
        """One optimiser update; returns (lr, the step's mean training loss over all ranks)."""
        cfg = self.cfg
        lr = lr_at(step, self.total, cfg.optim)
        for g in self.opt.param_groups:
            g["lr"] = lr
        x = self.windows(step)
        # Dropout draws from torch's global generator: seed it per (step, rank) for exact resume.
        torch.manual_seed((cfg.seed * 1_000_003 + step) * 64 + self.rank)
        self.opt.zero_grad(set_to_none=True)
        n_micro, per_rank = cfg.train.grad_accum, self.batch // self.world
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for m in range(n_micro):
            rows = x[m * self.batch + self.rank * per_rank:m * self.batch + (self.rank + 1) * per_rank].to(self.device)
            sync = m == n_micro - 1 or self.world == 1
            ctx = self.net.no_sync() if not sync else contextlib.nullcontext()
            with ctx:
                with self.autocast():
                    logits = self.net(rows[:, :-1])
                loss = lm_loss(logits.float(), rows[:, 1:]) / n_micro
                loss.backward()
            total += loss.detach().double()
        if cfg.optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.grad_clip)
        self.opt.step()
        return lr, float(ddp.mean_across(total))

    def autocast(self) -> contextlib.AbstractContextManager:
        """train.precision=bf16: the step's forward in bfloat16 autocast (on CUDA, or on the CPU, where
        the tests check its fidelity); float32 otherwise. Weights, gradients, AdamW and the loss stay float32."""
        if self.cfg.train.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    # ------------------------------------------------------------------------------ metrics
    def evaluate(self, step: int, lr: float, loss: float | None) -> Rows:
        row, heads = self.scores(step, lr, loss)
        if step == 0:
            timing = {"step": 0, "wall_seconds": 0.0}
        else:
            timing = {"step": step, "wall_seconds": time.perf_counter() - self.clock_start,
                      "train_seconds": self.train_seconds,
                      "tokens_per_second": (step - self.start_step) * self.tokens_per_step / max(self.train_seconds, 1e-9)}
        return {"metrics": [row], "heads": heads, "timing": [timing]}

    def postfix(self, row: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{row['batch_loss']:.3g}", "val": f"{row['val_loss']:.3g}", "copy": f"{row['pcopy_acc']:.2f}",
                "ind": f"{row['induction_max']:.2f}"}

    @torch.no_grad()
    def scores(self, step: int, lr: float, batch_loss: float | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(metrics row, per-head rows) at `step`."""
        model, task = self.model, self.cfg.task
        model.eval()
        row: dict[str, Any] = {"step": step, "tokens": step * self.tokens_per_step, "lr": lr,
                               "batch_loss": batch_loss}
        for split, w in (("train", self.train_eval), ("val", self.val_eval)):
            pos_loss = sum(per_position_loss(model(c[:, :-1]), c[:, 1:]) * len(c) for c in w.split(16)) / len(w)
            row[f"{split}_loss"] = float(pos_loss.mean())
            if split == "val":
                row["icl_score"] = icl_score(pos_loss.cpu())
                # Copying on real text: the same windows with an earlier span repeated near the end.
                rep, ctl, where = with_repeated_span(w, 24)
                losses = [sum(per_position_loss(model(c[:, :-1]), c[:, 1:]) * len(c) for c in x.split(16)) / len(w)
                          for x in (ctl, rep)]
                row["repeat_gain"] = repeat_gain(losses[0].cpu(), losses[1].cpu(), where)
        row.update(evaluate_copy(model, self.copy_set, prefix="copy"))
        row.update(evaluate_copy(model, self.rcopy_set, prefix="rcopy"))
        row.update(evaluate_copy(model, self.pcopy_set, prefix="pcopy"))
        scores = head_scores(model, task.induction_len, 4, self.cfg.seed + 3, vocab=self.data.vocab_size)
        heads = []
        n_layers, n_heads = scores["induction"].shape
        for layer in range(n_layers):
            for h in range(n_heads):
                heads.append({"step": step, "layer": layer, "head": h,
                              **{k: float(v[layer, h]) for k, v in scores.items()}})
            row[f"induction_l{layer}"] = float(scores["induction"][layer].max())
            row[f"prefix_matching_l{layer}"] = float(scores["prefix_matching"][layer].max())
            row[f"induction_copying_l{layer}"] = float(scores["induction_copying"][layer].max())
            row[f"previous_token_l{layer}"] = float(scores["previous_token"][layer].max())
        row["induction_max"] = float(scores["induction"].max())
        row["induction_copying_max"] = float(scores["induction_copying"].max())
        model.train()
        return row, heads

    # ------------------------------------------------------------------------------ state
    def load_resume_state(self, tensors: dict[str, Tensor], step: int | None = None) -> None:
        load_optimizer_state(self.opt, self.params, tensors, self.run, self.device, step)

    def checkpoint_params(self) -> dict[str, Tensor]:
        return {k: v.cpu() for k, v in self.model.state_dict().items()}

    def checkpoint_info(self, step: int) -> dict[str, Any]:
        return {"last_tokens": step * self.tokens_per_step}

    def barrier(self) -> None:
        ddp.barrier()

    def train_mode(self) -> None:
        self.net.train()

    def diverged_row(self, step: int, lr: float, loss: float) -> dict[str, Any]:
        return {"step": step, "tokens": step * self.tokens_per_step, "lr": lr, "batch_loss": loss}

    def start_info(self) -> dict[str, Any]:
        return dict(
            format=RUN_FORMAT, status="running", seed=self.cfg.seed, total_steps=self.total,
            tokens_per_step=self.tokens_per_step, total_tokens=self.total * self.tokens_per_step, started=now(),
            ended=None, last_step=0, n_params=n_params(self.model), d_vocab=self.vocab,
            tokenizer_vocab=self.data.vocab_size, train_tokens=len(self.data.train), val_tokens=len(self.data.val),
            val_book=self.data.val_name, world_size=self.world, copy_lines=self.copy_set.n_lines,
            copy_query_lines=self.copy_set.query_lines, paper_copy_lines=self.pcopy_set.n_lines,
            paper_copy_query_lines=self.pcopy_set.query_lines, corpus=self.data.corpus,
            versions={"grokscope": grokscope.__version__, "torch": torch.__version__,
                      "python": platform.python_version()},
            threads=torch.get_num_threads(), device=str(self.device))

    def end_info(self, steps_done: int, elapsed: float, train_seconds: float) -> dict[str, Any]:
        return {"tokens_per_second": steps_done * self.tokens_per_step / max(train_seconds, 1e-9)}

    def after_resume(self, step: int) -> None:
        m = self.run.metrics()
        if len(m) and "pcopy_acc" not in m:  # logged before the paper's copy test was added
            self.run.update_info(paper_copy_from_step=step)
        if len(m) and "induction_copying_max" not in m:
            # logged before the induction score became A and per-token copy accuracy greedy:
            # rows up to here keep the old meanings; say where they change
            self.run.update_info(definitions_changed_at_step=step)
            print(f"note: {self.run.path}'s metrics up to step {step} use the earlier definitions (induction = "
                  "A * EP, teacher-forced per-token copy accuracy); later rows use docs/measures.md's",
                  file=sys.stderr)


def check_config(cfg: C.RunConfig) -> None:
    """The checks that need no data, run before the run folder is touched."""
    if cfg.model.d_head % 2:
        raise C.ConfigError(f"model.d_head={cfg.model.d_head} must be even for rotary positions")
    if cfg.task.context < 56:  # two 19-token hex lines and a 17-token query (character tokens)
        raise C.ConfigError(f"task.context={cfg.task.context} is too short for the copy test; use at least 56")


def train_text_run(cfg: C.RunConfig, out, resume: bool = False, overwrite: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """`pipeline.train_run` for text: under torchrun only rank 0 writes the folder.

    The folder is checked, and the tokenizer, corpus, copy test and model are built (every way a
    config can be bad), before anything in it is touched: a bad config leaves an old run whole,
    even with --overwrite, and leaves no half-made folder behind.
    """
    out = Path(out)
    check_config(cfg)
    check_run_dir(out, resume, overwrite)  # on every rank, so that all of them stop together
    rank, _ = ddp.init_from_env()
    try:
        trainer = LMTrainer(cfg, Run(out), progress=progress)  # writes only the token cache
        with Run(out).lock() if rank == 0 else contextlib.nullcontext():  # rank 0 is the one writer
            if rank == 0:
                trainer.run = prepare_run_dir(out, resume, overwrite)  # the checks passed: replace an old run only now
                record_config(trainer.run, cfg, resume, trainer.total, trainer.model,
                              total_tokens=trainer.total * trainer.tokens_per_step)
            ddp.barrier()
            return trainer.fit(resume=resume)
    finally:
        ddp.shutdown()


def model_from_run(run_dir: str, step: int | None = None) -> tuple[Llama, C.RunConfig, int]:
    """(model with a checkpoint's weights, config, step) of an LM run folder."""
    cfg = read_run_config(Run(run_dir))  # an unreadable config.yaml is a StoreError
    if cfg.task.name != "text" or cfg.model.arch != "llama":
        raise StoreError(f"{str(run_dir)!r} is not a language-model run (task {cfg.task.name!r}, "
                         f"model {cfg.model.arch!r}); pass a run of a text config such as copy-lm")
    return loading.model_from_run(run_dir, step)  # type: ignore[return-value]
