"""Forecast the grokking epoch from the curves up to an epoch.

Nanda et al. 2023 close by naming the prediction of the phase transition as open. This module predicts
T, the first evaluated epoch at which test accuracy passes 99% (`grok_epoch_99`), from what a
run has logged up to an epoch t < T, and scores that forecast against a naive baseline.

The forecast. Write f = t / T for the fraction of the time to grok that has passed. A ridge
regression predicts y = ln((T - t) / t) = ln(1/f - 1) from scale-free features of the curves up
to t, so that short and long runs share one model, and T_hat = t (1 + e^y_hat). The features
(`features`) are log-log slopes over the last half of the elapsed epochs [t/2, t], and how far a
curve has come from its peak:
- the cheap metrics (every `eval_every`): test loss (its slope over [t/2, t] and over [t/4, t/2],
  and its distance below its peak), the sum of squared weights (slope, distance below peak);
- the progress measures (every checkpoint): the slopes of Gini(W_E), Gini(W_L), the
  model-independent excluded loss (`excluded_loss_max`) and, where analysis computed it, the
  local learning coefficient (`llc`);
- the baseline's own answer, as one more feature.
Only rows with epoch <= t are read (`upto`). The training examples are the other runs, each
sampled at the fractions `TRAIN_FRACTIONS` of its own grokking epoch. The penalty is chosen by
leave-one-run-out over the training runs, and the interval is the 10%-90% quantiles of those
leave-one-run-out residuals of y, so it is as wide as the forecast's error on runs it has not
seen.

What is left out, and why. The stored restricted and excluded losses are computed with the key
frequencies of the run's *final* checkpoint (analysis/progress.py), so at an earlier epoch they
carry information from the future: at epoch 2,000 the mainline's W_L singles out only frequency
1 of its final [1, 8, 21], and its restricted loss is 3.1 with the final keys but 4.2 with the
keys known at 2,000 (at 4,000: [1, 21], 2.0 against 2.7). `leaky=True` adds them anyway, to
measure what knowing the circuit would be worth; the honest forecast never uses them.

The baseline (`baseline`): fit ln(test loss) linearly in the epoch over [t/2, t] and extrapolate
to `loss_at_grok`, the median over the training runs of the test loss at their grokking epoch
(a run whose fitted loss is not falling gets no forecast: +inf). The backtest also scores the
prior: the training runs' median grokking epoch, which reads nothing of the run.

Plain functions over pandas DataFrames: no I/O (the store reads the runs, the report draws).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

GROK_ACC = 0.99  # the forecast's target: the first evaluated epoch with test accuracy above 99%
WINDOW = 0.5  # slopes are fitted over [WINDOW * t, t]: the last half of the elapsed epochs
MIN_CHECKPOINTS = 3  # a forecast needs this many analysed checkpoints in (0, t]
# each training run is sampled at these fractions of its grokking epoch (every run weighs the same)
TRAIN_FRACTIONS = tuple(round(f, 2) for f in np.arange(0.15, 0.951, 0.05))
BACKTEST_FRACTIONS = (0.25, 0.5, 0.75)  # the "25%, 50%, 75% of the time to grok"
LAMBDAS = (0.001, 0.01, 0.1, 1.0, 10.0)  # ridge penalties (per example, on standardised features) tried by LORO
QUANTILES = (0.1, 0.9)  # the interval: an 80% band of the leave-one-run-out residuals
Y_CAP = 4.0  # y = ln((T - t)/t) is clipped to [-4, 4]: from 2% to 55x the elapsed time still to go

# progress columns whose log-log slope over [t/2, t] is a feature, where the run has them (llc: `analyze --llc`)
SLOPES = ("gini_W_E", "gini_W_L", "excluded_loss_max", "llc")
# the stored key-frequency measures: they use the final checkpoint's keys, so they peek (leaky=True only)
LEAKY = ("restricted_loss_test", "excluded_loss")


class ForecastError(ValueError):
    """A forecast that cannot be made from what was given (one line, for the user)."""


@dataclass(frozen=True)
class Curves:
    """One run's curves: everything the forecast reads.

    metrics: the cheap metrics (epoch, test_loss, test_acc, weight_norm, ...), sorted by epoch.
    progress: one row per analysed checkpoint (epoch, gini_W_E, gini_W_L, excluded_loss_max, ...,
    and `llc` where computed), sorted by epoch.
    setup: what makes two runs the same run (config without its length); a run is never trained on
    a run with its own setup, e.g. the mainline and the seed-0 run of the seeds sweep.
    """

    name: str
    metrics: pd.DataFrame
    progress: pd.DataFrame
    group: str = ""
    setup: str = ""

    @property
    def grok_epoch(self) -> float | None:
        """The first evaluated epoch with test accuracy above GROK_ACC, or None."""
        return grok_epoch(self.metrics)

    @property
    def last_epoch(self) -> float:
        return float(self.metrics["epoch"].max()) if len(self.metrics) else 0.0

    @cached_property
    def _arrays(self) -> dict[tuple[str, str], np.ndarray]:
        return {}

    def column(self, table: str, col: str) -> np.ndarray | None:
        """A column of "metrics" or "progress" as float64 (None -> nan), or None if the table has none."""
        key = (table, col)
        if key not in self._arrays:
            df = getattr(self, table)
            self._arrays[key] = np.asarray(df[col], dtype=float) if col in df else None
        return self._arrays[key]


@dataclass(frozen=True)
class Model:
    """A fitted forecaster: ridge coefficients on standardised features, and its interval."""

    names: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    lam: float
    resid_lo: float  # residual quantiles of y (leave-one-run-out): the interval
    resid_hi: float
    loss_at_grok: float  # the baseline's target test loss
    runs: tuple[str, ...]  # the training runs
    loro_mae: float  # mean |residual| of y under leave-one-run-out, at lam


@dataclass(frozen=True)
class Forecast:
    """A forecast made at epoch `at`: the grokking epoch, its interval, and the baseline's answer."""

    at: float
    epoch: float
    low: float
    high: float
    baseline: float  # +inf when the baseline's fitted test loss is not falling
    features: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ curves
def grok_epoch(metrics: pd.DataFrame) -> float | None:
    """The first epoch with test accuracy above GROK_ACC (as `train.trainer.grok_epochs`), or None."""
    if "test_acc" not in metrics or not len(metrics):
        return None
    hit = metrics.loc[metrics["test_acc"] > GROK_ACC, "epoch"]
    return float(hit.min()) if len(hit) else None


def upto(c: Curves, t: float) -> Curves:
    """The run as it stood at epoch t: only rows with epoch <= t. Every feature reads this view."""
    return Curves(c.name, c.metrics[c.metrics["epoch"] <= t], c.progress[c.progress["epoch"] <= t], c.group, c.setup)


def check_at(c: Curves, t: float) -> None:
    """Raise ForecastError unless a forecast at epoch t can be made from c."""
    if not len(c.metrics):
        raise ForecastError(f"{c.name} has no metrics rows")
    if not 0 < t <= c.last_epoch:
        raise ForecastError(f"epoch {t:g} is outside {c.name}, whose metrics run from epoch "
                            f"{c.metrics['epoch'].min():g} to {c.last_epoch:g}")
    g = grok_epoch(upto(c, t).metrics)
    if g is not None:
        raise ForecastError(f"{c.name} already passed {GROK_ACC:.0%} test accuracy at epoch {g:g}; "
                            f"forecast at an epoch before that (--at)")
    e = c.progress["epoch"].to_numpy(float)
    n = int(((e > 0) & (e <= t)).sum())
    if n < MIN_CHECKPOINTS:
        raise ForecastError(f"{c.name} has {n} analysed checkpoint(s) in (0, {t:g}]; a forecast needs "
                            f"{MIN_CHECKPOINTS}: forecast later, or analyse a run with more checkpoints")
    last = e[e <= t].max()
    if t - last > 2 * np.median(np.diff(e)):  # the run trained on after its analysis
        raise ForecastError(f"{c.name}'s analysis reaches epoch {last:g} only; rerun `grokscope analyze` "
                            f"on it, or forecast at an analysed epoch (--at {last:g})")


# ------------------------------------------------------------------------------------ features
def _positive(c: Curves, table: str, col: str, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """(ln epoch, ln value) for the rows of `table` with lo <= epoch <= hi, epoch > 0 and a finite
    positive value: every feature reads the curves through here, bounded by hi = t."""
    e, v = c.column(table, "epoch"), c.column(table, col)
    if e is None or v is None:
        return np.empty(0), np.empty(0)
    ok = (e >= lo) & (e <= hi) & (e > 0) & np.isfinite(v) & (v > 0)
    return np.log(e[ok]), np.log(v[ok])


def slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y on x; nan with fewer than two distinct x."""
    if len(x) < 2 or np.ptp(x) == 0:
        return math.nan
    xc = x - x.mean()
    return float(xc @ (y - y.mean()) / (xc @ xc))


def log_slope(c: Curves, table: str, col: str, lo: float, hi: float) -> float:
    """d ln(col) / d ln(epoch) over lo <= epoch <= hi."""
    return slope(*_positive(c, table, col, lo, hi))


def from_peak(c: Curves, table: str, col: str, t: float) -> float:
    """ln(value at the last row <= t) - ln(its largest value up to t): how far it has come down."""
    _, v = _positive(c, table, col, 0.0, t)
    return float(v[-1] - v.max()) if len(v) else math.nan


def available(c: Curves, leaky: bool = False) -> list[str]:
    """The feature names this run's tables can give."""
    names = ["test_loss_slope", "test_loss_slope_before", "test_loss_from_peak", "weight_norm_slope",
             "weight_norm_from_peak", "baseline"]
    names += [f"{col}_slope" for col in SLOPES if col in c.progress and c.progress[col].notna().any()]
    if leaky:
        names += [f"{col}_{kind}" for col in LEAKY if col in c.progress for kind in ("slope", "level")]
    return names


def features(c: Curves, t: float, loss_at_grok: float, leaky: bool = False) -> dict[str, float]:
    """The forecast's features at epoch t, from rows with epoch <= t only (nan where a curve is too short).
    Every read below is bounded by t (`_positive`, `baseline`): the same as reading `upto(c, t)`."""
    lo = WINDOW * t
    out = {
        "test_loss_slope": log_slope(c, "metrics", "test_loss", lo, t),
        "test_loss_slope_before": log_slope(c, "metrics", "test_loss", WINDOW * lo, lo),
        "test_loss_from_peak": from_peak(c, "metrics", "test_loss", t),
        "weight_norm_slope": log_slope(c, "metrics", "weight_norm", lo, t),
        "weight_norm_from_peak": from_peak(c, "metrics", "weight_norm", t),
        "baseline": log_ratio(baseline(c, t, loss_at_grok), t),
    }
    for col in SLOPES:
        if col in c.progress:
            out[f"{col}_slope"] = log_slope(c, "progress", col, lo, t)
    if leaky:
        for col in LEAKY:
            if col in c.progress:
                out[f"{col}_slope"] = log_slope(c, "progress", col, lo, t)
                _, v = _positive(c, "progress", col, 0.0, t)
                out[f"{col}_level"] = float(v[-1]) if len(v) else math.nan
    return out


def log_ratio(epoch: float, t: float) -> float:
    """y = ln((epoch - t) / t), clipped to [-Y_CAP, Y_CAP] (+inf, "never", becomes Y_CAP)."""
    if not epoch > t:
        return -Y_CAP
    return float(np.clip(math.log((epoch - t) / t), -Y_CAP, Y_CAP)) if math.isfinite(epoch) else Y_CAP


def from_ratio(y: float, t: float) -> float:
    """The epoch that y = ln((epoch - t)/t) names."""
    return t * (1.0 + math.exp(y))


# ------------------------------------------------------------------------------------ baseline
def loss_at_grok(runs: Sequence[Curves]) -> float:
    """The median over runs of the test loss at their grokking epoch: the baseline's target."""
    vals = []
    for c in runs:
        g = c.grok_epoch
        if g is not None:
            row = c.metrics[c.metrics["epoch"] == g]
            vals.append(float(row["test_loss"].iloc[0]))
    if not vals:
        raise ForecastError("none of the training runs grokked: nothing to fit the forecast on")
    return float(np.exp(np.median(np.log(vals))))


def baseline(c: Curves, t: float, target_loss: float) -> float:
    """The naive forecast: ln(test loss) fitted linearly in the epoch over [t/2, t], extrapolated
    to target_loss. +inf when the fitted loss is not falling; t when it is already below target."""
    e, y = _positive(c, "metrics", "test_loss", WINDOW * t, t)
    e = np.exp(e)  # linear in the epoch
    b = slope(e, y)
    if not b < 0:
        return math.inf
    now = y.mean() + b * (t - e.mean())  # the fitted ln loss at t
    return t + max(0.0, (math.log(target_loss) - now) / b)


# ------------------------------------------------------------------------------------ fitting
def examples(runs: Sequence[Curves], names: Sequence[str], target_loss: float, leaky: bool = False,
             fractions: Sequence[float] = TRAIN_FRACTIONS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training rows (X [n, k], y [n], run index [n]): each grokked run at `fractions` of its grok epoch."""
    X, y, g = [], [], []
    for i, c in enumerate(runs):
        T = c.grok_epoch
        if T is None:
            continue
        e = c.column("progress", "epoch")
        for f in fractions:
            t = f * T
            n = int(((e > 0) & (e <= t)).sum())
            if n < MIN_CHECKPOINTS:
                continue
            feats = features(c, t, target_loss, leaky)
            X.append([feats.get(k, math.nan) for k in names])
            y.append(math.log((T - t) / t))
            g.append(i)
    return np.asarray(X, float).reshape(len(X), len(names)), np.asarray(y, float), np.asarray(g, int)


def _ridge(X: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(mean, scale, coef, intercept) of ridge regression on standardised X; nan features count as the mean."""
    mean = np.nanmean(X, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    Z = np.where(np.isfinite(X), X, mean) - mean
    scale = Z.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    Z = Z / scale
    n, k = Z.shape
    coef = np.linalg.solve(Z.T @ Z + lam * n * np.eye(k), Z.T @ (y - y.mean()))
    return mean, scale, coef, float(y.mean())


def _apply(X: np.ndarray, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray, intercept: float) -> np.ndarray:
    Z = (np.where(np.isfinite(X), X, mean) - mean) / scale
    return np.clip(intercept + Z @ coef, -Y_CAP, Y_CAP)


def _loro(X: np.ndarray, y: np.ndarray, g: np.ndarray, lam: float) -> np.ndarray:
    """Leave-one-run-out residuals of y (each run predicted by a fit on the others)."""
    r = np.empty_like(y)
    for run in np.unique(g):
        out = g == run
        r[out] = y[out] - _apply(X[out], *_ridge(X[~out], y[~out], lam))
    return r


def fit(runs: Sequence[Curves], names: Sequence[str] | None = None, leaky: bool = False,
        lambdas: Sequence[float] = LAMBDAS) -> Model:
    """Fit the forecaster on grokked runs (at least 3); `names` defaults to the features all of them have."""
    grokked = [c for c in runs if c.grok_epoch is not None]
    if len(grokked) < 3:
        raise ForecastError(f"the forecast is fitted on other grokked, analysed runs and needs at least 3; "
                            f"got {len(grokked)}")
    if names is None:
        names = common_features(grokked, leaky)
    target = loss_at_grok(grokked)
    X, y, g = examples(grokked, names, target, leaky)
    if len(np.unique(g)) < 3:
        raise ForecastError("fewer than 3 training runs have enough analysed checkpoints before they grok")
    scores = {lam: float(np.mean(np.abs(_loro(X, y, g, lam)))) for lam in lambdas}
    lam = min(scores, key=lambda k: (scores[k], -k))  # ties go to the stronger penalty
    resid = _loro(X, y, g, lam)
    mean, scale, coef, intercept = _ridge(X, y, lam)
    lo, hi = np.quantile(resid, QUANTILES)
    return Model(tuple(names), mean, scale, coef, intercept, lam, float(lo), float(hi), target,
                 tuple(c.name for c in grokked), scores[lam])


def common_features(runs: Sequence[Curves], leaky: bool = False) -> list[str]:
    """The features every one of `runs` can give, in a fixed order."""
    sets = [available(c, leaky) for c in runs]
    return [k for k in sets[0] if all(k in s for s in sets[1:])]


def predict(model: Model, c: Curves, t: float) -> Forecast:
    """The forecast for run c at epoch t (after `check_at`), from rows with epoch <= t only."""
    check_at(c, t)
    feats = features(c, t, model.loss_at_grok, leaky=any(k.endswith("_level") for k in model.names))
    x = np.array([[feats.get(k, math.nan) for k in model.names]])
    y = float(_apply(x, model.mean, model.scale, model.coef, model.intercept)[0])
    return Forecast(t, from_ratio(y, t), from_ratio(max(-Y_CAP, y + model.resid_lo), t),
                    from_ratio(min(Y_CAP, y + model.resid_hi), t), baseline(c, t, model.loss_at_grok), feats)


# ------------------------------------------------------------------------------------ backtest
def backtest(runs: Sequence[Curves], fractions: Sequence[float] = BACKTEST_FRACTIONS,
             leaky: bool = False) -> list[dict]:
    """Forecast each grokked run at `fractions` of its grokking epoch from a model fitted on the
    *other* runs (never one with its own `setup`); one row per (run, fraction) with the errors of
    the forecast, of the baseline, and of the prior (the training runs' median grokking epoch, or t
    if that has passed: what one would guess without reading the run). The features are those
    every run has."""
    grokked = [c for c in runs if c.grok_epoch is not None]
    names = common_features(grokked, leaky)
    rows = []
    for c in grokked:
        others = [o for o in grokked if o.name != c.name and not (c.setup and o.setup == c.setup)]
        model = fit(others, names, leaky)
        prior_T = float(np.median([o.grok_epoch for o in others]))
        T = c.grok_epoch
        for f in fractions:
            t = f * T
            try:
                fc = predict(model, c, t)
            except ForecastError:  # too few checkpoints that early
                continue
            base = min(fc.baseline, from_ratio(Y_CAP, t))  # "never" scored as the longest forecast
            prior = max(t, prior_T)
            rows.append({"run": c.name, "group": c.group, "grok_epoch": T, "fraction": f, "at": t,
                         "forecast": fc.epoch, "low": fc.low, "high": fc.high, "inside": fc.low <= T <= fc.high,
                         "abs_err": abs(fc.epoch - T), "rel_err": abs(fc.epoch - T) / T,
                         "baseline": fc.baseline, "baseline_never": not math.isfinite(fc.baseline),
                         "baseline_abs_err": abs(base - T), "baseline_rel_err": abs(base - T) / T,
                         "prior": prior, "prior_abs_err": abs(prior - T), "prior_rel_err": abs(prior - T) / T,
                         "lam": model.lam, "n_train": len(model.runs)})
    return rows


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Per fraction: the median and mean relative error and the median absolute error of the forecast,
    of the baseline and of the prior, the interval's coverage, how often the baseline gave no
    forecast, and how often the forecast was closer than each."""
    df = pd.DataFrame(rows)
    out = []
    for f, d in df.groupby("fraction"):
        out.append({"fraction": float(f), "n": len(d),
                    "median_abs_err": float(d["abs_err"].median()), "median_rel_err": float(d["rel_err"].median()),
                    "mean_rel_err": float(d["rel_err"].mean()), "coverage": float(d["inside"].mean()),
                    "baseline_median_abs_err": float(d["baseline_abs_err"].median()),
                    "baseline_median_rel_err": float(d["baseline_rel_err"].median()),
                    "baseline_mean_rel_err": float(d["baseline_rel_err"].mean()),
                    "baseline_never": int(d["baseline_never"].sum()),
                    "prior_median_abs_err": float(d["prior_abs_err"].median()),
                    "prior_median_rel_err": float(d["prior_rel_err"].median()),
                    "forecast_better": float((d["abs_err"] < d["baseline_abs_err"]).mean()),
                    "forecast_better_than_prior": float((d["abs_err"] < d["prior_abs_err"]).mean())})
    return out
