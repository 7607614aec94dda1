"""The figures of a copy-LM run (Lv et al. 2024; docs/measures.md, part 2), taken straight from the store.

The LM trainer (`grokscope.lm.trainer`) writes every measure at each evaluation step: the
`metrics` table (losses, the in-context-learning score, the paper's copy test `pcopy_*`, the hex
copy test `copy_*` and its random-id variant `rcopy_*`, per layer the largest induction score,
A * EP, prefix-matching and previous-token score) and the `heads` table (one row per evaluation,
layer and head). These builders only pick columns; no measure is computed here. The events marked
on the figures (loss stable, copy surge, a layer's induction head crossing its threshold) are
those `grokscope.lm.analysis` wrote to the summary.

- Loss, copy accuracy (the paper's test first, then the hex and random-id variants) and the ICL
  score, each against optimiser steps and against tokens: the paper's claim is that copying
  arrives after a number of updates, not of tokens (its Fig. 3).
- A heatmap of each head's induction score over training (rows layer.head, columns evaluation
  steps), and the same for previous-token attention, the OV copying score and A * EP.
- Per layer, the largest induction score, A * EP and previous-token score over training: the
  paper finds induction heads forming from shallow to deep layers (its Fig. 2).
"""

from __future__ import annotations

import re
from typing import Any

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
            "pcopy_acc", "pcopy_token_acc", "icl_score", "repeat_gain"}
PER_LAYER = re.compile(r"^(induction|induction_copying|prefix_matching|previous_token)_l\d+$")
PER_QUERY = re.compile(r"^([pr]?)copy_acc_q(\d+)$")
VARIANTS = {"p": "paper test", "": "hex", "r": "random-id"}  # copy-test variants by metrics prefix, headline first


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

def _event_lines(d: RunData, axis: str, events: list[tuple[Any, str]]) -> list[tuple[float, str]]:
    """Summary events ({step, tokens} dicts) as marked x values on a figure against `axis`."""
    return [(float(e[axis]), label) for e, label in events if isinstance(e, dict) and e.get(axis) is not None]


def paper_copy(d: RunData) -> list[Figure]:
    """The headline: the paper's copy test against steps and tokens, with claim 1's events marked."""
    m = d.metrics
    cols = [(c, name) for c, name in (("pcopy_acc", "exact"), ("pcopy_token_acc", "per token")) if has(m, c)]
    if not cols or "tokens" not in m:
        return []  # a run logged before the paper's test: the hex figure below still shows copying
    c1 = (d.summary or {}).get("claim1") or {}
    events = [(c1.get("loss_stable"), "loss stable"), (c1.get("copy_surge"), "surge"),
              (c1.get("copy_token_surge"), "token surge")]
    rules = c1.get("rules") or {}
    marks = (f" Marked (from the analysis summary): the loss is stable from the {rules['loss_stable']}; the copy "
             f"surge is the {rules['copy_surge']}." if rules else " Run `grokscope analyze RUN` to mark when the "
             "loss stabilised and copying surged.")
    out = []
    for axis, word, label in AXES:
        out.append(Figure(
            f"paper_copy_{axis}", f"Copy accuracy, the paper's test, against {word}",
            "Lv et al.'s copy test: lines of 12 + 6 random token ids over the whole vocabulary, concatenated, with "
            "unique 12-token prefixes; a line's prefix is given again and the model must continue with its 6-token "
            "suffix by greedy decoding. Exact: the whole suffix right; per token: the share of suffix tokens right. "
            "The paper: accuracy surges long after the training loss has stabilised." + marks,
            "lines", [Series(name, floats(m, axis), floats(m, c)) for c, name in cols], x_label=label,
            y_label="accuracy", toggle_log=False, vlines=_event_lines(d, axis, events), section=SECTION))
    return out


copy_accuracy = _against_both(
    "copy_accuracy", "Copy accuracy, hex and random-id variants",
    "Two variants of the copy test beside the paper's: lines of random hex written as text, each ended by a "
    "newline, then a line's prefix again; exact = the whole suffix right by greedy decoding, per token = the "
    "share of suffix tokens right. Dashed: 12 + 6 random token ids and a newline per line.",
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
    """Exact copy accuracy per query line ([p|r]copy_acc_q{j}: the test asks for line j of the context)."""
    m = d.metrics
    order = list(VARIANTS)
    cols = sorted((order.index(g.group(1)), int(g.group(2)), c) for c in m.columns
                  if (g := PER_QUERY.match(c)) and has(m, c))
    if not cols:
        return []
    n_lines = d.info.get("paper_copy_lines") or d.info.get("copy_lines")
    of = f" of the {fmt(n_lines)} lines" if n_lines else ""
    headline = min(v for v, _, _ in cols)  # the paper's test where the run has it, shown first; the others hidden
    series = [Series(f"{VARIANTS[order[v]]}, line {j}", floats(m, "step"), floats(m, c), dash=v != headline,
                     hidden=v != headline) for v, j, c in cols]
    return Figure("copy_by_query", "Copy accuracy by query line", f"Exact copy accuracy per queried line: line j{of} "
                  "in the context is asked for again (a larger j is closer to the query). The paper asks for "
                  "lines 5, 10, ..., 50 of 50. Dashed, hidden at first: the other variants of the test.", "lines",
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


def _induction_onsets(d: RunData) -> tuple[list[tuple[float, str]], str]:
    """Claim 3 from the summary: each layer's crossing of the induction threshold as a marked step, and a sentence."""
    th = ((d.summary or {}).get("claim3") or {}).get("thresholds") or {}
    key = "0.3" if "0.3" in th else next(iter(th), None)
    if key is None:
        return [], ""
    got = th[key]
    events = [(hit, f"layer {n}") for n, hit in enumerate(got.get("formed") or [])]
    order = str(got.get("order", "")).replace("_", " ")
    rho = got.get("spearman")
    text = (f" Marked: the first evaluation at which each layer's largest score exceeds {key} (from the analysis "
            f"summary); their order over depth: {order}" + (f", Spearman {fmt(rho)}" if rho is not None else "") + ".")
    return _event_lines(d, "step", events), text


def per_layer(prefix: str, title: str, caption: str, onsets: bool = False):
    """Per layer, the largest score of a head over training (metrics columns PREFIX_l{N})."""
    key = f"layers_{prefix}"

    def build(d: RunData) -> Figure | Missing:
        m = d.metrics
        cols = _layer_columns(m, prefix)
        if not cols:
            return Missing(key, title, TRAIN_HINT, section=HEADS)
        series = [Series(f"layer {n}", floats(m, "step"), floats(m, c)) for n, c in cols]
        vlines, text = _induction_onsets(d) if onsets else ([], "")
        return Figure(key, title, caption + text, "lines", series, x_label="optimiser step",
                      y_label="largest head score", toggle_log=False, vlines=vlines, section=HEADS)

    build.__name__ = key
    return build


layers_induction = per_layer(
    "induction", "Largest induction score per layer",
    "The largest induction score A of a head in each layer: the paper finds induction heads forming in "
    "shallow layers first, then deeper ones (chance: about one over the position, ~0.02 here).", onsets=True)
layers_induction_copying = per_layer(
    "induction_copying", "Largest A * EP per layer",
    "The largest product of the induction score A and the OV copying score EP of a head in each layer: "
    "a head that attends like an induction head and copies what it attends to.")
layers_previous = per_layer(
    "previous_token", "Largest previous-token score per layer",
    "The largest attention to the previous token of a head in each layer; an induction head needs one in an "
    "earlier layer than itself.")

BUILDERS = [lm_loss, paper_copy, copy_accuracy, copy_by_query, icl, induction_heatmap, head_score_heatmaps, layers_induction,
            layers_induction_copying, layers_previous]


def consumed(column: str) -> bool:
    """Whether an LM figure above already shows this metrics column."""
    return column in CONSUMED or bool(PER_LAYER.match(column)) or bool(PER_QUERY.match(column))
