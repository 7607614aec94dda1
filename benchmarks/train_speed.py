"""Mainline training throughput: grokscope's step against a straightforward PyTorch loop.

    python benchmarks/train_speed.py [--threads 2] [--rounds 7] [--steps 20] [--from-run RUN --step N] [--tl]

Both implementations train the same mainline model (p=113, 3830 examples, full batch) from the
same weights, in the same process, alternating in rounds so that machine noise hits both alike.
The baseline is what a researcher's notebook does: an nn.Module over every position, the
standard torch.optim.AdamW, a float64 log-softmax loss. grokscope's step is the real
`Trainer.train_step`. It prints epochs/s of each, their ratio, the matmul GFLOP each step costs
(counted by torch's FlopCounterMode), the GFLOP/s achieved, and the machine's measured float32
matmul peak, so the distance to the physical limit is visible, and a tighter bound: the step's own
matrix products, each timed alone at its shape (thin products never reach the 2048^2 peak).

`--tl` also times TransformerLens's own HookedTransformer (grokscope.models.tl.to_hooked, its zero
attention and unembedding biases frozen, as Nanda's notebook keeps them) in the same loop: the
other straightforward implementation a researcher would write (needs the `[tl]` extra).

`--from-run RUN --step N` starts both from a checkpoint of a real run (for example a grokked one,
where float32 subnormals would slow training if the loss did not zero them).

`--fidelity N` instead trains both for N epochs from the same weights and prints how far
grokscope's loss curve departs from the baseline's, beside how far the baseline departs from
itself when its initial weights move by one float32 rounding (1e-7 relative): the yardstick of
"the same curve within float tolerance".
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from grokscope import config as C
from grokscope.models.reference import ReferenceTransformer, reference_loss
from grokscope.store import Run
from grokscope.train.trainer import Trainer, lr_at, setup_torch


def matmul_peak(threads: int, n: int = 2048, reps: int = 10) -> float:
    """Measured float32 GEMM GFLOP/s at this thread count (best of reps)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


class Baseline:
    """The straightforward loop, over our einsum reference model or (`model=`) any other nn.Module
    computing logits [batch, pos, d_vocab_out] from the same weights."""

    def __init__(self, trainer: Trainer, model: torch.nn.Module | None = None):
        t = trainer.task
        if model is None:
            model = ReferenceTransformer(t.d_vocab, t.d_vocab_out, t.n_ctx)
            model.load_tl_state(trainer.model.state_dict())
        self.model = model
        o = trainer.cfg.optim
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=o.lr, betas=o.betas,
                                     eps=o.eps, weight_decay=o.weight_decay)
        self.x, self.y = t.train_x, t.train_y[:, 0]
        self.lr = lambda step: lr_at(step, trainer.total, o)  # the same warmup as grokscope's

    def step(self, step: int) -> None:
        for g in self.opt.param_groups:
            g["lr"] = self.lr(step)
        self.opt.zero_grad()
        loss = reference_loss(self.model(self.x)[:, -1], self.y)
        loss.backward()
        self.opt.step()


def hooked_baseline(trainer: Trainer) -> Baseline:
    """The same loop over TransformerLens's HookedTransformer, its zero biases frozen."""
    from grokscope.models.tl import to_hooked

    model = to_hooked(trainer.model)
    for name, p in model.named_parameters():
        p.requires_grad_(name.rsplit(".", 1)[-1] not in ("b_Q", "b_K", "b_V", "b_O", "b_U"))
    return Baseline(trainer, model)


def flops_per_step(step_fn) -> float:
    with FlopCounterMode(display=False) as counter:
        step_fn(0)
    return counter.get_total_flops()


class _MatmulShapes(TorchDispatchMode):
    """Records (op, shapes, dtype) of every matrix product dispatched while active."""

    # out= variants are recorded as the plain op at the same shapes
    OPS = {torch.ops.aten.mm.default: torch.ops.aten.mm.default, torch.ops.aten.mm.out: torch.ops.aten.mm.default,
           torch.ops.aten.addmm.default: torch.ops.aten.addmm.default,
           torch.ops.aten.addmm.out: torch.ops.aten.addmm.default,
           torch.ops.aten.bmm.default: torch.ops.aten.bmm.default, torch.ops.aten.bmm.out: torch.ops.aten.bmm.default}

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.OPS:
            self.calls.append((self.OPS[func], [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)],
                               next(a.dtype for a in args if isinstance(a, torch.Tensor))))
        return func(*args, **(kwargs or {}))


def matmul_time(step_fn, reps: int = 20) -> float:
    """Seconds one step spends if it did nothing but its own matrix products, each timed alone on
    random operands of the same shapes (best of `reps`): the bound at this machine's speed for
    these shapes, tighter than FLOPs / peak because thin products never reach the peak."""
    mode = _MatmulShapes()
    with mode:
        step_fn(0)
    total = 0.0
    for func, shapes, dtype in mode.calls:
        ops = [torch.randn(s, dtype=dtype) for s in shapes]
        func(*ops)
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            func(*ops)
            best = min(best, time.perf_counter() - t0)
        total += best
    return total


def cpu_ticks() -> tuple[int, int] | None:
    """(ticks stolen by the hypervisor, all ticks) so far, summed over CPUs; None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user]
    return fields[7], sum(fields[:8])


def timed(step_fn, start: int, steps: int) -> float:
    t0 = time.perf_counter()
    for s in range(start, start + steps):
        step_fn(s)
    return steps / (time.perf_counter() - t0)


def loss_curve(step_fn, model, x, y, start: int, epochs: int, every: int = 25) -> list[float]:
    from grokscope.models.loss import loss_and_acc

    out = []
    for s in range(start, start + epochs + 1):
        if (s - start) % every == 0:
            with torch.no_grad():
                out.append(loss_and_acc(model(x)[:, -1], y)[0])
        if s < start + epochs:
            step_fn(s)
    return out


def fidelity(trainer: Trainer, epochs: int) -> None:
    x, y = trainer.task.train_x, trainer.task.train_y[:, 0]
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    base = Baseline(trainer)
    nudged = Baseline(trainer)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in nudged.model.parameters():
            p.mul_(1 + 1e-7 * torch.randn(p.shape, generator=g))
    ours = loss_curve(trainer.train_step, trainer.model, x, y, 0, epochs)
    ref = loss_curve(base.step, base.model, x, y, 0, epochs)
    nud = loss_curve(nudged.step, nudged.model, x, y, 0, epochs)
    trainer.model.load_state_dict(state)
    print(f"train loss every 25 epochs over {epochs} epochs, relative departure from the baseline's curve:")
    print(f"{'epoch':>6s} {'baseline':>12s} {'grokscope':>10s} {'nudged baseline':>16s}")
    for i, (a, b, c) in enumerate(zip(ref, ours, nud, strict=True)):
        print(f"{i * 25:6d} {a:12.6g} {abs(b - a) / a:10.2e} {abs(c - a) / a:16.2e}")
    worst = max(abs(b - a) / a for a, b in zip(ref, ours, strict=True))
    worst_n = max(abs(c - a) / a for a, c in zip(ref, nud, strict=True))
    print(f"largest departure: grokscope {worst:.2e}, baseline nudged by 1e-7 {worst_n:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20, help="steps per implementation per round")
    ap.add_argument("--from-run", default=None, help="start from a checkpoint of this run")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    ap.add_argument("--tl", action="store_true", help="also time TransformerLens's HookedTransformer")
    ap.add_argument("--fidelity", type=int, default=None, metavar="EPOCHS",
                    help="compare loss curves over EPOCHS epochs instead of timing")
    args = ap.parse_args()

    setup_torch(args.threads)
    cfg = C.resolve({}, [f"train.threads={args.threads}", "train.epochs=100000"])
    trainer = Trainer(cfg, Run("/nonexistent"), progress=False)
    if args.from_run:
        _, tensors = Run(args.from_run).require().load_checkpoint(args.step)
        trainer.model.load_state_dict(Run.params_only(tensors))
    if args.fidelity:
        fidelity(trainer, args.fidelity)
        return
    steps = {"baseline": Baseline(trainer).step}
    if args.tl:
        steps["TL hooked"] = hooked_baseline(trainer).step
    steps["grokscope"] = trainer.train_step
    start = trainer.cfg.optim.warmup_steps + 1  # past warmup: constant lr, like most of a run
    flops = {name: flops_per_step(fn) for name, fn in steps.items()}
    for fn in steps.values():  # warm up allocators and caches
        timed(fn, start, 3)

    rates: dict[str, list[float]] = {name: [] for name in steps}
    ticks0 = cpu_ticks()
    for r in range(args.rounds):
        for name, fn in steps.items():
            rates[name].append(timed(fn, start + r * args.steps, args.steps))
    ticks1 = cpu_ticks()
    peak = matmul_peak(args.threads)
    gemm_s = {name: matmul_time(fn) for name, fn in steps.items()}

    print(f"threads: {torch.get_num_threads()}  rounds: {args.rounds} x {args.steps} steps each, alternating"
          f"{'  from ' + args.from_run if args.from_run else '  from initialisation'}")
    print(f"machine float32 matmul peak (2048^2): {peak:.0f} GFLOP/s")
    for name, rs in rates.items():
        med = statistics.median(rs)
        gf = flops[name] / 1e9
        print(f"{name:10s} {med:7.2f} epochs/s (min {min(rs):.2f}, max {max(rs):.2f})  "
              f"{gf:5.2f} GFLOP/epoch (matmul)  {gf * med:6.1f} GFLOP/s  "
              f"bound at peak: {peak / gf:6.1f} epochs/s; its matmuls alone: {1 / gemm_s[name]:6.1f} epochs/s")
    if ticks0 and ticks1 and ticks1[1] > ticks0[1]:
        # a shared VM's neighbours take CPU time from both implementations, unevenly across rounds
        print(f"CPU time stolen by the hypervisor during the timed rounds: "
              f"{100 * (ticks1[0] - ticks0[0]) / (ticks1[1] - ticks0[1]):.0f}%")
    paired = statistics.median(o / b for o, b in zip(rates["grokscope"], rates["baseline"], strict=True))
    print(f"per-round ratios: median {paired:.2f}x (each round's grokscope rate over the baseline's just before it)")
    ratio = statistics.median(rates["grokscope"]) / statistics.median(rates["baseline"])
    if args.tl:
        tl = statistics.median(rates["grokscope"]) / statistics.median(rates["TL hooked"])
        print(f"speed-up over TransformerLens's HookedTransformer: {tl:.2f}x")
    print(f"speed-up: {ratio:.2f}x")


if __name__ == "__main__":
    main()
