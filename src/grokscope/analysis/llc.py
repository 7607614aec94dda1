"""The local learning coefficient (LLC) of a checkpoint, estimated by SGLD.

Method: Lau, Furman, Wang, Murfet and Wei (2023), "Quantifying degeneracy in singular models via
the learning coefficient" (arXiv:2308.12108), Section 4 and Appendix; the estimator is the one
devinterp (timaeus-research/devinterp) implements. With L_n the mean training loss over n
examples and w* the checkpoint's weights,

    lambda_hat(w*) = n*beta * (E_w[L_n(w)] - L_n(w*)),      n*beta = n / log n  (beta = 1/log n)

where the expectation is over the localised, tempered posterior
p(w) ~ exp(-n*beta L_n(w) - gamma/2 |w - w*|^2), sampled by stochastic-gradient Langevin dynamics
(Welling and Teh 2011) with a fixed step size epsilon:

    w <- w - epsilon/2 * (n*beta * grad L_m(w) + gamma * (w - w*)) + N(0, epsilon),

L_m being the mean loss of a minibatch. E_w[L_n(w)] - L_n(w*) is the mean, over chains and over
the draws after burn-in, of L_m(w) - L_m(w*): the minibatch loss each step computes anyway (as
devinterp does, so a draw costs one gradient) less that minibatch's own loss at w*, computed once
per checkpoint. The subtraction is a control variate. Over uniformly drawn minibatches it has the
same expectation as devinterp's L_m(w) - L_n(w*), but it removes the spread between minibatches,
which 35 draws over 8 batches do not average out. On the mainline's checkpoints, where the 8
batches' losses at w* agree within 5e-4, the two agree to 3 figures. On a language model, whose
batches' losses at w* differ by up to 0.8 nats, three seeds gave 17-65 without it and 18-23 with it
(copy-lm-spans, step 500). A regular model with d parameters has lambda = d/2; degenerate directions
lower it (a quadratic loss of rank r gives r/2; a quartic direction 1/4).

Diagnostics (`Estimate`): the trace, L_m(w) - L_m(w*) + L_n(w*) at every step of every chain
[chains, steps] (burn-in included; the loss on the scale of L_n), the LLC of each chain, the split R-hat of the draws (Gelman et al. 2013, 11.4)
and the drift, n*beta times the change of the mean loss from the first half of the draws to the
second: a chain still climbing towards its equilibrium has a drift that is a large share of
lambda_hat. The tests pin the estimator on models with a known answer (tests/test_llc.py).

Math only: a loss function and a list of batches in, numbers out; llc_run.py loads a run's
checkpoints and spreads them over processes.
The defaults (`Settings`) were chosen on the mainline's checkpoints, see `Settings`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace

import torch
from torch import Tensor

from grokscope.config import ConfigError

Batch = tuple[Tensor, Tensor]  # (inputs [m, ...], labels [m, ...]): the loss function's two arguments
LossFn = Callable[[Tensor, Tensor], Tensor]  # mean loss of a batch: a differentiable scalar


@dataclass(frozen=True)
class Settings:
    """SGLD's settings for `grokscope analyze --llc` (`--llc-set KEY=VALUE` overrides them).

    Chosen from the chains' traces on the mainline's checkpoints (p=113, 3,830 training pairs,
    n*beta = n/log n = 464, 8 minibatches; one chain of 20-25 burn-in + 35-40 draws unless said):
    - epsilon 5e-5. The memorising checkpoints are the sharpest: at 1e-4 the chains of epoch 200
      blew up (their loss rose from 0.02 to 1.9; lambda_hat 380 +- 31 over 2 chains), at 2e-4 those
      of epoch 500 (loss 7, lambda_hat 1,352). 5e-5 and 7e-5 agree within 3-8% at epochs 100-400
      (132/137, 115/124, 77/83, 52/56): the plateau in epsilon the method looks for, with a 2x
      margin below the first step size that diverged. Later checkpoints are flatter: there
      lambda_hat still grows with epsilon (epoch 2,000: 7.0 at 5e-5, 9.3 at 1e-4), so read the
      curve's shape, not its absolute level.
    - gamma 3000. At 100-1000 the chains leave the checkpoint's basin within their steps (loss
      0.3-4 nats, lambda_hat 80-1,200, drift as large as the estimate: not local); at 6,000-10,000
      they are pinned so tightly that every checkpoint after epoch 2,000 reads below 0.5, with no
      resolution left. At 3000 the trace levels off within its burn-in (epsilon*gamma/2 = 0.075
      per step) and the drift stays within the noise. Directions flatter than gamma/(n*beta) ~ 6.5
      count as pinned, so lambda_hat is the LLC at this localisation, a lower bound on the LLC.
    - nbeta None: n/log n, Lau et al.'s beta* = 1/log n.
    - 1 chain of 25 burn-in steps + 35 draws, over 8 minibatches of n/8: the cost target is a
      quarter of the training time for all 151 checkpoints (benchmarks/bench_llc.py measured 17%
      over two single-thread processes), and one chain with a longer burn-in beats two shorter
      ones at equal cost. Against
      4 chains of 50 + 150 steps (13x the cost) the default read 77 / 80 +- 1 (epoch 300),
      6.5 / 7.6 +- 0.8 (1,300), 7.2 / 7.9 +- 0.6 (3,000), 4.9 / 4.9 +- 0.2 (5,000): within 15%
      up to circuit formation's end; in the flat basin of the grokked model it reads about half
      (0.49 / 0.79 at 7,400, 0.020 / 0.05 at 9,000), its chain still climbing (a positive drift),
      which moves no phase boundary. A minibatch step costs ~0.4 of a training step. Ask for
      more (`--llc-set chains=4`) where time allows.
    """

    epsilon: float = 5e-5  # SGLD step size
    gamma: float = 3000.0  # localisation strength, pulling w back to w*
    nbeta: float | None = None  # inverse temperature n*beta; None: n / log n
    chains: int = 1  # independent chains from w*
    burnin: int = 25  # steps per chain whose losses are left out of the estimate
    draws: int = 35  # steps per chain whose losses are averaged
    batches: int = 8  # the train set is cut into this many minibatches (1: full batch)
    windows: int = 256  # language-model runs: training windows sampled as the LLC's train set
    seed: int = 0  # of the batch order and the noise

    def __post_init__(self) -> None:
        bad = [f"{k} must be > 0" for k in ("epsilon", "gamma") if not getattr(self, k) > 0]
        bad += [f"{k} must be >= 1" for k in ("chains", "draws", "batches", "windows") if getattr(self, k) < 1]
        if self.burnin < 0:
            bad.append("burnin must be >= 0")
        if self.nbeta is not None and not self.nbeta > 0:
            bad.append("nbeta must be > 0 (or none for n/log n)")
        if bad:
            raise ConfigError("LLC settings: " + "; ".join(bad))

    def with_overrides(self, items: Iterable[str]) -> Settings:
        """A copy with KEY=VALUE overrides (`--llc-set`), each checked; ConfigError names a bad one."""
        kinds = {f.name: f.type for f in fields(self)}
        changes: dict[str, object] = {}
        for item in items:
            key, sep, text = item.partition("=")
            key, text = key.strip(), text.strip()
            if not sep or key not in kinds:
                raise ConfigError(f"--llc-set {item!r}: expected KEY=VALUE with KEY one of {', '.join(kinds)}")
            try:
                if key == "nbeta" and text.lower() in ("none", "null", ""):
                    changes[key] = None
                elif kinds[key] == "int":  # annotations are strings here (from __future__)
                    changes[key] = int(text)
                else:
                    changes[key] = float(text)
            except ValueError:
                raise ConfigError(f"--llc-set {item!r}: {key} takes a number") from None
            if isinstance(changes[key], float) and not math.isfinite(changes[key]):  # type: ignore[arg-type]
                raise ConfigError(f"--llc-set {item!r}: {key} must be finite")
        return replace(self, **changes)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class Estimate:
    """One LLC estimate and what to judge it by."""

    llc: float  # lambda_hat: the mean over chains
    llc_std: float  # the chains' standard deviation (nan for one chain)
    per_chain: list[float]
    init_loss: float  # L_n(w*)
    nbeta: float
    r_hat: float  # split R-hat of the draws' losses (nan with one draw per half)
    drift: float  # n*beta * (mean loss of the draws' second half - first half), mean over chains
    trace: Tensor  # [chains, burnin + draws] float64: the minibatch loss at every step

    def row(self) -> dict[str, float]:
        """The numbers stored per checkpoint (the trace goes elsewhere)."""
        out = {"llc": self.llc, "llc_std": self.llc_std, "llc_init_loss": self.init_loss,
               "llc_r_hat": self.r_hat, "llc_drift": self.drift}
        out.update({f"llc_chain{c}": v for c, v in enumerate(self.per_chain)})
        return out


def default_nbeta(n: int) -> float:
    """n / log n: Lau et al.'s inverse temperature beta* = 1/log n, times n."""
    return n / math.log(n) if n > 1 else 1.0


def split_batches(x: Tensor, y: Tensor, k: int, seed: int) -> list[Batch]:
    """The examples shuffled once (seeded) and cut into k minibatches of near-equal size.

    Fixed batches, reused at every step and every checkpoint (building a batch's gather pattern
    for the fast 1-layer model each step costs ~2% of the step, so it is not cached)."""
    k = max(1, min(k, len(x)))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return [(x[i].contiguous(), y[i].contiguous()) for i in perm.tensor_split(k)]


@torch.no_grad()
def batch_losses(loss_fn: LossFn, batches: Sequence[Batch]) -> list[float]:
    """Each batch's mean loss at the current weights."""
    return [float(loss_fn(bx, by)) for bx, by in batches]


def mean_loss(losses: Sequence[float], batches: Sequence[Batch]) -> float:
    """L_n from the batches' mean losses, weighted by their numbers of labels."""
    n = sum(by.numel() for _, by in batches)
    return sum(v * by.numel() for v, (_, by) in zip(losses, batches, strict=True)) / n


def sgld_trace(loss_fn: LossFn, params: Sequence[Tensor], batches: Sequence[Batch], s: Settings,
               nbeta: float, offsets: Sequence[float] | None = None) -> Tensor:
    """Run `s.chains` SGLD chains from the current `params` (w*); the loss at every step, less
    `offsets[b]` when the step drew batch b (the control variate L_m(w*) - L_n(w*); none: 0).

    params: the leaf tensors `loss_fn` reads (a model's parameters), moved in place during the
    chains and restored to w* at the end, also on error. Each chain visits the batches in a fresh
    random order per pass. Returns [chains, burnin + draws] float64.
    """
    offsets = list(offsets) if offsets is not None else [0.0] * len(batches)
    gen = torch.Generator().manual_seed(s.seed)
    w_star = [p.detach().clone() for p in params]
    noise = [torch.empty_like(p) for p in w_star]  # refilled every step
    steps = s.burnin + s.draws
    trace = torch.empty(s.chains, steps, dtype=torch.float64)
    half_eps, noise_std = s.epsilon / 2, math.sqrt(s.epsilon)
    try:
        for c in range(s.chains):
            with torch.no_grad():
                for p, p0 in zip(params, w_star, strict=True):
                    p.copy_(p0)
            order: list[int] = []
            for t in range(steps):
                if not order:
                    order = torch.randperm(len(batches), generator=gen).tolist()
                b = order.pop()
                loss = loss_fn(*batches[b])
                grads = torch.autograd.grad(loss, params)
                trace[c, t] = float(loss.detach()) - offsets[b]
                if not math.isfinite(trace[c, t]):
                    trace[c, t:] = math.nan  # the chain diverged: its estimate is nan, not a number
                    break
                # w <- (1 - eps*gamma/2) w + eps*gamma/2 w* - eps*nbeta/2 grad + sqrt(eps) xi
                with torch.no_grad():
                    for z in noise:
                        z.normal_(generator=gen)
                    torch._foreach_mul_(params, 1.0 - half_eps * s.gamma)
                    torch._foreach_add_(params, w_star, alpha=half_eps * s.gamma)
                    torch._foreach_add_(params, grads, alpha=-half_eps * nbeta)
                    torch._foreach_add_(params, noise, alpha=noise_std)
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, w_star, strict=True):
                p.copy_(p0)
    return trace


def llc_per_chain(trace: Tensor, init_loss: float, nbeta: float, burnin: int) -> Tensor:
    """n*beta * (mean loss of each chain's draws - L_n(w*)): [chains]."""
    return nbeta * (trace[:, burnin:].mean(dim=1) - init_loss)


def split_r_hat(draws: Tensor) -> float:
    """Split R-hat of draws [chains, m] (Gelman et al. 2013, BDA3 11.4): near 1 when every half
    chain samples the same distribution; well above 1 (say > 1.1) when they disagree."""
    m = draws.shape[1] // 2
    if m < 2:
        return math.nan
    halves = torch.cat([draws[:, :m], draws[:, -m:]]).double()  # [2*chains, m]
    within = halves.var(dim=1).mean()
    between = m * halves.mean(dim=1).var() if len(halves) > 1 else torch.tensor(0.0)
    if within <= 0:
        return math.nan
    var_plus = (m - 1) / m * within + between / m
    return float((var_plus / within).sqrt())


def drift(draws: Tensor, nbeta: float) -> float:
    """n*beta * (mean of the second half of the draws - mean of the first half), over chains:
    in units of lambda_hat, how far the chains were still moving while they were averaged."""
    m = draws.shape[1] // 2
    if m < 1:
        return math.nan
    return float(nbeta * (draws[:, -m:].mean() - draws[:, :m].mean()))


def estimate(loss_fn: LossFn, params: Sequence[Tensor], batches: Sequence[Batch], s: Settings) -> Estimate:
    """The LLC at the current `params`, from SGLD over `batches` (the whole train set, cut up).

    n, for n*beta, is the number of labels (a batch's loss is their mean): examples, or for a
    language model predicted tokens."""
    n = sum(by.numel() for _, by in batches)
    nbeta = s.nbeta if s.nbeta is not None else default_nbeta(n)
    at_w_star = batch_losses(loss_fn, batches)
    init_loss = mean_loss(at_w_star, batches)
    trace = sgld_trace(loss_fn, params, batches, s, nbeta, [v - init_loss for v in at_w_star])
    chains = llc_per_chain(trace, init_loss, nbeta, s.burnin)
    draws = trace[:, s.burnin:]
    return Estimate(llc=float(chains.mean()), llc_std=float(chains.std()) if len(chains) > 1 else math.nan,
                    per_chain=chains.tolist(), init_loss=init_loss, nbeta=nbeta, r_hat=split_r_hat(draws),
                    drift=drift(draws, nbeta), trace=trace)


def summary(rows: Sequence[dict], step: int, s: Settings, n: int) -> dict[str, object]:
    """The keys `analyze --llc` adds to summary.json: the estimate at `step` and the settings."""
    at = next(r for r in rows if r["step"] == step)
    return {"llc": at["llc"], "llc_std": at["llc_std"], "llc_r_hat": at["llc_r_hat"],
            "llc_drift": at["llc_drift"],
            "llc_diverged": [r["step"] for r in rows if r["llc"] is None],
            "llc_settings": {**s.as_dict(), "nbeta": s.nbeta if s.nbeta is not None else default_nbeta(n),
                             "n": n, "method": "SGLD, Lau et al. 2023 (arXiv:2308.12108)"}}
