"""The analysis summary of a copy-LM run (docs/measures.md, 'The LM summary'), read from its run store,
and the measurements that test Lv et al. 2024's claims from a run's metrics.

The LM trainer already computes every measure at each evaluation step (the `metrics` and `heads`
tables), so analysis only summarises: the last evaluation's copy accuracies (the paper's test,
`paper_copy_*`, is the headline; the hex test keeps its old keys), ICL score and losses, the
largest induction score per layer, and when things happened: the first step (and token count)
at which copy accuracy passed 50%, and at which each layer's largest induction score passed a
threshold, which shows whether heads form from shallow to deep; and when the loss flattened (the
paper: about 5B tokens, long before the copy surge at 15B), taken as the first evaluation by
which 90% of the run's drop in training loss was done.

The claims, each measured by a stated rule on the evaluation rows (steps are evaluation steps,
so their resolution is the evaluation schedule's; with `eval_schedule: log` it is coarse late in
a run):

- Claim 1 (`claim1`): copy accuracy surges long after the training loss has stabilised.
  Both curves are first smoothed by a centred running median over SMOOTH_EVALS evaluations. The
  loss is *stable* from the first evaluation after which the smoothed training loss (`train_loss`,
  on fixed windows) stays within LOSS_STABLE_TOL of its final smoothed value (never, if only the
  last evaluation does: the loss was still falling). Copy accuracy
  *surges* at the first evaluation where its smoothed value passes SURGE_LEVEL of its rise (from
  its lowest smoothed value before its peak to the peak), provided the rise is at least
  SURGE_MIN_RISE; the rise's width is the steps from 10% to 90% of it. The gap is surge minus
  stable, in steps and in tokens. Measured on the paper's test when the run has it, else the hex
  test; for exact-match and for per-token accuracy.
- Claim 2 (`surge_spread`, over several runs): copying arrives after a number of steps, not of
  tokens. Per batch size the mean surge point over seeds, then across batch sizes the
  coefficient of variation (population standard deviation / mean) of the surge in steps and in
  tokens. Steps explain it better when the CV in steps is at most half that in tokens; tokens
  when it is at least twice; otherwise neither.
- Claim 3 (`claim3`): induction heads form from shallow to deep layers. Per layer, the first
  evaluation at which its largest induction score A exceeds each of INDUCTION_THRESHOLDS, and the
  order of those steps over layers (Spearman's rank correlation of layer and step, where three or
  more layers crossed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from grokscope.store import Run, StoreError, read_run_config

INDUCTION_FORMED = 0.3  # a head's mean attention to the induction target (A) is 0.3+: clearly formed (chance ~0.02)
LOSS_FLAT = 0.9  # share of the run's training-loss drop after which the loss counts as flattened

SMOOTH_EVALS = 5  # running median over 5 evaluations: one noisy evaluation moves nothing, a step edge stays put
LOSS_STABLE_TOL = 0.05  # within 5% of the final loss: the paper's loss at 5B tokens is within a few % of its last
SURGE_LEVEL = 0.5  # the surge is where accuracy has made half its rise
SURGE_MIN_RISE = 0.1  # a rise of less than 0.1 (5 of 50 samples) is noise, not a surge
INDUCTION_THRESHOLDS = (0.1, 0.3)  # 0.1: five times chance, a head forming; 0.3: formed (INDUCTION_FORMED)
SPREAD_FACTOR = 2.0  # claim 2: the CV in one unit at most 1/2 of the other's names the unit that explains it

RULES = {
    "loss_stable": f"first evaluation after which the running median ({SMOOTH_EVALS} evaluations) of train_loss "
                   f"stays within {LOSS_STABLE_TOL:.0%} of its final value (none if only the last evaluation does)",
    "copy_surge": f"first evaluation where the running median ({SMOOTH_EVALS} evaluations) of copy accuracy passes "
                  f"{SURGE_LEVEL:.0%} of its rise (lowest value before the peak to the peak), if the rise is at "
                  f"least {SURGE_MIN_RISE}; rise_steps: from 10% to 90% of the rise",
    "induction": "first evaluation at which a layer's largest induction score A exceeds the threshold",
    "spread": f"coefficient of variation (population std / mean) across batch sizes of the per-batch-size mean "
              f"surge; 'steps' if cv_steps <= cv_tokens / {SPREAD_FACTOR:g}, 'tokens' if cv_steps >= "
              f"{SPREAD_FACTOR:g} * cv_tokens, else 'neither'",
}


def _first(m, column: str, above: float) -> dict[str, int] | None:
    if column not in m:
        return None
    hit = m.loc[m[column] > above]
    return None if hit.empty else {"step": int(hit["step"].iloc[0]), "tokens": int(hit["tokens"].iloc[0])}


def _loss_flattens(m) -> dict[str, int] | None:
    """First evaluation by which LOSS_FLAT of the drop from the first to the last training loss was done."""
    loss = m["train_loss"]
    drop = float(loss.iloc[0] - loss.iloc[-1])
    if not drop > 0:
        return None
    hit = m.loc[loss <= loss.iloc[0] - LOSS_FLAT * drop]
    return None if hit.empty else {"step": int(hit["step"].iloc[0]), "tokens": int(hit["tokens"].iloc[0])}


def _f(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


# ------------------------------------------------------------------------------ rules on curves
def smooth(y: Iterable[float], window: int = SMOOTH_EVALS) -> np.ndarray:
    """Centred running median over `window` points (fewer at the ends); NaNs are skipped."""
    return pd.Series(np.asarray(y, dtype=float)).rolling(window, center=True, min_periods=1).median().to_numpy()


def stable_index(loss: Iterable[float], tol: float = LOSS_STABLE_TOL, window: int = SMOOTH_EVALS) -> int | None:
    """Index of the first point after which the smoothed loss stays within `tol` (relative) of its last value.

    None when only the last point qualifies: a loss still falling at the end never stabilised in the run.
    """
    s = smooth(loss, window)
    if len(s) == 0 or not np.isfinite(s[-1]):
        return None
    off = ~(np.abs(s - s[-1]) <= tol * abs(s[-1]))  # NaN counts as off
    bad = np.flatnonzero(off)
    first = 0 if len(bad) == 0 else int(bad[-1]) + 1
    return first if first < len(s) - 1 or len(s) == 1 else None


def surge(acc: Iterable[float], level: float = SURGE_LEVEL, min_rise: float = SURGE_MIN_RISE,
          window: int = SMOOTH_EVALS) -> dict[str, Any] | None:
    """The surge of an accuracy curve: {index, i10, i90, low, high} (indices into the curve), or None.

    low is the smoothed curve's minimum before its peak, high the peak; the surge is the first
    point at or past low + level * (high - low); i10 and i90 the first at 10% and 90% of the rise.
    """
    full = smooth(acc, window)
    idx = np.flatnonzero(np.isfinite(full))  # rows without the measure (logged before it existed) are skipped
    if len(idx) == 0:
        return None
    s = full[idx]
    top = int(np.argmax(s))
    bottom = int(np.argmin(s[:top + 1]))
    low, high = float(s[bottom]), float(s[top])
    if not high - low >= min_rise:
        return None
    at = {q: int(idx[bottom + np.argmax(s[bottom:] >= low + q * (high - low))]) for q in (0.1, level, 0.9)}
    return {"index": at[level], "i10": at[0.1], "i90": at[0.9], "low": low, "high": high}


def _event(m: pd.DataFrame, i: int | None) -> dict[str, int] | None:
    return None if i is None else {"step": int(m["step"].iloc[i]), "tokens": int(m["tokens"].iloc[i])}


def copy_column(m: pd.DataFrame) -> str:
    """The copy test the claims read: the paper's where the run has it, else the hex test."""
    return "pcopy_acc" if "pcopy_acc" in m and m["pcopy_acc"].notna().any() else "copy_acc"


def copy_surge(m: pd.DataFrame, column: str) -> dict[str, Any] | None:
    """The surge of a metrics column as {step, tokens, rise_steps, from, to}, or None."""
    if column not in m:
        return None
    hit = surge(m[column])
    if hit is None:
        return None
    steps = m["step"].to_numpy()
    return {**_event(m, hit["index"]), "rise_steps": int(steps[hit["i90"]] - steps[hit["i10"]]),
            "from": hit["low"], "to": hit["high"]}


def claim1(m: pd.DataFrame) -> dict[str, Any]:
    """Loss stabilisation, the copy surge (exact and per token) and the gaps between them."""
    col = copy_column(m)
    stable = _event(m, stable_index(m["train_loss"])) if "train_loss" in m else None
    exact, token = copy_surge(m, col), copy_surge(m, col.replace("_acc", "_token_acc"))

    def gap(hit: dict[str, Any] | None, unit: str) -> int | None:
        return None if hit is None or stable is None else hit[unit] - stable[unit]

    return {"copy_column": col, "loss_stable": stable, "copy_surge": exact, "copy_token_surge": token,
            "gap_steps": gap(exact, "step"), "gap_tokens": gap(exact, "tokens"),
            "token_gap_steps": gap(token, "step"), "token_gap_tokens": gap(token, "tokens"),
            "rules": {k: RULES[k] for k in ("loss_stable", "copy_surge")}}


def _ranks(x: list[float]) -> np.ndarray:
    return pd.Series(x).rank().to_numpy()  # ties get their mean rank


def layer_order(steps: list[int | None]) -> dict[str, Any]:
    """How the crossing steps of layers 0..n-1 (None = never) are ordered over depth."""
    hit = [(layer, s) for layer, s in enumerate(steps) if s is not None]
    out: dict[str, Any] = {"layers_crossed": [layer for layer, _ in hit], "spearman": None}
    if len(hit) < 2:
        out["order"] = "fewer than two layers crossed"
        return out
    s = [st for _, st in hit]
    if len(set(s)) == 1:
        out["order"] = "simultaneous"
    elif all(a <= b for a, b in zip(s, s[1:], strict=False)):
        out["order"] = "shallow_to_deep"
    elif all(a >= b for a, b in zip(s, s[1:], strict=False)):
        out["order"] = "deep_to_shallow"
    else:
        out["order"] = "mixed"
    if len(hit) >= 3 and len(set(s)) > 1:
        out["spearman"] = float(np.corrcoef(_ranks([layer for layer, _ in hit]), _ranks(s))[0, 1])
    return out


def claim3(m: pd.DataFrame, n_layers: int, thresholds: Iterable[float] = INDUCTION_THRESHOLDS) -> dict[str, Any]:
    """Per threshold, per layer the first evaluation whose largest induction score exceeds it, and their order."""
    out: dict[str, Any] = {"rule": RULES["induction"], "thresholds": {}}
    for th in thresholds:
        formed = [_first(m, f"induction_l{layer}", th) for layer in range(n_layers)]
        out["thresholds"][f"{th:g}"] = {"formed": formed,
                                        **layer_order([None if f is None else f["step"] for f in formed])}
    return out


# ------------------------------------------------------------------------------ claim 2
def _cv(x: list[float]) -> float | None:
    if len(x) < 2 or not np.mean(x) > 0:
        return None
    return float(np.std(x) / np.mean(x))


def surge_spread(points: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Claim 2 over runs: each point {batch_size, seed, surge: {step, tokens} | None, last_step}.

    Per batch size: the runs, how many surged, the mean surge step and tokens over those, and the
    seeds' CV of the surge step. Across batch sizes, the CV of those means in steps and in tokens
    (only when every batch size has a surge in every seed; otherwise `censored` lists the runs
    without one: their surge, if any, lies past `last_step`), and the verdict by RULES["spread"].
    """
    by_b: dict[int, list[Mapping[str, Any]]] = {}
    for p in points:
        by_b.setdefault(int(p["batch_size"]), []).append(p)
    rows, censored = [], []
    for b in sorted(by_b):
        hits = [p["surge"] for p in by_b[b] if p.get("surge")]
        censored += [{"batch_size": b, "seed": p.get("seed"), "last_step": p.get("last_step")}
                     for p in by_b[b] if not p.get("surge")]
        rows.append({"batch_size": b, "runs": len(by_b[b]), "surged": len(hits),
                     "mean_step": float(np.mean([h["step"] for h in hits])) if hits else None,
                     "mean_tokens": float(np.mean([h["tokens"] for h in hits])) if hits else None,
                     "seed_cv_steps": _cv([h["step"] for h in hits])})
    out: dict[str, Any] = {"batch_sizes": rows, "censored": censored, "cv_steps": None, "cv_tokens": None,
                           "verdict": None, "rule": RULES["spread"]}
    if len(rows) >= 2 and not censored:
        out["cv_steps"] = _cv([r["mean_step"] for r in rows])
        out["cv_tokens"] = _cv([r["mean_tokens"] for r in rows])
        cs, ct = out["cv_steps"], out["cv_tokens"]
        if cs is not None and ct is not None:
            out["verdict"] = ("steps" if cs * SPREAD_FACTOR <= ct else "tokens" if cs >= SPREAD_FACTOR * ct
                              else "neither")
    return out


EVENTS = ("copy", "copy_token", "induction")


def run_events(m: pd.DataFrame) -> dict[str, dict[str, int] | None]:
    """The events claim 2 compares across runs: the copy surge (exact, per token) and the first
    evaluation with a head's induction score above INDUCTION_FORMED."""
    col = copy_column(m)
    hits = {"copy": copy_surge(m, col), "copy_token": copy_surge(m, col.replace("_acc", "_token_acc")),
            "induction": _first(m, "induction_max", INDUCTION_FORMED)}
    return {k: None if v is None else {"step": v["step"], "tokens": v["tokens"]} for k, v in hits.items()}


def batch_size_spread(run_dirs: Iterable[str | Path]) -> dict[str, Any]:
    """Claim 2 from run folders (a copy-batch-size sweep's trials): `surge_spread` of each event.

    A folder that is not a run (no run.json), such as a sweep's own files, is skipped. The batch
    size is the global one of a step (train.batch_size * train.grad_accum).
    """
    points: dict[str, list[dict[str, Any]]] = {e: [] for e in EVENTS}
    runs = []
    for d in run_dirs:
        run = Run(d)
        if not run.info_path.is_file():
            continue
        cfg = read_run_config(run)
        m = run.metrics()
        if m.empty or "copy_acc" not in m:
            continue
        b = (cfg.train.batch_size or 8) * cfg.train.grad_accum
        ev = run_events(m)
        runs.append({"run": str(run.path), "batch_size": b, "seed": cfg.seed, "last_step": int(m["step"].iloc[-1]),
                     **{e: ev[e] for e in EVENTS}})
        for e in EVENTS:
            points[e].append({"batch_size": b, "seed": cfg.seed, "surge": ev[e], "last_step": int(m["step"].iloc[-1])})
    if not runs:
        raise StoreError("no LM runs with metrics among the folders given")
    return {"runs": runs, **{e: surge_spread(points[e]) for e in EVENTS}}


# ------------------------------------------------------------------------------ the summary
def analyze_lm_run(run_dir: str | Path, step: int | None = None, write: bool = False) -> dict[str, Any]:
    """Summary dict of an LM run; with write=True also saved as analysis/summary.json.

    step: summarise the history up to this step (the last evaluation at or before it);
    default the whole run. A step outside the run (before its first evaluation or past its last
    checkpoint) is a StoreError naming the steps it has, not a quiet summary of its last step.
    """
    run = Run(run_dir).require()
    m = run.metrics()
    if "copy_acc" not in m or m.empty:
        raise StoreError(f"{str(run.path)!r} has no LM metrics yet; train it first with `grokscope train`")
    heads = run.metrics("heads")
    if step is not None:
        steps = run.checkpoint_steps()
        lo, hi = int(m["step"].iloc[0]), max(steps[-1] if steps else 0, int(m["step"].iloc[-1]))
        if not lo <= step <= hi:
            raise StoreError(f"{str(run.path)!r} has no step {step}; it has steps {lo}..{hi}")
        m, heads = m[m["step"] <= step], heads[heads["step"] <= step]
    last = m.iloc[-1]
    step = int(last["step"])
    at_last = heads[heads["step"] == step]
    n_layers = int(heads["layer"].max()) + 1
    per_layer = at_last.groupby("layer")
    paper = "pcopy_acc" in m

    def last_of(column: str) -> float | None:
        return _f(last[column]) if column in m else None

    summary: dict[str, Any] = {
        "kind": "lm",
        "step": step,
        "tokens": int(last["tokens"]),
        "train_loss": _f(last["train_loss"]),
        "val_loss": _f(last["val_loss"]),
        "paper_copy_accuracy": last_of("pcopy_acc"),
        "paper_copy_token_accuracy": last_of("pcopy_token_acc"),
        "paper_copy_loss": last_of("pcopy_loss"),
        "best_paper_copy_accuracy": _f(m["pcopy_acc"].max()) if paper else None,
        "paper_copy_50": _first(m, "pcopy_acc", 0.5),
        "copy_accuracy": _f(last["copy_acc"]),
        "copy_token_accuracy": _f(last["copy_token_acc"]),
        "copy_loss": _f(last["copy_loss"]),
        "random_copy_accuracy": _f(last["rcopy_acc"]),
        "random_copy_token_accuracy": _f(last["rcopy_token_acc"]),
        "icl_score": _f(last["icl_score"]),
        "repeat_gain": _f(last["repeat_gain"]) if "repeat_gain" in m else None,
        "induction_score": [float(per_layer["induction"].max()[layer]) for layer in range(n_layers)],
        "prefix_matching_score": [float(per_layer["prefix_matching"].max()[layer]) for layer in range(n_layers)],
        "previous_token_score": [float(per_layer["previous_token"].max()[layer]) for layer in range(n_layers)],
        "best_copy_accuracy": _f(m["copy_acc"].max()),
        "copy_50": _first(m, "copy_acc", 0.5),
        "induction_formed": [_first(m, f"induction_l{layer}", INDUCTION_FORMED) for layer in range(n_layers)],
        "induction_threshold": INDUCTION_FORMED,
        "loss_flattens": _loss_flattens(m),
        "claim1": claim1(m),
        "claim3": claim3(m, n_layers),
        "claim2_events": run_events(m),
    }
    if write:
        run.write_summary(summary)
    return summary
