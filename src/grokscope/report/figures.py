"""What each figure of the report plots, taken straight from the store (no measure is computed).

One small function per figure: it reads a `RunData` and returns a `Figure` (series or heatmaps plus
titles, axis labels, the initial y scale and the phases to shade), or a `Missing` saying what the
figure needs. `render.py` draws a `Figure` as an interactive plotly figure and as a matplotlib PNG,
so the two always show the same numbers, and tests check the numbers here against the store.

The modular-arithmetic figures follow Nanda et al. 2023 (docs/measures.md, part 1): training curves
(Fig. 1), progress measures (Fig. 7), Fourier spectra of W_E and W_L (Fig. 3), neurons and
attention in the Fourier basis (Figs. 4-6, appendix), key-frequency coefficients. Copy-LM runs
(task.name text, docs/measures.md, part 2) get `grokscope.report.lm`'s figures instead of the generic ones.
Other tasks get the generic figures: loss and accuracy, per-position losses (Nanda et al. 2023, Appendix D.3), and
every other logged column.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from grokscope.report import lm as lm_figures
from grokscope.report.base import Builder, Figure, Heatmap, Missing, Series, floats, has
from grokscope.report.data import RunData

ANALYZE_HINT = "run `grokscope analyze RUN`"




# ------------------------------------------------------------------------------------ helpers
def fourier_labels(n: int) -> list[str]:
    """Names of the Fourier basis rows (docs/measures.md, "Fourier basis"): const, cos 1, sin 1, ..., [(-1)^x for even n]."""
    labels = ["const"]
    for k in range(1, (n - 1) // 2 + 1):
        labels += [f"cos {k}", f"sin {k}"]
    if n % 2 == 0:
        labels.append("(-1)^x")
    return labels


def _x(df: pd.DataFrame) -> np.ndarray:
    """Epochs when the table has them (the paper's axis), else steps."""
    return floats(df, "epoch") if "epoch" in df and df["epoch"].notna().any() else floats(df, "step")


def _x_label(df: pd.DataFrame) -> str:
    return "epoch" if "epoch" in df and df["epoch"].notna().any() else "step"


def _arr(d: RunData, name: str, ndim: int) -> np.ndarray | None:
    a = d.arrays.get(name)
    if a is None or a.ndim != ndim:
        return None
    return np.asarray(a)


def _shape_note(d: RunData, name: str, want: str) -> str:
    a = d.arrays.get(name)
    if a is None:
        if not d.arrays:
            return f"analysis/figures.safetensors does not exist yet; {ANALYZE_HINT}"
        return f"analysis/figures.safetensors has no `{name}`; {ANALYZE_HINT} again"
    return f"analysis/figures.safetensors `{name}` has shape {list(a.shape)}, expected {want}"


def _attn_only(d: RunData) -> bool:
    """Attention-only models have no MLP: no neurons, no W_L (analysis writes none of their arrays)."""
    return bool((d.config.get("model") or {}).get("attn_only"))


def _no_keys(d: RunData) -> str | None:
    """Why per-frequency columns are absent from an analysed run, if it is that analysis found none."""
    s = d.summary or {}
    if isinstance(s.get("key_frequencies"), list) and not s["key_frequencies"]:
        return (f"analysis found no key frequencies at step {s.get('step', '?')} (no neuron is explained by one "
                "frequency yet), so there is nothing per frequency to plot")
    return None


def _keys_note(d: RunData) -> str:
    keys = (d.summary or {}).get("key_frequencies")
    return f" Key frequencies found by analysis: {', '.join(map(str, keys))}." if isinstance(keys, list) and keys else ""


def _k_columns(df: pd.DataFrame, prefix: str) -> list[tuple[int, str]]:
    """Columns named PREFIX{K} (e.g. coef_k14), sorted by K."""
    pat = re.compile(re.escape(prefix) + r"(\d+)$")
    return sorted((int(m.group(1)), c) for c in df.columns if (m := pat.match(c)))


def _pos_columns(df: pd.DataFrame, split: str, metric: str) -> list[tuple[int, str]]:
    """Per-position columns `{split}_{metric}_pos{j}` (multi-label tasks), sorted by j."""
    return _k_columns(df, f"{split}_{metric}_pos")


# ------------------------------------------------------------------------------ training curves
def loss_curves(d: RunData) -> Figure | Missing:
    m = d.metrics
    if not has(m, "train_loss") and not has(m, "test_loss"):
        return Missing("loss", "Train and test loss", "the metrics table has no rows yet (training has not logged)")
    series = [Series(f"{s} loss", _x(m), floats(m, f"{s}_loss")) for s in ("train", "test") if f"{s}_loss" in m]
    return Figure("loss", "Train and test loss", "Cross-entropy on the train and test sets over training "
                  "(Nanda et al. Fig. 1). Shaded: the phases analysis located.", "lines", series,
                  x_label=_x_label(m), y_label="loss", log_y=True, phases=d.phases)


def accuracy_curves(d: RunData) -> Figure | Missing:
    m = d.metrics
    if not has(m, "train_acc") and not has(m, "test_acc"):
        return Missing("accuracy", "Train and test accuracy", "the metrics table has no accuracy columns yet")
    series = [Series(f"{s} accuracy", _x(m), floats(m, f"{s}_acc")) for s in ("train", "test") if f"{s}_acc" in m]
    if has(d.progress, "restricted_acc"):
        series.append(Series("restricted accuracy", _x(d.progress), floats(d.progress, "restricted_acc"), dash=True))
    return Figure("accuracy", "Train and test accuracy", "Accuracy on the train and test sets over training"
                  " (and, once analysed, of the restricted logits).", "lines", series,
                  x_label=_x_label(m), y_label="accuracy", phases=d.phases)


def weight_norm(d: RunData) -> Figure | Missing:
    df = d.metrics if has(d.metrics, "weight_norm") else d.progress
    if not has(df, "weight_norm"):
        return Missing("weight_norm", "Sum of squared weights", "no table has a weight_norm column yet",
                       section="Progress measures")
    return Figure("weight_norm", "Sum of squared weights", "Sum of squared weights over all parameters: "
                  "falls during circuit formation and sharply in cleanup (Nanda et al. Fig. 7).", "lines",
                  [Series("sum of squared weights", _x(df), floats(df, "weight_norm"))],
                  x_label=_x_label(df), y_label="sum of squared weights", phases=d.phases,
                  section="Progress measures")


def per_position(split: str, metric: str) -> Builder:
    """Per-position loss or accuracy curves of a multi-label task (e.g. each answer digit)."""
    key = f"{split}_{metric}_per_position"
    title = f"{split.capitalize()} {'loss' if metric == 'loss' else 'accuracy'} per position"

    def build(d: RunData) -> Figure | list[Figure]:
        cols = _pos_columns(d.metrics, split, metric)
        if not cols:
            return []  # single-label tasks have none: nothing to say
        m = d.metrics
        series = [Series(f"position {j}", _x(m), floats(m, c)) for j, c in cols]
        return Figure(key, title, f"{title} (one curve per labelled position): separate phase changes show "
                      "as separate drops (Nanda et al. appendix D.3).", "lines", series, x_label=_x_label(m),
                      y_label=metric, log_y=metric == "loss", phases=d.phases)

    build.__name__ = key
    return build


# --------------------------------------------------------------------------- progress measures
def progress_losses(d: RunData) -> Figure | Missing:
    p = d.progress
    title = "Restricted and excluded loss"
    if not has(p, "restricted_loss", "excluded_loss"):
        return Missing("progress_losses", title, f"the progress table has no restricted/excluded loss yet; {ANALYZE_HINT}",
                       section="Progress measures")
    series = [Series(name, _x(p), floats(p, col), dash=dash, hidden=hidden) for name, col, dash, hidden in (
        ("train loss", "train_loss", False, False), ("test loss", "test_loss", False, False),
        ("restricted loss", "restricted_loss", True, False), ("excluded loss", "excluded_loss", True, False),
        ("restricted loss (train)", "restricted_loss_train", True, True),
        ("restricted loss (test)", "restricted_loss_test", True, True)) if has(p, col)]
    return Figure("progress_losses", title, "Restricted loss keeps only the key frequencies of the logits and "
                  "falls before test loss; excluded loss removes them and rises during circuit formation "
                  "while train loss stays flat (Nanda et al. 2023, Section 5.1 and Fig. 7).", "lines", series,
                  x_label=_x_label(p), y_label="loss", log_y=True, phases=d.phases, section="Progress measures")


def local_learning_coefficient(d: RunData) -> list[Figure]:
    """The LLC per checkpoint (the `llc` table of `analyze --llc`), drawn beside restricted/excluded loss."""
    t = d.other_tables.get("llc")
    if t is None or not has(t, "llc"):
        return []  # optional (`analyze --llc`): nothing missing without it
    chains = _k_columns(t, "llc_chain")
    x, y = _x(t), floats(t, "llc")
    # A negative estimate means the chain found lower loss next to the checkpoint: it is not a
    # local minimum (an untrained model, a run mid-transition), and the LLC is undefined there.
    # It is left as a gap, named in the caption, so that one reading of -3,000 does not flatten
    # the rest of the curve onto a linear axis.
    invalid = np.isfinite(y) & (y <= 0)
    series = [Series("LLC" if len(chains) < 2 else "LLC (mean over chains)", x, np.where(invalid, np.nan, y))]
    if len(chains) > 1:
        series += [Series(f"chain {c}", _x(t), floats(t, col), dash=True, hidden=True) for c, col in chains]
    if has(t, "llc_drift"):
        series.append(Series("drift (second half of the draws - first)", _x(t), floats(t, "llc_drift"), dash=True,
                             hidden=True))
    s = (d.summary or {}).get("llc_settings") or {}
    how = (f" SGLD: step {s['epsilon']:g}, localisation {s['gamma']:g}, n*beta {s['nbeta']:.4g}, {s['chains']} chains "
           f"of {s['burnin']} + {s['draws']} steps." if {"epsilon", "gamma", "nbeta", "chains", "burnin", "draws"} <= set(s)
           else "")
    against = ("the copy accuracy and the induction scores above" if d.is_lm else
               "the restricted and excluded loss above")
    shaded = "" if d.is_lm else " Shaded: the phases analysis located from those losses."
    unit = _x_label(t)
    gaps = (" Left out, as negative (the chains found lower loss nearby: not a local minimum, no LLC): "
            + ", ".join(f"{unit} {a:,.0f} ({b:.3g})" for a, b in zip(x[invalid], y[invalid], strict=True)) + "."
            if invalid.any() else "")
    return [Figure("llc", "Local learning coefficient", "Estimated local learning coefficient of each checkpoint "
                   f"on the train set (Lau et al. 2023; analysis/llc.py), to read against {against}: the effective "
                   "number of parameters the training loss pins down near the checkpoint, "
                   "at the stated localisation." + gaps + shaded + how,
                   "lines", series, x_label=_x_label(t), y_label="LLC", log_y=True, phases=d.phases,
                   section="Progress measures")]


def test_over_restricted(d: RunData) -> Figure | Missing:
    p = d.progress
    title = "Test loss / restricted loss"
    if not has(p, "test_loss", "restricted_loss"):
        return Missing("test_over_restricted", title, f"the progress table has no restricted loss yet; {ANALYZE_HINT}",
                       section="Progress measures")
    restricted = floats(p, "restricted_loss")
    # a restricted loss that rounds to exactly 0 (every key-frequency logit margin past float precision)
    # has no finite ratio: those checkpoints are left out and counted in the caption
    zero = restricted == 0
    ratio = floats(p, "test_loss") / np.where(zero, np.nan, restricted)
    gaps = (f" Left out: {int(zero.sum())} checkpoint(s) whose restricted loss rounds to 0 (no finite ratio)."
            if zero.any() else "")
    return Figure("test_over_restricted", title, "Ratio of test loss to restricted loss: it grows while the "
                  "circuit forms but memorisation still dominates the test loss, and falls in cleanup (Nanda et al. "
                  "Fig. 7)." + gaps, "lines",
                  [Series("test loss / restricted loss", _x(p), ratio)], x_label=_x_label(p), y_label="ratio",
                  log_y=True, phases=d.phases, section="Progress measures")


def gini(d: RunData) -> Figure | Missing:
    p = d.progress
    if not has(p, "gini_W_E") and not has(p, "gini_W_L"):
        return Missing("gini", "Gini coefficient of W_E and W_L in the Fourier basis",
                       f"the progress table has no Gini columns yet; {ANALYZE_HINT}", section="Progress measures")
    basis = (d.summary or {}).get("gini_basis")
    series = [Series(f"Gini({w})", _x(p), floats(p, f"gini_{w}")) for w in ("W_E", "W_L") if has(p, f"gini_{w}")]
    return Figure("gini", "Gini coefficient of W_E and W_L in the Fourier basis",
                  "Sparsity of the Fourier components of the embedding and the neuron-logit map: rises "
                  f"sharply in cleanup (Nanda et al. Fig. 7).{f' Components: {basis}.' if basis else ''}",
                  "lines", series, x_label=_x_label(p), y_label="Gini", phases=d.phases, section="Progress measures")


def key_coefficients(d: RunData) -> Figure | Missing:
    p = d.progress
    cols = _k_columns(p, "coef_k")
    title = "Key-frequency coefficients over training"
    if not cols:
        return Missing("key_coefficients", title, _no_keys(d) or f"the progress table has no coef_k* columns yet; "
                       f"{ANALYZE_HINT}", section="Progress measures")
    series = [Series(f"k = {k}", _x(p), floats(p, c)) for k, c in cols]
    return Figure("key_coefficients", title, "Coefficient of cos(w_k(a+b-c)) in the logits for each key "
                  "frequency k, per checkpoint: the circuit's terms grow during circuit formation.", "lines",
                  series, x_label=_x_label(p), y_label="coefficient", phases=d.phases, section="Progress measures")


def excluded_per_frequency(d: RunData) -> Figure | Missing:
    p = d.progress
    cols = _k_columns(p, "excluded_loss_k")
    title = "Excluded loss per key frequency"
    if not cols:
        return Missing("excluded_per_frequency", title, _no_keys(d) or "the progress table has no excluded_loss_k* "
                       f"columns yet; {ANALYZE_HINT}", section="Progress measures")
    series = [Series(f"excluding k = {k}", _x(p), floats(p, c)) for k, c in cols]
    if has(p, "train_loss"):
        series.append(Series("train loss", _x(p), floats(p, "train_loss"), dash=True))
    return Figure("excluded_per_frequency", title, "Train loss after removing one key frequency's directions "
                  "from the logits, per frequency (Nanda et al. 2023, Appendix C.1.5, Fig. 15).", "lines", series, x_label=_x_label(p),
                  y_label="loss", log_y=True, phases=d.phases, section="Progress measures")


# ------------------------------------------------------------------- the final checkpoint's circuit
FOURIER = "Fourier structure (final checkpoint)"
NEURONS = "Neurons and attention (final checkpoint)"


def _spectrum(d: RunData, name: str, key: str, title: str, caption: str) -> Figure | Missing:
    a = _arr(d, name, 1)
    if a is None:
        return Missing(key, title, _shape_note(d, name, "[p]"), section=FOURIER)
    return Figure(key, title, caption + _keys_note(d), "bars", [Series("norm", np.array(fourier_labels(len(a))), a)],
                  x_label="Fourier component", y_label="norm", section=FOURIER)


def embed_spectrum(d: RunData) -> Figure | Missing:
    return _spectrum(d, "embed_spectrum", "embed_spectrum", "Fourier spectrum of the embedding W_E",
                     "Norm over d_model of each Fourier component of the number embeddings: a few key "
                     "frequencies carry almost all of it (Nanda et al. Fig. 3).")


def wl_spectrum(d: RunData) -> Figure | Missing | list[Figure]:
    if _attn_only(d):
        return []  # no MLP: nothing to show, nothing missing
    return _spectrum(d, "wl_spectrum", "wl_spectrum", "Fourier spectrum of the neuron-logit map W_L",
                     "Norm over neurons of each Fourier component of W_L = W_out W_U along the output "
                     "axis: sparse, on the key frequencies (Nanda et al. Fig. 3).")


def logit_fourier(d: RunData) -> Figure | Missing:
    a = _arr(d, "logit_fourier_norm", 2)
    title = "2D Fourier norms of the logits"
    if a is None or a.shape[0] != a.shape[1]:
        return Missing("logit_fourier", title, _shape_note(d, "logit_fourier_norm", "[p, p]"), section=FOURIER)
    lab = fourier_labels(a.shape[0])
    return Figure("logit_fourier", title, "Norm over outputs of the 2D Fourier transform of the logits over "
                  "(a, b): the mass sits on the key frequencies' cos/sin terms (Nanda et al. Fig. 4)." + _keys_note(d),
                  "heatmaps", heatmaps=[Heatmap("logits", a, lab, lab)], x_label="b component",
                  y_label="a component", section=FOURIER)


def attention(d: RunData) -> Figure | Missing:
    a = _arr(d, "attention", 3)
    title = "Attention from `=` to `a`, per head"
    if a is None or a.shape[1] != a.shape[2]:
        return Missing("attention", title, _shape_note(d, "attention", "[n_heads, p, p]"), section=NEURONS)
    ticks = np.arange(a.shape[1])
    maps = [Heatmap(f"head {h}", a[h], ticks, ticks) for h in range(a.shape[0])]
    return Figure("attention", title, "Each head's attention weight from the `=` token to `a`, over all "
                  "inputs (a, b): periodic in a (Nanda et al. appendix).", "heatmaps", heatmaps=maps,
                  x_label="b", y_label="a", section=NEURONS)


def _neuron_ids(d: RunData, n: int) -> list[int]:
    ids = d.arrays.get("neuron_ids")
    if ids is not None and ids.ndim == 1 and len(ids) == n:
        return [int(i) for i in ids]
    return list(range(n))


def neuron_activations(d: RunData) -> Figure | Missing | list[Figure]:
    if _attn_only(d):
        return []  # no MLP: nothing to show, nothing missing
    a = _arr(d, "neuron_acts", 3)
    title = "Neuron activations over (a, b)"
    if a is None or a.shape[1] != a.shape[2]:
        return Missing("neuron_activations", title, _shape_note(d, "neuron_acts", "[n, p, p]"), section=NEURONS)
    ticks = np.arange(a.shape[1])
    maps = [Heatmap(f"neuron {i}", a[j], ticks, ticks) for j, i in enumerate(_neuron_ids(d, a.shape[0]))]
    return Figure("neuron_activations", title, "MLP activations at the `=` position of a few neurons over all "
                  "inputs (a, b): periodic waves (Nanda et al. Fig. 5).", "heatmaps", heatmaps=maps,
                  x_label="b", y_label="a", section=NEURONS)


def neuron_fourier(d: RunData) -> Figure | Missing | list[Figure]:
    if _attn_only(d):
        return []  # no MLP: nothing to show, nothing missing
    a = _arr(d, "neuron_fourier", 3)
    title = "A neuron's activations in the 2D Fourier basis"
    if a is None or a.shape[1] != a.shape[2] or a.shape[0] == 0:
        return Missing("neuron_fourier", title, _shape_note(d, "neuron_fourier", "[n, p, p]"), section=NEURONS)
    lab = fourier_labels(a.shape[1])
    nid = _neuron_ids(d, a.shape[0])[0]
    return Figure("neuron_fourier", title, f"Neuron {nid}'s activations transformed over (a, b): almost all "
                  "of it in the const/cos/sin block of one frequency (Nanda et al. Fig. 5).", "heatmaps",
                  heatmaps=[Heatmap(f"neuron {nid}", a[0], lab, lab, diverging=True)],
                  x_label="b component", y_label="a component", section=NEURONS)


def neuron_fve_histogram(d: RunData) -> Figure | Missing | list[Figure]:
    if _attn_only(d):
        return []  # no MLP: nothing to show, nothing missing
    a = _arr(d, "neuron_fve", 1)
    title = "Fraction of variance explained per neuron"
    if a is None:
        return Missing("neuron_fve", title, _shape_note(d, "neuron_fve", "[d_mlp]"), section=NEURONS)
    return Figure("neuron_fve", title, "Histogram over neurons of the share of each neuron's variance "
                  "explained by its best frequency; the paper counts neurons above 0.85.", "hist",
                  [Series("neurons", np.arange(len(a)), a)], x_label="FVE by the best frequency",
                  y_label="neurons", toggle_log=False, vlines=[(0.85, "0.85")], x_range=(0.0, 1.0), section=NEURONS)


def neuron_clusters(d: RunData) -> Figure | Missing | list[Figure]:
    if _attn_only(d):
        return []  # no MLP: nothing to show, nothing missing
    freq, fve = _arr(d, "neuron_freq", 1), _arr(d, "neuron_fve", 1)
    title = "Neuron clusters by frequency"
    if freq is None or fve is None or len(freq) != len(fve):
        return Missing("neuron_clusters", title, _shape_note(d, "neuron_freq", "[d_mlp] beside neuron_fve [d_mlp]"),
                       section=NEURONS)
    freqs = sorted({int(f) for f in freq})
    explained = fve > 0.85  # the paper's threshold (Section 4.3) for "explained by one frequency"
    labels = np.array([str(f) for f in freqs])
    count = [np.array([np.sum((freq == f) & e) for f in freqs], dtype=float) for e in (explained, ~explained)]
    return Figure("neuron_clusters", title, "Neurons grouped by the frequency that explains most of their "
                  "variance; solid: explained above 0.85. They cluster on the key frequencies.", "bars",
                  [Series("FVE > 0.85", labels, count[0]), Series("FVE <= 0.85", labels, count[1])],
                  x_label="frequency k", y_label="neurons", toggle_log=False, section=NEURONS)


def cluster_wl(d: RunData) -> Figure | Missing | list[Figure]:
    if _attn_only(d):
        return []  # no MLP: nothing to show, nothing missing
    a = _arr(d, "cluster_wl_fourier", 2)
    title = "W_L columns of one cluster in the Fourier basis"
    if a is None and d.arrays and "cluster_wl_fourier" not in d.arrays and "neuron_fve" in d.arrays:
        return Missing("cluster_wl", title, "analysis writes it only when some neuron is explained by one frequency "
                       f"(FVE > 0.85); none is at step {(d.summary or {}).get('step', '?')}", section=NEURONS)
    if a is None:
        return Missing("cluster_wl", title, _shape_note(d, "cluster_wl_fourier", "[p, m]"), section=NEURONS)
    k = d.arrays.get("cluster_freq")
    kname = f"k = {int(np.asarray(k).reshape(-1)[0])}" if k is not None and np.asarray(k).size == 1 else "its frequency"
    return Figure("cluster_wl", f"{title} ({kname})", f"Neuron-logit weights of the largest neuron cluster "
                  f"({kname}) along the output axis, in the Fourier basis: only the cluster's cos/sin rows "
                  "are non-zero (Nanda et al. Fig. 6).", "heatmaps",
                  heatmaps=[Heatmap("W_L columns", a, np.arange(a.shape[1]), fourier_labels(a.shape[0]),
                                    diverging=True)],
                  x_label="neuron in the cluster", y_label="output Fourier component", section=NEURONS)


# ------------------------------------------------------------------------------ everything else
CONSUMED = {"step", "epoch", "train_loss", "test_loss", "train_acc", "test_acc", "weight_norm"}
POS_RE = re.compile(r"^(train|test)_(loss|acc)_pos\d+$")


def other_metric_columns(d: RunData) -> list[Figure]:
    """One figure per logged metric column that no other figure shows (lr, anything a trainer adds)."""
    m = d.metrics
    out = []
    for c in m.columns:
        if c in CONSUMED or POS_RE.match(c) or not pd.api.types.is_numeric_dtype(m[c]) or not has(m, c):
            continue
        if d.is_lm and lm_figures.consumed(c):
            continue
        out.append(Figure(f"metric_{c.lower()}", c, f"Column `{c}` of the metrics table.", "lines",
                          [Series(c, _x(m), floats(m, c))], x_label=_x_label(m), y_label=c, phases=d.phases,
                          section="Other metrics"))
    return out


PROGRESS_SHOWN = {"step", "epoch", "train_loss", "test_loss", "train_acc", "test_acc", "restricted_loss",
                  "restricted_loss_train", "restricted_loss_test", "restricted_acc", "excluded_loss", "gini_W_E",
                  "gini_W_L", "weight_norm"}


def other_progress_columns(d: RunData) -> list[Figure]:
    """The progress table's columns that no figure above shows (e.g. restricted/excluded accuracy)."""
    p = d.progress
    cols = [c for c in p.columns if c not in PROGRESS_SHOWN and not re.match(r"^(coef_k|excluded_loss_k)\d+$", c)
            and pd.api.types.is_numeric_dtype(p[c]) and has(p, c)]
    if not cols:
        return []
    series = [Series(c, _x(p), floats(p, c), hidden=i >= 8) for i, c in enumerate(cols)]
    return [Figure("progress_other", "Other progress measures", "Columns of analysis's progress table not shown "
                   "above, per checkpoint.", "lines", series, x_label=_x_label(p), y_label="value", phases=d.phases,
                   section="Progress measures")]


def other_tables(d: RunData) -> list[Figure]:
    """One figure per extra table in metrics.sqlite (e.g. a copy-LM's evaluations): its numeric columns."""
    out = []
    for t, df in d.other_tables.items():
        if d.is_lm and t == "heads":
            continue  # the LM's per-head scores have their own heatmaps (grokscope.report.lm)
        if t == "llc":
            continue  # drawn by local_learning_coefficient
        cols = [c for c in df.columns if c not in ("step", "epoch") and pd.api.types.is_numeric_dtype(df[c]) and has(df, c)]
        if not cols:
            continue
        series = [Series(c, _x(df), floats(df, c), hidden=i >= 8) for i, c in enumerate(cols)]
        out.append(Figure(f"table_{t.lower()}", f"Table `{t}`", f"Every numeric column of the `{t}` table "
                          "(only the first 8 start visible; click the legend to show others).", "lines", series,
                          x_label=_x_label(df), y_label="value", phases=d.phases, section="Other metrics"))
    return out


GENERIC: list[Builder] = [loss_curves, accuracy_curves, per_position("train", "loss"), per_position("test", "loss"),
                          per_position("test", "acc"), weight_norm]
MODULAR: list[Builder] = [progress_losses, local_learning_coefficient, test_over_restricted, gini, key_coefficients, excluded_per_frequency,
                          embed_spectrum, wl_spectrum, logit_fourier, attention, neuron_activations, neuron_fourier,
                          neuron_fve_histogram, neuron_clusters, cluster_wl]
EXTRA: list[Builder] = [other_progress_columns, other_metric_columns, other_tables]


def build_all(d: RunData) -> tuple[list[Figure], list[Missing]]:
    """Every figure this run can show now, and the ones it cannot yet (with what they need)."""
    figs: list[Figure] = []
    missing: list[Missing] = []
    if d.is_lm:
        builders = lm_figures.BUILDERS + [local_learning_coefficient] + EXTRA
    else:
        builders = GENERIC + (MODULAR if d.is_modular else []) + EXTRA
    for build in builders:
        got = build(d)
        for item in got if isinstance(got, list) else [got]:
            (figs if isinstance(item, Figure) else missing).append(item)
    return figs, missing
