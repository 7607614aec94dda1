"""How each claim of the replication page is measured: plain functions from a reproduction
folder's runs (report/results.py) to a `Measure` (report/claims.py holds the rows that use them).

Extractors read what training and analysis stored (run.json, summary.json, the metrics and
progress tables) and compute no measure of their own: they read a stored curve at a point (the
first epoch it crosses a level, its change over a phase), divide two stored numbers, and take the
median and range over seeds. Summary keys are read defensively (analysis grows new ones): a key
that analysis does not write gives a measure with no value whose note names the key.

Outcomes of a run, used by many claims (`outcome`): grokked (test accuracy passes 99% at least
GAP times later than train accuracy does), generalised at once (sooner), memorised only, neither.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from grokscope.config import format_value
from grokscope.report.results import Results, RunView, same

GAP = 3.0  # grokking = test accuracy passes 99% at least GAP times later than train accuracy does
SPIKE = 10.0  # a slingshot: train loss rises SPIKE-fold over its lowest value since the last one settled
INF = math.inf

@dataclass(frozen=True)
class Measure:
    """What we measured for one claim.

    value: what the rule judges. None: nothing to judge (the runs are missing, unfinished, or lack
    a key: `note` says which); NaN: measured, and the event the claim needs never happened.
    """

    value: float | None = None
    text: str = ""
    values: tuple[float, ...] = ()
    note: str = ""
    runs: tuple[str, ...] = ()



# ------------------------------------------------------------------------------------ helpers
def fmt_num(v: float | None, kind: str = "g") -> str:
    if v is None:
        return "none"
    if isinstance(v, float) and math.isnan(v):
        return "never"
    if kind == "pct":
        return f"{v:.1%}"
    if kind == "epoch":
        return f"{v:,.0f}"
    return f"{v:.3g}"


def spread(values: Sequence[float], kind: str = "g", unit: str = "runs") -> str:
    """One value as is; several as "median [min-max] over n runs" (NaN, "never", sorts last); `unit`
    names what the values are of (runs, heads, clusters)."""
    vals = list(values)
    if not vals:
        return "none"
    if len(vals) == 1:
        return fmt_num(vals[0], kind)
    real = sorted(v for v in vals if not math.isnan(v))
    never = len(vals) - len(real)
    if not real:
        return f"never (all {len(vals)} {unit})"
    med = statistics.median(real)
    out = f"{fmt_num(med, kind)} [{fmt_num(real[0], kind)}-{fmt_num(real[-1], kind)}] over {len(real)} {unit}"
    return out + (f", never in {never}" if never else "")


def median(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    real = [v for v in vals if not math.isnan(v)]
    return statistics.median(real) if real else math.nan


def key(s: dict[str, Any], *names: str) -> Any:
    """The first of `names` that the summary holds with a value (analysis grows new keys), at
    its top level or in its model table (`tables.model`, the paper's Table 5 row)."""
    tables = s.get("tables") if isinstance(s.get("tables"), dict) else {}
    model = tables.get("model") if isinstance(tables.get("model"), list) and tables.get("model") else [{}]
    for n in names:
        for where in (s, model[0] if isinstance(model[0], dict) else {}):
            v = where.get(n)
            if v is not None:
                return v
    return None


def number(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def table_rows(s: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """A list-of-rows summary entry, at the top level or under `tables`."""
    for where in (s, s.get("tables") if isinstance(s.get("tables"), dict) else {}):
        rows = where.get(name)
        if isinstance(rows, list) and all(isinstance(r, dict) for r in rows) and rows:
            return rows
    return []


def row_named(s: dict[str, Any], table: str, pattern: str, exclude: str | None = None) -> dict[str, Any] | None:
    """The row of `table` whose `name` matches `pattern` (a regex, case-insensitive)."""
    for r in table_rows(s, table):
        name = str(r.get("name", ""))
        if re.search(pattern, name, re.I) and not (exclude and re.search(exclude, name, re.I)):
            return r
    return None


def missing_runs(res: Results, exp: str, **where: Any) -> Measure:
    """Why there is nothing to judge: no runs (matching `where`), or none finished (with where they are)."""
    runs = res.matching(exp, **where)
    cond = ", ".join(f"{k.replace('__', '.')}={'null' if v is None else v}" for k, v in where.items())
    which = f"`{exp}` runs" + (f" with {cond}" if cond else "")
    if not runs:
        return Measure(note=f"not run: no {which} in this folder")
    states = ", ".join(sorted({f"{r.status} at step {r.info.get('last_step')}" for r in runs}))
    return Measure(note=f"not finished: {len(runs)} {which} ({states})")


def no_key(keys: str, runs: Sequence[RunView], null: Sequence[str] = ()) -> Measure:
    """Why a measure is missing: no analysis, a key analysis wrote as null (`null`: the keys to
    check), or a key it does not write."""
    analysed = [r for r in runs if r.summary]
    if not analysed:
        return Measure(note="not analysed: no summary.json (run `grokscope analyze`)", runs=names(runs))
    if any(n in r.summary for r in analysed for n in null):
        return Measure(note=f"not measured: {keys} is null in summary.json (the run has no key frequencies "
                       "or no MLP)", runs=names(runs))
    return Measure(note=f"not measured: summary.json has no {keys} (analysis does not write it yet)", runs=names(runs))


def names(runs: Sequence[RunView]) -> tuple[str, ...]:
    return tuple(r.path.parent.name + "/" + r.name if r.settings else r.name for r in runs)


def first_epoch(df: pd.DataFrame, col: str, test: Callable[[pd.Series], pd.Series]) -> float | None:
    """The first epoch at which `test(df[col])` holds; None when the column is missing, NaN when never."""
    if col not in df or "epoch" not in df or not len(df):
        return None
    hit = df.loc[test(df[col]).fillna(False).astype(bool), "epoch"]
    return float(hit.iloc[0]) if len(hit) else math.nan


def memorise_epoch(r: RunView) -> float | None:
    """First epoch with train accuracy at 99% or more (metrics), NaN if never."""
    return first_epoch(r.metrics, "train_acc", lambda c: c >= 0.99)


def outcome(r: RunView) -> str:
    """grokked (test accuracy passes 99% at least GAP times later than train accuracy),
    generalised at once (within GAP times), memorised only, or neither."""
    g, m = r.grok_epoch, memorise_epoch(r)
    if g is not None:
        if m is None or math.isnan(m):
            return "generalised at once"
        return "grokked" if g >= GAP * max(m, 1.0) else "generalised at once"
    return "memorised only" if m is not None and not math.isnan(m) else "neither"


def share(runs: Sequence[RunView], test: Callable[[RunView], bool], label: Callable[[RunView], str]) -> Measure:
    """The share of runs for which `test` holds, with each run's label."""
    hits = [bool(test(r)) for r in runs]
    detail = "; ".join(f"{describe(r)}: {label(r)}" for r in runs)
    return Measure(sum(hits) / len(hits), f"{sum(hits)} of {len(hits)} runs. {detail}",
                   tuple(float(h) for h in hits), runs=names(runs))


def describe(r: RunView) -> str:
    """A run named by its swept settings (seed last), or its folder."""
    if not r.settings:
        return r.name
    return ", ".join(f"{k.split('.')[-1]} {format_value(v)}" for k, v in r.settings.items())


def grok_text(r: RunView) -> str:
    o = outcome(r)
    g = r.grok_epoch
    at = (f" (99% at epoch {fmt_num(g, 'epoch')})" if g is not None else
          f" (within {r.budget}; test accuracy {fmt_num(last(r.metrics, 'test_acc'), 'pct')} at the end)")
    return o + at


def change(r: RunView, phase: str, col: str) -> float | None:
    """The change of `col` over a phase, as analysis recorded it (phase_evidence.changes)."""
    ev = r.summary.get("phase_evidence")
    ch = ev.get("changes", {}).get(phase, {}) if isinstance(ev, dict) else {}
    return number(ch.get(col)) if isinstance(ch, dict) else None


def phase(r: RunView, name: str) -> list[float] | None:
    ph = r.summary.get("phases")
    span = ph.get(name) if isinstance(ph, dict) else None
    return [float(span[0]), float(span[1])] if isinstance(span, list | tuple) and len(span) == 2 else None


def chance_loss(r: RunView) -> float:
    p = number(r.setting("task.p")) or 113
    return math.log(p)


# ------------------------------------------------------------------------------ generic extractors
def summary_value(exp: str, keys: Sequence[str], kind: str = "g", what: str = "",
                  **where: Any) -> Callable[[Results], Measure]:
    """The median (and range) over the experiment's finished runs of the first summary key present."""

    def extract(res: Results) -> Measure:
        runs = res.finished(exp, **where)
        if not runs:
            return missing_runs(res, exp)
        vals = [number(key(r.summary, *keys)) for r in runs]
        got = [v for v in vals if v is not None]
        if not got:
            return no_key(" or ".join(f"`{k}`" for k in keys), runs, null=keys)
        return Measure(median(got), f"{what}{spread(got, kind)}", tuple(got), runs=names(runs))

    return extract


def ablation_ratio(exp: str, table: str, pattern: str, what: str, exclude: str | None = None,
                   against_chance: bool = False, wanted: str = "") -> Callable[[Results], Measure]:
    """Loss after an ablation (a `table` row named like `pattern`) over the loss of the model as
    it is (the row named "none"), or over chance (ln p) with against_chance."""

    def extract(res: Results) -> Measure:
        runs = res.finished(exp)
        if not runs:
            return missing_runs(res, exp)

        def measured(r: RunView, summary: dict[str, Any]) -> tuple[float, float, float | None] | None:
            """(ablated loss, reference loss, ablated accuracy) from summary's `table`."""
            row, base = row_named(summary, table, pattern, exclude), row_named(summary, table, r"^none$")
            loss = number((row or {}).get("loss"))
            ref = chance_loss(r) if against_chance else number((base or {}).get("loss"))
            if row is None or loss is None or not ref:
                return None
            return loss, ref, number(row.get("acc"))

        vals, parts, at_end = [], [], []
        for r in runs:
            m = measured(r, r.summary)
            if m is None:
                continue
            loss, ref, acc = m
            vals.append(loss / ref)
            parts.append(f"loss {fmt_num(loss)} vs {'chance ' if against_chance else ''}{fmt_num(ref)}"
                         + (f", accuracy {fmt_num(acc, 'pct')}" if acc is not None else ""))
            end = r.summary.get(f"{table}_cleanup_end")
            if isinstance(end, dict) and end.get("step") != r.summary.get("step"):
                e = measured(r, {table: end.get("rows")})
                if e is not None:
                    at_end.append(f"{fmt_num(e[0] / e[1])} at epoch {number(end.get('epoch')) or 0:,.0f}")
        if not vals:
            return no_key(wanted or f"a `{table}` row matching /{pattern}/", runs)
        ratio = "loss / chance loss (ln p)" if against_chance else "loss ratio (ablated / as is)"
        cleanup = f"; at the end of cleanup (not judged): {', '.join(at_end)}" if at_end else ""
        return Measure(median(vals), f"{what}: {ratio} {spread(vals)}; {'; '.join(parts)}{cleanup}", tuple(vals),
                       runs=names(runs))

    return extract


def outcome_share(exp: str, wanted: Sequence[str], what: str, **where: Any) -> Callable[[Results], Measure]:
    """The share of finished runs (matching `where`) whose outcome is one of `wanted`."""

    def extract(res: Results) -> Measure:
        runs = res.finished(exp, **where)
        if not runs:
            return missing_runs(res, exp, **where)
        m = share(runs, lambda r: outcome(r) in wanted, grok_text)
        return Measure(m.value, f"{what}: {m.text}", m.values, runs=m.runs)

    return extract


def finished_of(res: Results, exps: str | Sequence[str]) -> list[RunView]:
    """The finished runs of one experiment, or of several in turn."""
    return [r for e in ((exps,) if isinstance(exps, str) else exps) for r in res.finished(e)]


def first_of(exps: str | Sequence[str]) -> str:
    return exps if isinstance(exps, str) else exps[0]


def circuit_text(r: RunView) -> str:
    """Where the key frequencies alone (the restricted model: every other frequency ablated from
    the logits) pass 99% test accuracy, for a run whose full model did not."""
    pr = r.progress
    if "restricted_acc_test" not in pr:
        return ""
    e = first_epoch(pr, "restricted_acc_test", lambda c: c >= 0.99)
    if e is None:
        return ""
    at_end = fmt_num(last(pr, "restricted_acc_test"), "pct")
    return (f"; the key frequencies alone: 99% test accuracy from epoch {fmt_num(e, 'epoch')}, {at_end} at the end"
            if not math.isnan(e) else f"; the key frequencies alone: {at_end} test accuracy at the end")


def trained_longest(runs: Sequence[RunView]) -> list[RunView]:
    """The runs whose last evaluation came latest (ties kept): the furthest a budget took them."""
    ends = [last(r.metrics, "epoch") for r in runs]
    known = [e for e in ends if e is not None and not math.isnan(e)]
    return [r for r, e in zip(runs, ends, strict=True) if e == max(known)] if known else list(runs)


def longest_per_setting(runs: Sequence[RunView]) -> list[RunView]:
    """One run per setting (a trial's name: its swept values and seed): where two experiments ran
    the same one at two budgets, the one trained longest."""
    best: dict[str, RunView] = {}
    for r in runs:
        key = r.name
        if key not in best or trained_longest([best[key], r]) == [r]:
            best[key] = r
    return list(best.values())


def grok_epochs_of(exps: str | Sequence[str], circuit: bool = False) -> Callable[[Results], Measure]:
    """Test accuracy above 99%: the share of runs that grokked, with their epochs; a setting run by
    several of `exps` counts once, at its longest run. With `circuit`, each run that did not grok
    also says how far its key frequencies alone got (circuit_text)."""

    def label(r: RunView) -> str:
        return grok_text(r) + (circuit_text(r) if circuit and outcome(r) != "grokked" else "")

    def extract(res: Results) -> Measure:
        runs = longest_per_setting(finished_of(res, exps))
        if not runs:
            return missing_runs(res, first_of(exps))
        m = share(runs, lambda r: outcome(r) == "grokked", label)
        epochs = [r.grok_epoch if r.grok_epoch is not None else math.nan for r in runs]
        return Measure(m.value, f"grokking epoch {spread(epochs, 'epoch')}. {m.text}", m.values, runs=m.runs)

    return extract


def curves_coincide(exp: str, **where: Any) -> Callable[[Results], Measure]:
    """Largest gap between test and train loss over training, in decades (|log10 test/train|)."""

    def extract(res: Results) -> Measure:
        runs = res.finished(exp, **where)
        if not runs:
            return missing_runs(res, exp, **where)
        gaps, parts = [], []
        for r in runs:
            m = r.metrics
            if not {"train_loss", "test_loss"} <= set(m.columns) or len(m) < 2:
                continue
            m = m.iloc[1:]  # the first evaluation is at initialisation
            g = (m["test_loss"].clip(lower=1e-30) / m["train_loss"].clip(lower=1e-30)).map(math.log10).abs()
            gaps.append(float(g.max()))
            parts.append(f"{describe(r)}: {grok_text(r)}, final test accuracy {fmt_num(last(m, 'test_acc'), 'pct')}")
        if not gaps:
            return Measure(note="not measured: the metrics tables have no train and test loss", runs=names(runs))
        return Measure(median(gaps), f"largest |log10(test loss / train loss)|, in decades: {spread(gaps)}; "
                       + "; ".join(parts), tuple(gaps), runs=names(runs))

    return extract


def last(df: pd.DataFrame, col: str) -> float | None:
    if col not in df or not len(df):
        return None
    vals = df[col].dropna()
    return float(vals.iloc[-1]) if len(vals) else None


def late_generalisation(r: RunView) -> float:
    """1 when the run memorised first and test accuracy passed 99% later (grokked), 0.5 when it
    memorised and then test accuracy rose by half of what was left but stayed below 99%, else 0."""
    if outcome(r) == "grokked":
        return 1.0
    mem = memorise_epoch(r)
    if mem is None or math.isnan(mem) or "test_acc" not in r.metrics:
        return 0.0
    m = r.metrics
    at_mem = m.loc[m["epoch"] >= mem, "test_acc"]
    if not len(at_mem):
        return 0.0
    a0, a1 = float(at_mem.iloc[0]), float(at_mem.max())
    return 0.5 if a1 - a0 >= 0.5 * (1 - a0) and a1 < 0.99 else 0.0


def never_generalises(exp: str, **where: Any) -> Callable[[Results], Measure]:
    """The share of runs that memorised and whose test accuracy then never made half of its way
    to 100% (late_generalisation 0): a run that climbs to 98% has generalised, though not to 99%."""

    def extract(res: Results) -> Measure:
        runs = res.finished(exp, **where)
        if not runs:
            return missing_runs(res, exp, **where)
        m = share(runs, lambda r: outcome(r) == "memorised only" and late_generalisation(r) == 0.0,
                  lambda r: f"{grok_text(r)}, best test accuracy {fmt_num(best(r.metrics, 'test_acc'), 'pct')}")
        return Measure(m.value, f"never generalised: {m.text}", m.values, runs=m.runs)

    return extract


def best(df: pd.DataFrame, col: str) -> float | None:
    """The column's highest value, or None when there is none (as `last`)."""
    return float(df[col].max()) if col in df and len(df) else None


def finite_groks(exp: str, **where: Any) -> Callable[[Results], Measure]:
    """late_generalisation over the runs: 1 grokked, 0.5 generalised late but below 99%, else 0."""

    def extract(res: Results) -> Measure:
        runs = res.finished(exp, **where)
        if not runs:
            return missing_runs(res, exp, **where)
        vals = [late_generalisation(r) for r in runs]
        detail = "; ".join(f"{describe(r)}: {grok_text(r)}, memorised at epoch {fmt_num(memorise_epoch(r), 'epoch')}, "
                           f"final test accuracy {fmt_num(last(r.metrics, 'test_acc'), 'pct')}" for r in runs)
        return Measure(median(vals), detail, tuple(vals), runs=names(runs))

    return extract


TABLE5_COLUMNS = (("gini_W_E", ("gini_W_E",), "Gini(W_E)"), ("gini_W_L", ("gini_W_L",), "Gini(W_L)"),
                  ("logit_fve", ("logit_fve",), "logit FVE"), ("mlp_fve", ("mlp_fve",), "MLP FVE"))


def table5(exps: str | Sequence[str], paper: dict[str, tuple[float, float]], slack: float = 0.05,
           grokked_only: bool = True) -> Callable[[Results], Measure]:
    """Table 5's columns: the share of columns whose median over our runs lies in the paper's
    range (widened by `slack`); key frequencies count as a column (their number). With
    `grokked_only`, over the runs that passed 99% test accuracy; when none did, over the runs
    trained longest (the models nearest to the paper's finished ones)."""

    def extract(res: Results) -> Measure:
        runs = finished_of(res, exps)
        which = ""
        if grokked_only:
            grokked = [r for r in runs if r.grok_epoch is not None]
            if not grokked and runs:
                longest = trained_longest(runs)
                which = (f"none passed 99%, so over the {len(longest)} run(s) trained longest "
                         f"({fmt_num(last(longest[0].metrics, 'epoch') or math.nan, 'epoch')} epochs): ")
            runs = grokked or trained_longest(runs)
        if not runs:
            return missing_runs(res, first_of(exps))
        inside, parts, missing = [], [], []
        for col, keys, label in TABLE5_COLUMNS:
            if col not in paper:
                continue
            vals = [v for v in (number(key(r.summary, *keys)) for r in runs) if v is not None]
            lo, hi = paper[col]
            if not vals:
                missing.append(col)
                continue
            med = median(vals)
            inside.append(med is not None and lo - slack <= med <= hi + slack)
            parts.append(f"{label} {spread(vals)} (paper {lo:g}-{hi:g})")
        if "keys" in paper:
            counts = [float(len(r.summary["key_frequencies"])) for r in runs
                      if isinstance(r.summary.get("key_frequencies"), list)]
            if counts:
                lo, hi = paper["keys"]
                med = median(counts)
                inside.append(med is not None and lo <= med <= hi)
                parts.append(f"key frequencies {spread(counts)} (paper {lo:g}-{hi:g})")
            else:
                missing.append("key_frequencies")
        if not inside:
            return no_key(", ".join(f"`{c}`" for c in missing), runs)
        note = f"summary.json has no {', '.join(f'`{c}`' for c in missing)}" if missing else ""
        return Measure(sum(inside) / len(inside), f"{which}{sum(inside)} of {len(inside)} columns in the paper's range "
                       f"(Ginis and FVEs within {slack:g} of it): "
                       + "; ".join(parts), tuple(float(x) for x in inside), note=note, runs=names(runs))

    return extract


# ------------------------------------------------------------------------------ mainline extractors
def mainline_grokking(res: Results) -> Measure:
    runs = res.finished("mainline")
    if not runs:
        return missing_runs(res, "mainline")
    r = runs[0]
    g = r.grok_epoch
    v = g if g is not None else math.nan
    return Measure(v, f"test accuracy above 99% at epoch {fmt_num(v, 'epoch')}"
                   + (f" (within {r.budget})" if g is None else "")
                   + f"; above 50% at epoch {fmt_num(number(r.info.get('grok_epoch_50')) or math.nan, 'epoch')}",
                   (v,), runs=names(runs))


def mainline_memorises(res: Results) -> Measure:
    runs = res.finished("mainline")
    if not runs:
        return missing_runs(res, "mainline")
    r = runs[0]
    mem = memorise_epoch(r)
    if mem is None:
        return Measure(note="not measured: the metrics table has no train accuracy", runs=names(runs))
    if math.isnan(mem):
        return Measure(math.nan, f"train accuracy never reached 99% (within {r.budget})", runs=names(runs))
    m = r.metrics
    acc = float(m.loc[m["epoch"] >= mem, "test_acc"].iloc[0])
    return Measure(acc, f"train accuracy reached 99% at epoch {fmt_num(mem, 'epoch')}, when test accuracy was "
                   f"{fmt_num(acc, 'pct')}", (acc,), runs=names(runs))


def key_frequency_count(exp: str, key: str = "key_frequencies", what: str = "key frequencies"
                        ) -> Callable[[Results], Measure]:
    """The number of frequencies in a summary list (`key_frequencies`, `embed_frequencies`)."""

    def extract(res: Results) -> Measure:
        runs = res.finished(exp)
        if not runs:
            return missing_runs(res, exp)
        have = [r for r in runs if isinstance(r.summary.get(key), list)]
        if not have:
            return no_key(f"`{key}`", runs)
        counts = [float(len(r.summary[key])) for r in have]
        sets = "; ".join(f"{describe(r)}: {r.summary[key]}" for r in have)
        alt = [f"{k.removeprefix('key_frequencies_')} rule {have[0].summary[k]}" for k in
               ("key_frequencies_wl", "key_frequencies_neurons")
               if key == "key_frequencies" and isinstance(have[0].summary.get(k), list)]
        return Measure(median(counts), f"{spread(counts)} {what}: {sets}"
                       + (f" (by rule, first run: {', '.join(alt)})" if alt else ""), tuple(counts), runs=names(have))

    return extract


def logit_fit_loss(res: Results) -> Measure:
    runs = res.finished("mainline")
    if not runs:
        return missing_runs(res, "mainline")
    vals, parts = [], []
    for r in runs:
        fit, base = number(r.summary.get("logit_fit_loss")), row_named(r.summary, "ablations", r"^none$")
        ref = number((base or {}).get("loss"))
        if fit is not None and ref:
            vals.append(fit / ref)
            parts.append(f"loss {fmt_num(ref)} as is, {fmt_num(fit)} with the fitted logits")
    if not vals:
        return no_key("`logit_fit_loss` and an `ablations` row named none", runs)
    return Measure(median(vals), f"loss ratio (fitted / as is) {spread(vals)}: {'; '.join(parts)}", tuple(vals),
                   runs=names(runs))


def neuron_fve(res: Results) -> Measure:
    m = summary_value("mainline", ("neuron_fve",), "pct", "share of neurons explained (FVE > 0.85): ")(res)
    runs = res.finished("mainline")
    if m.value is None or not runs:
        return m
    s = runs[0].summary
    extra = [f"{n} neurons" for n in [s.get("neurons_explained")] if n is not None]
    alt = number(s.get("neuron_fve_all_freqs"))
    if alt is not None:
        extra.append(f"best of all frequencies: {alt:.1%}")
    return Measure(m.value, m.text + (f" ({'; '.join(extra)})" if extra else ""), m.values, runs=m.runs)


def mlp_fve(res: Results) -> Measure:
    m = summary_value("mainline", ("mlp_fve",), "pct", "mean FVE of the 2|K| MLP components: ")(res)
    runs = res.finished("mainline")
    if m.value is None or not runs:
        return m
    comps = table_rows(runs[0].summary, "mlp_fve_components") or table_rows(runs[0].summary, "mlp_fve")
    fves = [number(c.get("fve")) for c in comps if number(c.get("fve")) is not None]
    if fves:
        return Measure(m.value, m.text + f" (components {min(fves):.1%}-{max(fves):.1%})", m.values, runs=m.runs)
    return m


def key_ablation(res: Results) -> Measure:
    """The smallest loss ratio over the single-key-frequency ablations."""
    runs = res.finished("mainline")
    if not runs:
        return missing_runs(res, "mainline")
    vals, parts = [], []
    for r in runs:
        if r.summary and r.summary.get("key_frequencies") == []:
            return Measure(math.nan, "the run has no key frequencies to ablate", runs=names(runs))
        base = number((row_named(r.summary, "ablations", r"^none$") or {}).get("loss"))
        rows = [x for x in table_rows(r.summary, "ablations") if re.match(r"remove key \d+", str(x.get("name")))]
        if not base or not rows:
            continue
        ratios = {x["name"]: number(x.get("loss")) / base for x in rows if number(x.get("loss")) is not None}
        if ratios:
            worst = min(ratios, key=ratios.__getitem__)
            vals.append(ratios[worst])
            parts.append(f"smallest: {worst}, loss {fmt_num(ratios[worst] * base)} vs {fmt_num(base)}")
    if not vals:
        return no_key("`ablations` rows named none and remove key K", runs)
    return Measure(median(vals), f"loss ratio for the least harmful key frequency {spread(vals)}; {'; '.join(parts)}",
                   tuple(vals), runs=names(runs))


def attention_fit(res: Results) -> Measure:
    runs = res.finished("mainline")
    if not runs:
        return missing_runs(res, "mainline")
    heads = table_rows(runs[0].summary, "attention_heads")
    fves = [number(h.get("fve")) for h in heads if number(h.get("fve")) is not None]
    if not fves:
        return no_key("`attention_heads` rows with `fve`", runs)
    paper_fit = any("alpha" in h for h in heads)
    how = ("fit of the pre-softmax score by one wave (C.1.3)" if paper_fit
           else "share of the post-softmax pattern in one frequency's 2D block (ours; the paper fits the score)")
    per = ", ".join(f"head {h.get('head')}: {fmt_num(number(h.get('fve')), 'pct')} (freq {h.get('freq')})" for h in heads)
    return Measure(median(fves), f"FVE of the {how}: {per}", tuple(fves), runs=names(runs))


def head_key(field_name: str, what: str) -> Callable[[Results], Measure]:
    """The median over the mainline's heads of a per-head summary field."""

    def extract(res: Results) -> Measure:
        runs = res.finished("mainline")
        if not runs:
            return missing_runs(res, "mainline")
        vals = [number(h.get(field_name)) for h in table_rows(runs[0].summary, "attention_heads")]
        vals = [v for v in vals if v is not None]
        if not vals:
            return no_key(f"`attention_heads[].{field_name}`", runs)
        return Measure(median(vals), f"{what} {spread(vals, 'pct', 'heads')}", tuple(vals), runs=names(runs))

    return extract


def cluster_locality(res: Results) -> Measure:
    runs = res.finished("mainline")
    if not runs:
        return missing_runs(res, "mainline")
    rows = table_rows(runs[0].summary, "clusters")
    vals = [number(c.get("wl_share")) for c in rows if number(c.get("wl_share")) is not None]
    if not vals:
        return no_key("`clusters[].wl_share` (the share of each cluster's W_L columns' Fourier energy at the "
                      "cluster's own frequency)", runs)
    return Measure(median(vals), f"share of each cluster's W_L energy at its own frequency {spread(vals, 'pct', 'clusters')}",
                   tuple(vals), runs=names(runs))


def skip_connection(res: Results) -> Measure:
    every = [r for exp in ("mainline", "data-fraction", "two-layer", "dropout") for r in res.finished(exp)]
    runs = [r for r in every if r.grok_epoch is not None]
    if not runs:
        return missing_runs(res, "mainline") if not every else Measure(
            note="not run: no finished run of mainline, data-fraction, two-layer or dropout generalised",
            runs=names(every))
    vals, parts = [], []
    for r in runs:
        base = row_named(r.summary, "skip_ablations", r"^none$")
        ab = [x for x in table_rows(r.summary, "skip_ablations") if x is not base]
        acc0 = number((base or {}).get("acc"))
        accs = [number(x.get("acc")) for x in ab if number(x.get("acc")) is not None]
        if acc0 and accs:
            vals.append(min(accs) / acc0)
            parts.append(f"{r.path.parent.name if r.settings else r.name} {describe(r) if r.settings else ''}: "
                         f"accuracy {fmt_num(acc0, 'pct')} -> {fmt_num(min(accs), 'pct')}")
    if not vals:
        return no_key("`skip_ablations` rows (none, zero- and mean-ablated skip connection)", runs)
    return Measure(median(vals), f"accuracy ablated / as is {spread(vals)}; " + "; ".join(parts), tuple(vals),
                   runs=names(runs))


def phase_end(exp: str, name: str) -> Callable[[Results], Measure]:
    """The epoch at which a phase ends (NaN when analysis located no such phase)."""

    def extract(res: Results) -> Measure:
        runs = [r for r in res.finished(exp) if r.summary]
        if not runs:
            return missing_runs(res, exp) if not res.finished(exp) else no_key("`phases`", res.finished(exp))
        ends = [(phase(r, name) or [math.nan, math.nan])[1] for r in runs]
        spans = "; ".join(f"{describe(r)}: {fmt_span(phase(r, name))}" for r in runs)
        return Measure(median(ends), f"{name.replace('_', ' ')} ends at epoch {spread(ends, 'epoch')} ({spans})",
                       tuple(ends), runs=names(runs))

    return extract


def fmt_span(span: list[float] | None) -> str:
    return "not located" if span is None else f"{span[0]:,.0f}-{span[1]:,.0f}"


def phase_signature(name: str, signs: dict[str, int], what: str) -> Callable[[Results], Measure]:
    """The share of a phase's expected curve movements (`signs`: column -> +1 rise, -1 fall) seen
    over the phase in the mainline (from analysis's phase_evidence)."""

    def extract(res: Results) -> Measure:
        runs = res.finished("mainline")
        if not runs:
            return missing_runs(res, "mainline")
        r = runs[0]
        if not r.summary:
            return no_key("`phases`", runs)
        span = phase(r, name)
        if span is None:
            return Measure(math.nan, f"analysis located no {name.replace('_', ' ')} phase", runs=names(runs))
        seen, parts = [], []
        for col, sign in signs.items():
            d = change(r, name, col)
            if d is None:
                continue
            seen.append(d * sign > 0)
            parts.append(f"{col} {'rose' if d > 0 else 'fell'} by {abs(d):.3g}")
        if not seen:
            return no_key(f"`phase_evidence.changes.{name}`", runs)
        return Measure(sum(seen) / len(seen), f"epochs {fmt_span(span)}: {', '.join(parts)} ({what})",
                       tuple(float(x) for x in seen), runs=names(runs))

    return extract


def restricted_leads(res: Results) -> Measure:
    """How much earlier restricted loss falls below 1 nat than test loss does, as a share of the
    epoch at which test loss does."""
    runs = res.finished("mainline")
    if not runs:
        return missing_runs(res, "mainline")
    pr = runs[0].progress
    e_r = first_epoch(pr, "restricted_loss", lambda c: c < 1.0)
    e_t = first_epoch(pr, "test_loss", lambda c: c < 1.0)
    if e_r is None or e_t is None:
        return Measure(note="not analysed: the progress table has no restricted and test loss", runs=names(runs))
    if math.isnan(e_t) or math.isnan(e_r):
        return Measure(math.nan, f"restricted loss below 1 at epoch {fmt_num(e_r, 'epoch')}, test loss at "
                       f"{fmt_num(e_t, 'epoch')}", runs=names(runs))
    lead = (e_t - e_r) / max(e_t, 1.0)
    return Measure(lead, f"restricted loss fell below 1 nat at epoch {e_r:,.0f}, test loss at {e_t:,.0f} "
                   f"(a lead of {lead:.0%} of the latter)", (lead,), runs=names(runs))


def weight_norm_sharper(res: Results) -> Measure:
    """How much faster the sum of squared weights falls per epoch in cleanup than in circuit formation."""
    runs = res.finished("mainline")
    if not runs:
        return missing_runs(res, "mainline")
    r = runs[0]
    rates = {}
    for name in ("circuit_formation", "cleanup"):
        span, d = phase(r, name), change(r, name, "weight_norm")
        if span is not None and d is not None and span[1] > span[0]:
            rates[name] = -d / (span[1] - span[0])
    if len(rates) < 2:
        return Measure(math.nan if r.summary else None, "analysis located no circuit formation and cleanup with "
                       "weight-norm changes" if r.summary else "", note="" if r.summary else "not analysed",
                       runs=names(runs))
    cf, cu = rates["circuit_formation"], rates["cleanup"]
    if cf <= 0:
        return Measure(math.nan, f"the weight norm did not fall in circuit formation ({cf:.3g}/epoch)", runs=names(runs))
    return Measure(cu / cf, f"falls {cf:.3g}/epoch in circuit formation, {cu:.3g}/epoch in cleanup "
                   f"({cu / cf:.1f}x)", (cu / cf,), runs=names(runs))


def restricted_accuracy(res: Results) -> Measure:
    """The share of checkpoints between memorisation and grokking at which restricted accuracy on
    the test pairs is above test accuracy."""
    runs = res.finished("mainline")
    if not runs:
        return missing_runs(res, "mainline")
    r = runs[0]
    pr = r.progress
    col = "restricted_acc_test" if "restricted_acc_test" in pr else "restricted_acc"
    if col not in pr or "test_acc" not in pr:
        return Measure(note="not analysed: the progress table has no restricted accuracy", runs=names(runs))
    mem, g = (phase(r, "memorization") or [0, 0])[1], r.grok_epoch
    end = g if g is not None else float(pr["epoch"].max())
    span = pr[(pr["epoch"] >= mem) & (pr["epoch"] <= end)]
    if not len(span):
        return Measure(math.nan, "no checkpoints between memorisation and grokking", runs=names(runs))
    above = float((span[col] > span["test_acc"]).mean())
    return Measure(above, f"{col} above test accuracy at {above:.0%} of the {len(span)} checkpoints from epoch "
                   f"{mem:,.0f} to {end:,.0f}", (above,), runs=names(runs))


def spikes(values: Sequence[float], fold: float = SPIKE) -> list[int]:
    """Indices at which a curve spikes: it rises above `fold` x its lowest value since the last
    spike settled. A spike settles once the curve has fallen `fold`-fold from its peak; the lowest
    value then starts again from there, so a train loss that slingshots again before it regains
    its old minimum still counts each time."""
    out, low, peak = [], INF, None
    for i, v in enumerate(values):
        v = float(v)
        if math.isnan(v):
            continue
        if peak is not None:  # inside a spike: wait until it has fallen back
            peak = max(peak, v)
            if v < peak / fold:
                peak, low = None, v
            continue
        low = min(low, v)
        if v > fold * low:
            out.append(i)
            peak = v
    return out


def slingshots(r: RunView) -> int | None:
    """Slingshots: the summary's `slingshots` (a count or a list of epochs) when analysis writes it;
    else the train loss's `spikes` in the metrics table after train accuracy reached 99% (from the
    start when it never did)."""
    s = r.summary.get("slingshots")
    if isinstance(s, int | float) and not isinstance(s, bool):
        return int(s)
    if isinstance(s, list):
        return len(s)
    m, mem = r.metrics, memorise_epoch(r)
    if "train_loss" not in m or mem is None:
        return None
    if math.isnan(mem):
        mem = 0.0
    return len(spikes(m.loc[m["epoch"] >= mem, "train_loss"].dropna().tolist()))


def slingshot_share(exps: Sequence[str], want: bool, grokked_only: bool) -> Callable[[Results], Measure]:
    """The share of runs with (want=True) or without slingshots."""

    def extract(res: Results) -> Measure:
        done = finished_of(res, exps)
        runs = [r for r in done if not grokked_only or r.grok_epoch is not None]
        if not done:
            return missing_runs(res, exps[0])
        if not runs:
            return Measure(note=f"not run: no finished run of {' or '.join(exps)} grokked", runs=names(done))
        runs = [r for r in runs if slingshots(r) is not None]
        if not runs:
            return Measure(note="not measured: the metrics tables have no train loss and no summary has `slingshots`")
        m = share(runs, lambda r: (slingshots(r) or 0) > 0 if want else slingshots(r) == 0,
                  lambda r: f"{slingshots(r)} slingshot(s), {grok_text(r)}")
        return m

    return extract


def excluded_rises(exp: str) -> Callable[[Results], Measure]:
    """The share of runs whose excluded loss rose by 0.1 decades or more from its lowest value
    before grokking to grokking (progress table)."""

    def rise(r: RunView) -> float | None:
        pr, g = r.progress, r.grok_epoch
        if "excluded_loss" not in pr or not len(pr):
            return None
        end = g if g is not None else float(pr["epoch"].max())
        before = pr[pr["epoch"] <= end]["excluded_loss"].clip(lower=1e-30)
        if len(before) < 2:
            return None
        low_i = before.idxmin()
        return math.log10(float(before.loc[low_i:].max()) / float(before.loc[low_i]))

    def extract(res: Results) -> Measure:
        runs = [r for r in res.finished(exp) if rise(r) is not None]
        if not runs:
            return missing_runs(res, exp) if not res.finished(exp) else Measure(
                note="not analysed: the progress table has no excluded loss", runs=names(res.finished(exp)))
        return share(runs, lambda r: (rise(r) or 0) >= 0.1,
                     lambda r: f"excluded loss rose {rise(r):.2f} decades before grokking; {grok_text(r)}")

    return extract


# ------------------------------------------------------------------------------ sweep extractors
def seeds_key_frequencies(res: Results) -> Measure:
    runs = [r for r in res.finished("seeds") if isinstance(r.summary.get("key_frequencies"), list)]
    if not runs:
        return missing_runs(res, "seeds") if not res.finished("seeds") else no_key("`key_frequencies`", res.finished("seeds"))
    sets = [tuple(r.summary["key_frequencies"]) for r in runs]
    m = share(runs, lambda r: 3 <= len(r.summary["key_frequencies"]) <= 5, lambda r: str(r.summary["key_frequencies"]))
    distinct = len(set(sets))
    return Measure(m.value, f"{m.text}. {distinct} distinct sets among {len(sets)} seeds", m.values, runs=m.runs)


def seeds_memorisation(res: Results) -> Measure:
    return phase_end("seeds", "memorization")(res)


def seeds_ablations(res: Results) -> Measure:
    runs = [r for r in res.finished("seeds") if table_rows(r.summary, "ablations")]
    if not runs:
        return missing_runs(res, "seeds") if not res.finished("seeds") else no_key("`ablations`", res.finished("seeds"))

    def holds(r: RunView) -> bool:
        base = row_named(r.summary, "ablations", r"^none$") or {}
        key_gone = row_named(r.summary, "ablations", r"remove all key") or {}
        rest_gone = row_named(r.summary, "ablations", r"remove all non-key") or {}
        worse = (number(key_gone.get("loss")) or 0) >= chance_loss(r)
        better = (number(rest_gone.get("test_loss")) or INF) <= (number(base.get("test_loss")) or 0) * 1.0000001
        return worse and better

    def label(r: RunView) -> str:
        base = row_named(r.summary, "ablations", r"^none$") or {}
        k = row_named(r.summary, "ablations", r"remove all key") or {}
        nk = row_named(r.summary, "ablations", r"remove all non-key") or {}
        return (f"test loss {fmt_num(number(base.get('test_loss')))}, key frequencies removed "
                f"{fmt_num(number(k.get('loss')))} (chance {chance_loss(r):.2f}), others removed "
                f"{fmt_num(number(nk.get('test_loss')))}")

    return share(runs, holds, label)


def by_setting(res: Results, exp: str, key_name: str) -> dict[float, list[RunView]]:
    groups: dict[float, list[RunView]] = {}
    for r in res.finished(exp):
        v = number(r.setting(key_name))
        if v is not None:
            groups.setdefault(v, []).append(r)
    return dict(sorted(groups.items()))


def grok_or_inf(r: RunView) -> float:
    return r.grok_epoch if r.grok_epoch is not None else INF


def monotone(exp: str, key_name: str, decreasing: bool, only: Callable[[float], bool] = lambda v: True,
             what: str = "") -> Callable[[Results], Measure]:
    """The share of neighbouring settings (ascending `key_name`) whose median grokking epoch moves
    the expected way (runs that never grokked count as later than any that did)."""

    def extract(res: Results) -> Measure:
        groups = {v: rs for v, rs in by_setting(res, exp, key_name).items() if only(v)}
        if len(groups) < 2:
            return missing_runs(res, exp) if len(groups) == 0 else Measure(
                note=f"not run: only one {key_name} setting finished", runs=names([r for rs in groups.values() for r in rs]))
        med = {v: statistics.median([grok_or_inf(r) for r in rs]) for v, rs in groups.items()}
        vals = list(med.values())
        ok = [(b <= a) if decreasing else (b >= a) for a, b in zip(vals, vals[1:], strict=False)]
        # two settings that both never grokked say nothing about the trend
        ok = [o for o, a, b in zip(ok, vals, vals[1:], strict=False) if not (a == INF and b == INF)]
        text = "; ".join(f"{key_name.split('.')[-1]} {v:g}: {'never' if m == INF else f'{m:,.0f}'}"
                         for v, m in med.items())
        if not ok:
            return Measure(math.nan, f"no setting grokked ({text})", runs=names([r for rs in groups.values() for r in rs]))
        return Measure(sum(ok) / len(ok), f"{what}grokking epoch by setting: {text}", tuple(float(o) for o in ok),
                       runs=names([r for rs in groups.values() for r in rs]))

    return extract


def weight_decay_epochs(res: Results) -> Measure:
    """The share of the paper's three weight decays whose grokking epoch lies within 2x of its."""
    paper = {3.0: (3000, 3000), 1.0: (5000, 10000), 0.3: (20000, 20000)}
    groups = by_setting(res, "weight-decay", "optim.weight_decay")
    hits, parts = [], []
    for wd, (lo, hi) in paper.items():
        rs = next((v for k, v in groups.items() if same(k, wd)), None)
        if not rs:
            continue
        g = statistics.median([grok_or_inf(r) for r in rs])
        hits.append(lo / 2 <= g <= hi * 2)
        parts.append(f"wd {wd:g}: {'never' if g == INF else f'{g:,.0f}'} (paper {lo:,}" + (f"-{hi:,})" if hi != lo else ")"))
    if not hits:
        return missing_runs(res, "weight-decay")
    return Measure(sum(hits) / len(hits), "; ".join(parts), tuple(float(h) for h in hits),
                   runs=names([r for rs in groups.values() for r in rs]))


def no_decay_excluded(res: Results) -> Measure:
    """How far excluded loss rose (decades) from its lowest value to the end, without weight decay:
    the footnote's variant (the maximum over all frequencies, progress column `excluded_loss_max`)."""
    runs = res.finished("weight-decay", optim__weight_decay=0.0)
    if not runs:
        return missing_runs(res, "weight-decay", optim__weight_decay=0.0)
    vals, parts = [], []
    for r in runs:
        pr = r.progress
        col = "excluded_loss_max" if "excluded_loss_max" in pr else None
        if col is None and r.summary.get("key_frequencies"):
            col = "excluded_loss"
        if col is None or not len(pr):
            continue
        c = pr[col].clip(lower=1e-30)
        low_i = c.idxmin()
        rise = math.log10(float(c.loc[low_i:].max()) / float(c.loc[low_i]))
        vals.append(rise)
        parts.append(f"{describe(r)}: {col} rose {rise:.2f} decades after its minimum at epoch {pr.loc[low_i, 'epoch']:,.0f}")
    if not vals:
        return Measure(note="not measured: the progress table has no `excluded_loss_max` (the footnote's "
                       "variant over all frequencies) and the run has no key frequencies", runs=names(runs))
    return Measure(median(vals), "; ".join(parts), tuple(vals), runs=names(runs))


def data_fraction_immediate(res: Results) -> Measure:
    runs = [r for v, rs in by_setting(res, "data-fraction", "task.frac_train").items() if v >= 0.6 for r in rs]
    if not runs:
        return missing_runs(res, "data-fraction")
    return share(runs, lambda r: outcome(r) == "generalised at once", grok_text)


def data_fraction_memorise(res: Results) -> Measure:
    groups = by_setting(res, "data-fraction", "task.frac_train")
    mems = {v: median([memorise_epoch(r) or math.nan for r in rs]) for v, rs in groups.items()}
    real = {v: m for v, m in mems.items() if m is not None and not math.isnan(m)}
    if len(real) < 2:
        return missing_runs(res, "data-fraction") if not groups else Measure(
            math.nan, "fewer than two fractions memorised", runs=names([r for rs in groups.values() for r in rs]))
    ratio = max(real.values()) / max(min(real.values()), 1.0)
    text = "; ".join(f"{v:g}: {m:,.0f}" for v, m in real.items())
    return Measure(ratio, f"train accuracy reached 99% at epochs {text} (slowest / fastest {ratio:.1f}x)", (ratio,),
                   runs=names([r for rs in groups.values() for r in rs]))


def fourier_everywhere(res: Results) -> Measure:
    """The share of generalising modular runs trained with weight decay whose logits are explained
    by their key frequencies (at least one key frequency and logit FVE >= 0.6)."""
    exps = ("mainline", "seeds", "data-fraction", "weight-decay", "primes", "two-layer")
    runs = [r for r in finished_of(res, exps)
            if r.grok_epoch is not None and (number(r.setting("optim.weight_decay")) or 0) > 0 and r.summary]
    if not runs:
        return Measure(note="not run: no generalising modular run trained with weight decay and analysed")

    def ok(r: RunView) -> bool:
        return bool(r.summary.get("key_frequencies")) and (number(r.summary.get("logit_fve")) or 0) >= 0.6

    m = share(runs, ok, lambda r: f"keys {r.summary.get('key_frequencies')}, logit FVE "
              f"{fmt_num(number(r.summary.get('logit_fve')), 'pct')}")
    labelled = [f"{r.path.parent.name if r.settings else r.name}" for r in runs]
    return Measure(m.value, f"{m.text} (from {', '.join(sorted(set(labelled)))})", m.values, runs=m.runs)


def primes_run(p: int, wd: float | None, wanted: Sequence[str], what: str) -> Callable[[Results], Measure]:
    where: dict[str, Any] = {"task__p": p}
    if wd is not None:
        where["optim__weight_decay"] = wd
    return outcome_share("primes", wanted, what, **where)


def p401_fractions(res: Results) -> Measure:
    """p = 401 at three or more training fractions (primes-401-fractions, and the primes
    experiment's 30% run): the smaller ones immediately overfit and never generalise, the largest
    generalises at once."""
    runs: dict[float, list[RunView]] = {}
    for exp in ("primes", "primes-401-fractions"):
        for v, rs in by_setting(res, exp, "task.frac_train").items():
            runs.setdefault(v, []).extend(r for r in rs if same(r.setting("task.p"), 401))
    runs = {v: rs for v, rs in sorted(runs.items()) if rs}
    if len(runs) < 3:
        return Measure(note="not run: fewer than three training fractions at p = 401 (`grokscope reproduce "
                       "primes-401-fractions` runs 5%, 10% and 30%)")
    fracs = sorted(runs)
    expect = {f: ("generalised at once",) if f == fracs[-1] else ("memorised only", "neither") for f in fracs}
    flat = [r for f in fracs for r in runs[f]]
    return share(flat, lambda r: outcome(r) in expect[number(r.setting("task.frac_train")) or 0], grok_text)


def l1_fourier(res: Results) -> Measure:
    """Gini(W_E) with L1 over Gini(W_E) with weight decay 1 (seeds, else the mainline), with each
    L1 run's Fourier and neuron-basis Ginis beside it (Appendix D.1: sparse in neurons, not in
    frequencies)."""
    l1_runs, wd_runs = res.finished("l1"), res.finished("seeds") or res.finished("mainline")
    l1 = [v for v in (number(r.summary.get("gini_W_E")) for r in l1_runs) if v is not None]
    wd = [v for v in (number(r.summary.get("gini_W_E")) for r in wd_runs) if v is not None]
    if not l1 or not wd:
        return missing_runs(res, "l1") if not l1 else Measure(note="not run: no seeds or mainline run to compare with")
    ratio = (median(l1) or 0) / max(median(wd) or 0, 1e-9)
    wd_neurons = [v for v in (number(r.summary.get("gini_neurons")) for r in wd_runs) if v is not None]
    by_run = "; ".join(f"{describe(r)}: Gini(W_E) {fmt_num(number(r.summary.get('gini_W_E')))}, neurons "
                       f"{fmt_num(number(r.summary.get('gini_neurons')))}" for r in l1_runs)
    neurons = f"; in the neuron basis with weight decay 1 {spread(wd_neurons)}" if wd_neurons else ""
    return Measure(ratio, f"Gini(W_E) with L1 {spread(l1)}, with weight decay 1 {spread(wd)}: ratio {ratio:.2f}"
                   f"{neurons}. By run: {by_run}", tuple(l1), runs=names(l1_runs))


def digits_learned_apart(res: Results) -> Measure:
    """Infinite-data digit addition: how many different evaluations the answer digits are learned
    at (each position's test loss first falling below half its first value)."""
    runs = res.finished("digit-addition", task__n_train=None)
    if not runs:
        return missing_runs(res, "digit-addition", task__n_train=None)
    r = runs[0]
    m = r.metrics
    cols = sorted((c for c in m.columns if c.startswith("test_loss_pos")), key=lambda c: int(c.removeprefix("test_loss_pos")))
    if not cols or len(m) < 2:
        return Measure(note="not measured: the metrics table has no per-position test loss (test_loss_pos*)",
                       runs=names(runs))
    steps = {}
    for c in cols:
        v0 = float(m[c].iloc[0])
        hit = m.loc[m[c] < 0.5 * v0, "step"]
        steps[c.removeprefix("test_loss_")] = float(hit.iloc[0]) if len(hit) else math.nan
    distinct = len({s for s in steps.values() if not math.isnan(s)})
    text = ", ".join(f"{k} {fmt_num(v, 'epoch')}" for k, v in steps.items())
    return Measure(float(distinct), f"{distinct} distinct steps at which a digit's test loss halves ({text})",
                   (float(distinct),), runs=names(runs))


def induction_accuracy(res: Results) -> Measure:
    runs = res.finished("repeated-subsequence", task__n_train=512) or [
        r for r in res.finished("repeated-subsequence") if r.setting("task.n_train") is not None]
    if not runs:
        return missing_runs(res, "repeated-subsequence", task__n_train=512)
    accs = [last(r.metrics, "test_acc") for r in runs]
    accs = [a for a in accs if a is not None]
    if not accs:
        return Measure(note="not measured: no test accuracy in the metrics table", runs=names(runs))
    return Measure(median(accs), f"final test accuracy on the repeated tokens {spread(accs, 'pct')}", tuple(accs),
                   runs=names(runs))


# ------------------------------------------------------------------------------------ Lv et al. 2024
# The copy LM's claims read the `claim1`, `claim3` and `claim2_events` entries that the LM analysis
# (lm/analysis.py) writes to each run's summary: the loss-stable step, the copy surge and each
# layer's induction onset, by the rules stated there.
def copy_surge_step(r: RunView, event: str = "copy_surge") -> float:
    """A run's copy surge step (summary `claim1.copy_surge`, exact match, or `copy_token_surge`,
    per token), +inf when it had none."""
    c1 = r.summary.get("claim1") if isinstance(r.summary.get("claim1"), dict) else {}
    hit = c1.get(event)
    return float(hit["step"]) if isinstance(hit, dict) and number(hit.get("step")) is not None else INF


def surge_kind(runs: Sequence[RunView]) -> str:
    """The copy surge to compare runs by: exact match (`copy_surge`) where at least half the runs'
    exact-match accuracy surged, else per token (`copy_token_surge`). At CPU scale exact match
    often peaks near the 0.1 a surge must rise, so per token is then the measure that moved."""
    exact = sum(copy_surge_step(r) < INF for r in runs)
    return "copy_surge" if exact and 2 * exact >= len(runs) else "copy_token_surge"


def lm_analysed(res: Results, exp: str) -> tuple[list[RunView], Measure | None]:
    """The experiment's finished runs with the LM summary, or why there are none."""
    runs = res.finished(exp)
    if not runs:
        return [], missing_runs(res, exp)
    have = [r for r in runs if isinstance(r.summary.get("claim1"), dict)]
    return (have, None) if have else ([], no_key("`claim1`", runs))


def surge_after_loss(r: RunView) -> tuple[float | None, bool, str]:
    """One run's claim 1: (copy surge step / loss-stable step or None, whether the surge is exact
    match's, what it says)."""
    c1 = r.summary["claim1"]
    stable, exact, token = c1.get("loss_stable"), c1.get("copy_surge"), c1.get("copy_token_surge")
    col = c1.get("copy_column", "pcopy_acc")
    if not exact and not token:
        return None, False, f"copy accuracy ({col}) never rose by 0.1 in {r.budget}"
    if not stable:
        return None, False, f"the training loss was still falling at the end of {r.budget}"
    surge, kind = (exact, "exact-match") if exact else (token, "per-token")
    col = col if exact else col.replace("_acc", "_token_acc")
    ratio = surge["step"] / max(stable["step"], 1)
    text = (f"training loss stable from step {stable['step']:,}; {kind} copy accuracy ({col}) surged at "
            f"step {surge['step']:,}, from {surge.get('from', 0):.2f} to {surge.get('to', 0):.2f} (10-90% of the "
            f"rise in {surge.get('rise_steps', 0):,} steps): {ratio:.1f}x later")
    if not exact:
        text += "; exact-match accuracy never rose by 0.1"
    return ratio, bool(exact), text


def copy_after_loss(res: Results) -> Measure:
    """Claim 1: the copy surge's step over the step from which the training loss is stable (the
    paper: 15B over 5B tokens, 3x), on the real text (copy-lm). Where copying never rose there (or
    it did not run) and the labelled ablation (copy-lm-spans) ran, on the ablation, saying so, with
    the copy-learning-rate trials at its learning rate as its further seeds (the same recipe); the
    median over those runs. A per-token surge (exact match never rose) counts as partly at best."""
    runs, why = lm_analysed(res, "copy-lm")
    prefix = ""
    if why or not any(copy_surge_step(r, e) < INF for r in runs for e in ("copy_surge", "copy_token_surge")):
        spans, no_spans = lm_analysed(res, "copy-lm-spans")
        if not no_spans:
            real = ("not in this folder" if why else
                    f"copy accuracy ({runs[0].summary['claim1'].get('copy_column', 'pcopy_acc')}) never rose by 0.1 "
                    f"in {runs[0].budget}")
            prefix = f"real text (copy-lm): {real}; the labelled ablation (copy-lm-spans): "
            lr, seeds = number(spans[0].setting("optim.lr")), {r.seed for r in spans}
            more, _ = lm_analysed(res, "copy-learning-rate")
            runs = spans + [r for r in more if same(number(r.setting("optim.lr")), lr) and r.seed not in seeds]
            why = None
    if why:
        return why
    each = [surge_after_loss(r) for r in runs]
    ratios = [x for x, _, _ in each if x is not None]
    one = len(runs) == 1  # one run's text needs no run label and no median
    detail = each[0][2] if one else "; ".join(f"{describe(r)}: {t}" for r, (_, _, t) in zip(runs, each, strict=True))
    if not ratios:
        return Measure(math.nan, prefix + ("" if one else f"{len(runs)} runs. ") + detail, runs=names(runs))
    med = statistics.median(ratios)
    all_exact = all(x is not None and e for x, e, _ in each)
    head = "" if one else f"median {med:.1f}x over {len(ratios)} of {len(runs)} runs. "
    return Measure(med if all_exact else min(med, 1.99), prefix + head + detail, tuple(ratios), runs=names(runs))


ORDER_VALUE = {"shallow_to_deep": 1.0, "simultaneous": 0.5, "mixed": 0.5, "deep_to_shallow": 0.0}


@dataclass(frozen=True)
class LayerOrder:
    """One run's claim 3: its layers' first crossings of 0.1 and of 0.3 (a formed head), the
    orders over depth the summary names, and the run's score (`score`)."""
    onsets: str  # "layer 0: never; layer 1: step 2,000; ..."
    order: str  # at 0.1
    rho: float | None
    formed: list[tuple[int, int]]  # (layer, step) of the layers that passed 0.3
    formed_order: str

    @property
    def score(self) -> float:
        """Shallow to deep 1; simultaneous, mixed, or shallow to deep at 0.1 but reversed among
        the layers that pass 0.3, 0.5; deep to shallow 0; one layer or none 0 (no order over depth
        shows)."""
        value = ORDER_VALUE.get(self.order, 0.0)
        if value == 1.0 and self.formed_order == "deep_to_shallow":
            return 0.5
        return value

    def said(self) -> str:
        text = self.order.replace("_", " ") + (f", Spearman {self.rho:.2f}" if self.rho is not None else "")
        if self.formed:
            text += "; above 0.3: " + ", ".join(f"layer {i} at step {s:,}" for i, s in self.formed)
            text += f" ({self.formed_order.replace('_', ' ')})" if len(self.formed) > 1 else ""
        return text


def layer_order_of(r: RunView) -> LayerOrder | None:
    """A run's claim 3 from its summary, or None where the summary has no `claim3` at 0.1."""
    c3 = r.summary.get("claim3") if isinstance(r.summary.get("claim3"), dict) else {}
    ths = c3.get("thresholds") or {}
    th, formed = ths.get("0.1"), ths.get("0.3")
    if not isinstance(th, dict):
        return None
    onsets = [f"layer {i}: " + ("never" if f is None else f"step {f['step']:,}") for i, f in enumerate(th.get("formed", []))]
    formed = formed if isinstance(formed, dict) else {}
    return LayerOrder("; ".join(onsets), str(th.get("order", "")), number(th.get("spearman")),
                      [(i, f["step"]) for i, f in enumerate(formed.get("formed", [])) if f],
                      str(formed.get("order", "")))


def shallow_to_deep(res: Results) -> Measure:
    """Claim 3: the order over depth in which layers' best induction scores first pass 0.1
    (summary `claim3`), checked against the order of those that pass 0.3, from the deep model
    where it ran (copy-lm-deep, with copy-lm-deep-seeds' further seeds), else copy-lm. The value
    is the mean over runs of LayerOrder.score."""
    exp = "copy-lm-deep" if res.finished("copy-lm-deep") else "copy-lm"
    runs, why = lm_analysed(res, exp)
    if why:
        return why
    if exp == "copy-lm-deep":
        runs += lm_analysed(res, "copy-lm-deep-seeds")[0]
    read = [(r, layer_order_of(r)) for r in runs]
    missing = [r for r, x in read if x is None]
    if missing:
        return no_key("`claim3`", missing)
    each = [(r, x) for r, x in read if x is not None]
    scores = [x.score for _, x in each]
    value = statistics.mean(scores)
    if len(each) == 1:
        x = each[0][1]
        return Measure(value, f"{exp}, first step with an induction score above 0.1: {x.onsets}"
                       + (f": {x.said()}" if x.order in ORDER_VALUE else f" ({x.said()})"), runs=names(runs))
    crossed = sum(x.order in ORDER_VALUE for _, x in each)
    head = (f"{exp} over {len(each)} seeds, first step with an induction score above 0.1; two or more layers "
            f"crossed in {crossed} of {len(each)} runs; mean score {value:.2f}. ")
    text = "; ".join(f"seed {r.seed}: {x.onsets} ({x.said()})" for r, x in each)
    return Measure(value, head + text, tuple(scores), runs=names(runs))


PAPER_BATCHES = (32, 64, 128)  # Lv et al.'s per-GPU batch sizes, in sequences


def steps_not_tokens(res: Results) -> Measure:
    """Claim 2: across batch sizes, the spread (CV) of the mean copy surge in steps against in
    tokens (lm.analysis.surge_spread over the runs' `claim2_events`): steps 1, neither 0.5,
    tokens 0. The spread needs its event in every run, so the event is the first that every run
    had: exact match's surge, per token's, or else the induction head's onset (the circuit that
    copies; the 50-sample copy test can stay too noisy to surge by 0.1 after the head has
    formed), said so. Where no event is in every run the row is undecided (NaN).

    copy-batch-size-large's runs (batch 64 and 128), where they ran, join copy-batch-size's, and
    the text gives the spread over the paper's own batch sizes (PAPER_BATCHES) beside the verdict,
    which stays the one over every batch size."""
    from grokscope.lm.analysis import INDUCTION_FORMED, surge_spread

    runs, why = lm_analysed(res, "copy-batch-size")
    if why:
        return why
    runs += lm_analysed(res, "copy-batch-size-large")[0]
    events = [r.summary.get("claim2_events") if isinstance(r.summary.get("claim2_events"), dict) else {} for r in runs]
    key = next((k for k in ("copy", "copy_token", "induction") if all(ev.get(k) for ev in events)), "copy_token")
    points = []
    for r, ev in zip(runs, events, strict=True):
        b = (number(r.setting("train.batch_size")) or 0) * (number(r.setting("train.grad_accum")) or 1)
        points.append({"batch_size": b, "seed": r.seed, "surge": ev.get(key), "last_step": r.summary.get("step")})
    s = surge_spread(points)
    what = {"copy": "copy surge", "copy_token": "per-token copy surge",
            "induction": f"induction head's onset (induction_max above {INDUCTION_FORMED:g})"}[key]
    if key == "induction":
        missing = sum(not ev.get("copy_token") for ev in events)
        what += f", standing in for the copy surge: per-token copy accuracy never surged in {missing} of {len(runs)} runs"
    per = "; ".join(f"batch {row['batch_size']}: {row['surged']}/{row['runs']} surged"
                    + (f", mean step {row['mean_step']:,.0f} ({row['mean_tokens'] / 1e6:.1f}M tokens)"
                       if row["mean_step"] is not None else "")
                    for row in s["batch_sizes"])
    if len(s["batch_sizes"]) < 2:
        return Measure(note=f"not run: one batch size finished ({per})", runs=names(runs))
    if s["verdict"] is None:
        return Measure(math.nan, f"undecided: {len(s['censored'])} run(s) without a {what} ({per})",
                       runs=names(runs))
    value = {"steps": 1.0, "neither": 0.5, "tokens": 0.0}[s["verdict"]]
    paper = surge_spread([p for p in points if p["batch_size"] in PAPER_BATCHES])
    among = ""
    if len(paper["batch_sizes"]) >= 2 and paper["verdict"] is not None:
        sizes = ", ".join(str(row["batch_size"]) for row in paper["batch_sizes"])
        among = (f"; among the paper's batch sizes that ran ({sizes}): {paper['cv_steps']:.2f} in steps, "
                 f"{paper['cv_tokens']:.2f} in tokens: {paper['verdict']}")
    return Measure(value, f"CV of the {what} across batch sizes: {s['cv_steps']:.2f} in steps, {s['cv_tokens']:.2f} in "
                   f"tokens: {s['verdict']}{among} ({per})", runs=names(runs))


def surge_earlier(exp: str, key_name: str) -> Callable[[Results], Measure]:
    """Claims 4 and 5: the share of settings whose median copy surge comes before the reference
    setting's. Learning rate: each rate against the next lower one. Regularisation: each setting
    against the one without (every swept value 0). Runs without a surge count as later than any.
    The surge is the exact-match one, or the per-token one (`surge_kind`). Earlier means by more
    than the evaluation interval (train.eval_every): surges are only known to an evaluation."""

    def extract(res: Results) -> Measure:
        runs, why = lm_analysed(res, exp)
        if why:
            return why
        keys = [k.strip() for k in key_name.split(",")]
        groups: dict[tuple[float, ...], list[RunView]] = {}
        for r in runs:
            groups.setdefault(tuple(number(r.setting(k)) or 0.0 for k in keys), []).append(r)
        event = surge_kind(runs)
        med = {k: statistics.median([copy_surge_step(r, event) for r in rs]) for k, rs in sorted(groups.items())}
        if len(med) < 2:
            return Measure(note=f"not run: one {key_name} setting finished", runs=names(runs))
        settings = list(med)
        if len(keys) == 1:  # each against the next lower value
            pairs = list(zip(settings[:-1], settings[1:], strict=True))
        else:
            base = tuple(0.0 for _ in keys)
            if base not in med:
                return Measure(note=f"not run: no run without regularisation ({key_name} all 0)", runs=names(runs))
            pairs = [(base, k) for k in settings if k != base]
        resolution = max((number(r.setting("train.eval_every")) or 0.0 for r in runs), default=0.0)
        ok = [med[b] < med[a] - resolution for a, b in pairs if not (med[a] == INF and med[b] == INF)]
        def label(setting: tuple[float, ...]) -> str:
            return ", ".join(f"{k.split('.')[-1]} {v:g}" for k, v in zip(keys, setting, strict=True))

        text = "; ".join(f"{label(s)}: " + ("no surge" if m == INF else f"step {m:,.0f}") for s, m in med.items())
        if not ok:
            return Measure(math.nan, f"no setting's copy accuracy surged ({text})", runs=names(runs))
        kind = "copy surge" if event == "copy_surge" else "per-token copy surge (exact match surged in fewer than half the runs)"
        return Measure(sum(ok) / len(ok), f"median {kind} by setting: {text}; earlier by more than "
                       f"{resolution:,.0f} steps (an evaluation interval) in {sum(ok)} of {len(ok)} comparisons",
                       tuple(float(o) for o in ok), runs=names(runs))

    return extract
