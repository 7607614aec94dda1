"""Locate the three phases of grokking from the progress curves (Nanda et al. 2023, Section 5.2).

Memorisation (train and excluded loss fall, test flat), circuit formation (excluded loss rises,
weight norm falls, restricted loss falls, test flat), cleanup (test loss drops suddenly and the
sum of squared weights sharply drops, while the Gini coefficients rise). Two rules, each stated
once in its text (`RULE`, `RULE_TEST_LOSS`) and written into summary.json beside its phases.

The paper's (`rule="weight_norm"`, the default): memorisation and the start of cleanup as below;
cleanup ends when the sharp fall of the weight norm is over -- the first checkpoint after its
fastest fall where log10(weight norm), smoothed over `SMOOTH` checkpoints, falls at less than
`FLAT_FRAC` of that fastest rate. Weight decay keeps shrinking the weights slowly for ever, so
"stops falling" has to be relative to the sharp fall. When the fall has not slowed by the last
checkpoint, cleanup ends there and the evidence says so.

The test-loss rule (`rule="test_loss"`): cleanup ends when test loss plateaus, which comes earlier:

1. cleanup is the 10%-90% fall of log10(test loss). Let g be the checkpoint interval where log
   test loss falls fastest, hi the highest log test loss between the first excluded-loss minimum
   before g and g, and lo the lowest log test loss after g. Cleanup starts at the first
   checkpoint (from hi on) where log test loss is below hi - 10% (hi - lo), and ends at the first
   where it is below lo + 10% (hi - lo): the usual rise-time convention, on a log scale because
   the loss spans decades. No cleanup when hi - lo < MIN_DROP decades.
2. memorisation is [0, m] with m the checkpoint of lowest excluded loss before cleanup starts:
   while memorising, excluded loss tracks train loss down; once the Fourier circuit forms it rises.
3. circuit formation is [m, cleanup start] (or [m, last checkpoint] without cleanup), provided
   excluded loss rose by at least MIN_RISE decades over it; otherwise the run formed no circuit
   and the phase is null.
Boundaries are epochs of checkpoints, so they are exact to the checkpoint cadence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

START_FRAC = 0.1  # cleanup starts once 10% of the (log) test-loss drop is done
END_FRAC = 0.9  # ...and ends once 90% is done
MIN_DROP = 0.5  # decades: a test-loss fall smaller than ~3x is not a cleanup
MIN_RISE = 0.1  # decades: excluded loss must rise ~25% for circuit formation
SMOOTH = 5  # checkpoints in the moving average of the weight norm's slope
FLAT_FRAC = 0.1  # cleanup ends once the weight norm falls at under 10% of its fastest rate
PHASE_RULES = ("weight_norm", "test_loss")

RULE_TEST_LOSS = (
    "cleanup = the 10%-90% fall of log10(test loss) between its highest value after the "
    "excluded-loss minimum and its lowest value after the steepest fall (null if it falls less "
    f"than {MIN_DROP} decades); memorization = [0, epoch of the lowest excluded loss (train, key "
    "frequencies removed) before cleanup]; circuit_formation = [end of memorization, start of "
    f"cleanup or last checkpoint], null unless excluded loss rose >= {MIN_RISE} decades over it. "
    "Epochs are those of checkpoints."
)
RULE = (
    "memorization = [0, epoch of the lowest excluded loss before cleanup]; cleanup starts once 10% of "
    "the fall of log10(test loss) after the excluded-loss minimum is done (null if it falls less than "
    f"{MIN_DROP} decades) and ends when the sharp fall of the weight norm is over: the first checkpoint "
    f"after its fastest fall where log10(sum of squared weights), slope smoothed over {SMOOTH} "
    f"checkpoints, falls at under {FLAT_FRAC:g} of that fastest rate (or the last checkpoint); "
    f"circuit_formation = [end of memorization, start of cleanup or last checkpoint], null unless "
    f"excluded loss rose >= {MIN_RISE} decades over it. Epochs are those of checkpoints."
)


def weight_norm_flat(ep: list[float], wn: list[float], start: int) -> tuple[int, bool, float | None]:
    """(index where the weight norm's sharp fall from `start` on is over, whether it was over
    before the last checkpoint, the epoch of its fastest fall). See the module docstring."""
    n = len(ep)
    if start >= n - 2:
        return n - 1, False, None
    lw = [_log(w) for w in wn]
    raw = [(lw[i + 1] - lw[i]) / max(ep[i + 1] - ep[i], 1e-12) for i in range(n - 1)]
    half = SMOOTH // 2
    slope = [sum(raw[max(0, i - half): i + half + 1]) / len(raw[max(0, i - half): i + half + 1])
             for i in range(n - 1)]
    fastest = min(range(start, n - 1), key=lambda i: slope[i])
    if slope[fastest] >= 0:
        return n - 1, False, None
    for i in range(fastest + 1, n - 1):
        if slope[i] > FLAT_FRAC * slope[fastest]:
            return i, True, ep[fastest]
    return n - 1, False, ep[fastest]


def _log(x: float) -> float:
    return math.log10(max(x, 1e-300))


def locate_phases(rows: Sequence[dict[str, Any]], rule: str = "weight_norm"
                  ) -> tuple[dict[str, list[float] | None], str, dict[str, Any]]:
    """rows: progress rows sorted by epoch (keys epoch, train_loss, test_loss, excluded_loss,
    weight_norm, ...).

    Returns (phases {memorization, circuit_formation, cleanup: [start, end] or None}, the rule's
    text, evidence: the curves' values at the boundaries and their change over each phase).
    """
    if rule not in PHASE_RULES:
        raise ValueError(f"unknown phase rule {rule!r}; choose one of {', '.join(PHASE_RULES)}")
    text = RULE if rule == "weight_norm" else RULE_TEST_LOSS
    none = {"memorization": None, "circuit_formation": None, "cleanup": None}
    rows = [r for r in rows if r.get("test_loss") is not None and r.get("excluded_loss") is not None]
    if len(rows) < 3:
        return none, text, {"note": "fewer than 3 checkpoints with test and excluded loss"}
    ep = [float(r["epoch"]) for r in rows]
    test = [_log(r["test_loss"]) for r in rows]
    exc = [_log(r["excluded_loss"]) for r in rows]
    n = len(rows)

    # steepest fall of log test loss (per epoch), and the drop around it
    slopes = [(test[i + 1] - test[i]) / max(ep[i + 1] - ep[i], 1e-12) for i in range(n - 1)]
    g = min(range(n - 1), key=lambda i: slopes[i])
    m0 = min(range(g + 1), key=lambda i: exc[i])  # first excluded-loss minimum before the fall
    hi_i = max(range(m0, g + 1), key=lambda i: test[i])
    lo_i = min(range(g + 1, n), key=lambda i: test[i])
    hi, lo = test[hi_i], test[lo_i]
    cleanup = None
    c_start = c_end = None
    if hi - lo >= MIN_DROP:
        c_start = next(i for i in range(hi_i, n) if test[i] <= hi - START_FRAC * (hi - lo))
        c_end = next(i for i in range(c_start, n) if test[i] <= lo + (1 - END_FRAC) * (hi - lo))
    notes: dict[str, Any] = {}
    if c_start is not None and c_end is not None and rule == "weight_norm":
        wn = [r.get("weight_norm") for r in rows]
        if all(isinstance(w, int | float) for w in wn):
            c_end_wn, flat, fastest = weight_norm_flat(ep, wn, c_start)
            c_end = max(c_end_wn, c_start + 1) if c_start + 1 < n else c_end_wn
            notes = {"weight_norm_fastest_fall_epoch": fastest, "weight_norm_flattened": flat}
            if not flat:
                notes["note"] = "the weight norm was still falling fast at the last checkpoint: cleanup ends there"
        else:
            notes = {"note": "no weight norm in the progress rows: cleanup ends by the test-loss rule"}
    if c_start is not None and c_end is not None:
        cleanup = [ep[c_start], ep[c_end]]

    # memorisation ends at the lowest excluded loss before cleanup starts
    stop = c_start if c_start is not None else n - 1
    m = min(range(stop + 1), key=lambda i: exc[i])
    memorization = [ep[0], ep[m]] if m > 0 else None

    cf_end = stop
    circuit = None
    if cf_end > m and exc[cf_end] - exc[m] >= MIN_RISE:
        circuit = [ep[m], ep[cf_end]]

    phases = {"memorization": memorization, "circuit_formation": circuit, "cleanup": cleanup}
    evidence: dict[str, Any] = {"boundaries": {}, "changes": {}, **notes}
    marks = {"start": 0, "memorization_end": m, "cleanup_start": c_start, "cleanup_end": c_end, "last": n - 1}
    keys = ("train_loss", "test_loss", "restricted_loss", "excluded_loss", "weight_norm", "gini_W_E", "gini_W_L")
    for name, i in marks.items():
        if i is not None:
            evidence["boundaries"][name] = {"epoch": ep[i], **{k: rows[i].get(k) for k in keys}}
    for name, span in phases.items():
        if span is None:
            continue
        i, j = ep.index(span[0]), ep.index(span[1])
        evidence["changes"][name] = {
            k: (rows[j][k] - rows[i][k]) for k in keys if rows[i].get(k) is not None and rows[j].get(k) is not None
        }
    return phases, text, evidence
