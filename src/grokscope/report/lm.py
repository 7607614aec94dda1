"""The figures of a copy-LM run (Lv et al. 2024; docs/measures.md, part 2), taken straight from the store.

The LM trainer (`grokscope.lm.trainer`) writes every measure at each evaluation step: the
`metrics` table (losses, the in-context-learning score, the hex copy test `copy_*` and its
random-token-id variant `rcopy_*`, per layer the largest induction score, A * EP, prefix-matching and
previous-token score) and the `heads` table (one row per evaluation, layer and head). These
builders only pick columns; no measure is computed here.

- Loss, copy accuracy and the ICL score, each against optimiser steps and against tokens: the
  paper's claim is that copying arrives after a number of updates, not of tokens (its Fig. 3).
- A heatmap of each head's induction score over training (rows layer.head, columns evaluation
  steps), and the same for previous-token attention, the OV copying score and A * EP.
- Per layer, the largest induction score, A * EP and previous-token score over training: the
  paper finds induction heads forming from shallow to deep layers (its Fig. 2).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from grokscope.report.base import Figure, Heatmap, Missing, Series, floats, fmt, has
from grokscope.report.data import RunData

SECTION = "Copying and in-context learning"
HEADS = "Induction heads"
TRAIN_HINT = "the metrics table has no LM evaluations yet (training has not logged)"
AXES = (("step", "steps", "optimiser step"), ("tokens", "tokens", "tokens seen"))

# Metric columns the figures below show; `other_metric_columns` skips them.
CONSUMED = {"step", "tokens", "train_loss", "val_loss", "copy_acc", "copy_token_acc", "rcopy_acc", "rcopy_token_acc",
            "icl_score", "repeat_gain"}
PER_LAYER = re.compile(r"^(induction|induction_copying|prefix_matching|previous_token)_l\d+$")
PER_QUERY = re.compile(r"^r?copy_acc_q(\d+)$")


def _against_both(key: str, title: str, caption: str, columns: list[tuple[str, str, bool]], y_label: str,
                  log_y: bool = False, section: str = SECTION):
    """A builder giving two figures of the same metrics columns: against steps, against tokens.

    columns: (column, curve name, dashed).
    """

    def build(d: RunData) -> list[Figure] | Missing:
        m = d.metrics
        present = [(c, name, dash) for c, name, dash in columns if has(m, c)]
        if not present or "tokens" not in m:
            return Missing(key, title, TRAIN_HINT, section=section)
        out = []
        for axis, word, label in AXES:
            series = [Series(name, floats(m, axis), floats(m, c), dash=dash) for c, name, dash in present]
            out.append(Figure(f"{key}_{axis}", f"{title} against {word}", caption, "lines", series,
                              x_label=label, y_label=y_label, log_y=log_y, section=section))
        return out

    build.__name__ = key
    return build


lm_loss = _against_both(
    "lm_loss", "Train and validation loss",
    "Next-token cross-entropy (nats per token) on fixed training windows and on the held-out document. "
    "The paper: the loss flattens (about 5B tokens) long before copying surges (about 15B).",
    [("train_loss", "train loss", False), ("val_loss", "validation loss", False)], "loss", log_y=True,
    section="Training")

copy_accuracy = _against_both(
    "copy_accuracy", "Copy accuracy",
    "The copy test (Lv et al. 2024): lines of random hex, then a line's prefix again; exact = the whole "
    "suffix right by greedy decoding, per token = the share of suffix tokens right. Dashed: the same test "
    "with random token ids instead of hex. The paper: copy accuracy surges after a number of steps.",
    [("copy_acc", "copy accuracy (exact)", False), ("copy_token_acc", "copy accuracy (per token)", False),
     ("rcopy_acc", "random-id copy accuracy (exact)", True),
     ("rcopy_token_acc", "random-id copy accuracy (per token)", True)], "accuracy")

icl = _against_both(
    "icl", "In-context learning score",
    "ICL score: the loss late in the context minus the loss early in it (Olsson et al.; negative when "
    "more context helps). Repeat gain: the loss on a late span without minus with an earlier copy of it "
    "in the same window (positive once the model copies from context).",
    [("icl_score", "ICL score", False), ("repeat_gain", "repeat gain", True)], "nats")


def copy_by_query(d: RunData) -> Figure | list[Figure]:
    """Exact copy accuracy per query line (copy_acc_q{j}: the test asks for line j of the context)."""
    m = d.metrics
    cols = sorted((c.startswith("r"), int(g.group(1)), c) for c in m.columns if (g := PER_QUERY.match(c)) and has(m, c))
    if not cols:
        return []
    n_lines = d.info.get("copy_lines")
    of = f" of the {fmt(n_lines)} lines" if n_lines else ""
    series = [Series(f"{'random-id ' if r else ''}line {j}", floats(m, "step"), floats(m, c), dash=r, hidden=r)
              for r, j, c in cols]
    return Figure("copy_by_query", "Copy accuracy by query line", f"Exact copy accuracy per queried line: line j{of} "
                  "in the context is asked for again (a larger j is closer to the query). The paper asks for "
                  "lines 5, 10, ..., 50 of 50. Dashed, hidden at first: the random-token-id variant.", "lines",
                  series, x_label="optimiser step", y_label="accuracy", toggle_log=False, section=SECTION)


def _heads(d: RunData) -> pd.DataFrame:
    return d.other_tables.get("heads", pd.DataFrame())


def _grid(h: pd.DataFrame, column: str) -> tuple[np.ndarray, list[str], list[str]]:
    """z [layer.head, step] of one `heads` column, with row labels (layer.head) and column labels (steps)."""
    wide = h.pivot_table(index=["layer", "head"], columns="step", values=column, aggfunc="last").sort_index()
    rows = [f"{int(layer)}.{int(head)}" for layer, head in wide.index]
    cols = [str(int(s)) for s in wide.columns]
    return wide.to_numpy(dtype=float), cols, rows


HEAD_SCORES = {
    "induction": ("induction score A", False),
    "previous_token": ("previous-token attention", False),
    "copying": ("OV copying score EP", True),
    "induction_copying": ("A * EP", True),
}


def induction_heatmap(d: RunData) -> Figure | Missing:
    h = _heads(d)
    title = "Induction score per head over training"
    if not has(h, "induction", "layer", "head"):
        return Missing("induction_heads", title, "the run has no `heads` table yet (the LM trainer writes it at "
                       "each evaluation)", section=HEADS)
    z, x, y = _grid(h, "induction")
    return Figure("induction_heads", title, "Each head's induction score A (Lv et al. 2024; Olsson et al.'s "
                  "prefix matching): its mean attention from a token of the second copy of a repeated random "
                  "sequence to the token after that token's first occurrence. Rows: layer.head, shallow at the "
                  "top; columns: evaluation steps (log-spaced, so not to scale).",
                  "heatmaps", heatmaps=[Heatmap("induction score", z, x, y, diverging=True)],
                  x_label="step", y_label="layer.head", toggle_log=False, section=HEADS)


def head_score_heatmaps(d: RunData) -> Figure | list[Figure]:
    h = _heads(d)
    maps = [Heatmap(name, *_grid(h, col), diverging=div) for col, (name, div) in HEAD_SCORES.items()
            if col != "induction" and has(h, col, "layer", "head")]
    if not maps:
        return []  # induction_heatmap already says the table is missing
    return Figure("head_scores", "Previous-token and copying scores per head",
                  "The other parts of an induction circuit per head over training: previous-token attention "
                  "(the head an induction head composes with, in an earlier layer), the OV circuit's eigenvalue "
                  "positivity EP (does the head copy what it attends to), and A * EP (a head that both attends "
                  "like an induction head and copies). Rows: layer.head; columns: evaluation steps.",
                  "heatmaps", heatmaps=maps,
                  x_label="step", y_label="layer.head", toggle_log=False, section=HEADS)


def _layer_columns(m: pd.DataFrame, prefix: str) -> list[tuple[int, str]]:
    pat = re.compile(re.escape(prefix) + r"_l(\d+)$")
    return sorted((int(g.group(1)), c) for c in m.columns if (g := pat.match(c)) and has(m, c))


def per_layer(prefix: str, title: str, caption: str):
    """Per layer, the largest score of a head over training (metrics columns PREFIX_l{N})."""
    key = f"layers_{prefix}"

    def build(d: RunData) -> Figure | Missing:
        m = d.metrics
        cols = _layer_columns(m, prefix)
        if not cols:
            return Missing(key, title, TRAIN_HINT, section=HEADS)
        series = [Series(f"layer {n}", floats(m, "step"), floats(m, c)) for n, c in cols]
        return Figure(key, title, caption, "lines", series, x_label="optimiser step", y_label="largest head score",
                      toggle_log=False, section=HEADS)

    build.__name__ = key
    return build


layers_induction = per_layer(
    "induction", "Largest induction score per layer",
    "The largest induction score A of a head in each layer: the paper finds induction heads forming in "
    "shallow layers first, then deeper ones (chance: about one over the position, ~0.02 here).")
layers_induction_copying = per_layer(
    "induction_copying", "Largest A * EP per layer",
    "The largest product of the induction score A and the OV copying score EP of a head in each layer: "
    "a head that attends like an induction head and copies what it attends to.")
layers_previous = per_layer(
    "previous_token", "Largest previous-token score per layer",
    "The largest attention to the previous token of a head in each layer; an induction head needs one in an "
    "earlier layer than itself.")

BUILDERS = [lm_loss, copy_accuracy, copy_by_query, icl, induction_heatmap, head_score_heatmaps, layers_induction,
            layers_induction_copying, layers_previous]


def consumed(column: str) -> bool:
    """Whether an LM figure above already shows this metrics column."""
    return column in CONSUMED or bool(PER_LAYER.match(column)) or bool(PER_QUERY.match(column))
