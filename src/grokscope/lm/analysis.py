"""The analysis summary of a copy-LM run (docs/measures.md, 'The LM summary'), read from its run store.

The LM trainer already computes every measure at each evaluation step (the `metrics` and `heads`
tables), so analysis only summarises: the last evaluation's copy accuracy (exact match and per
token), ICL score and losses, the largest induction score per layer, and when things happened:
the first step (and token count) at which copy accuracy passed 50%, and at which each layer's
largest induction score passed a threshold, which shows whether heads form from shallow to deep;
and when the loss flattened (the paper: about 5B tokens, long before the copy surge at 15B),
taken as the first evaluation by which 90% of the run's drop in training loss was done.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from grokscope.store import Run, StoreError

INDUCTION_FORMED = 0.3  # a head's mean attention to the induction target (A) is 0.3+: clearly formed (chance ~0.02)
LOSS_FLAT = 0.9  # share of the run's training-loss drop after which the loss counts as flattened


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
    summary: dict[str, Any] = {
        "kind": "lm",
        "step": step,
        "tokens": int(last["tokens"]),
        "train_loss": _f(last["train_loss"]),
        "val_loss": _f(last["val_loss"]),
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
    }
    if write:
        run.write_summary(summary)
    return summary
