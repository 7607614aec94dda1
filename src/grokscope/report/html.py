"""Page assembly: one run's self-contained report, and the sortable index of many runs.

A run page embeds plotly.js once (from the installed plotly package) and each figure's data as a
JSON block, so it opens from a file:// URL with no network. Every piece of text that comes from a
user or from the store (run names, config strings, table cells, notes) goes through `esc`; figure
JSON is made safe to sit inside a <script> element by escaping `<`, `>` and `&`.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from grokscope.report.base import Figure, Missing, fmt, phase_colour
from grokscope.report.data import RunData, describe_model, describe_task

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222; background: #fafafa; }
main { max-width: 1180px; margin: 0 auto; padding: 16px 28px 60px; }
main.wide { max-width: none; }
.small { font-size: 12px; color: #666; }
h1 { font-size: 24px; margin: 10px 0 4px; word-break: break-all; }
h2 { font-size: 19px; margin: 30px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 22px 0 2px; }
.meta, .caption, .src { color: #555; }
.caption { margin: 2px 0 6px; max-width: 900px; }
.plot { background: #fff; border: 1px solid #e3e3e3; border-radius: 4px; min-height: 200px; }
.note { background: #fff8e0; border-left: 4px solid #e0b000; padding: 8px 12px; margin: 10px 0; }
.warn { background: #fdecea; border-left: 4px solid #d33; padding: 8px 12px; margin: 10px 0; }
table { border-collapse: collapse; background: #fff; margin: 6px 0 12px; }
th, td { border: 1px solid #ddd; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[data-dir="asc"]::after { content: " \\25B2"; }
table.sortable th[data-dir="desc"]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #fff; border: 1px solid #ddd; padding: 10px; overflow: auto; max-height: 480px; }
nav.toc { columns: 2; font-size: 13px; }
nav.toc a { display: block; }
.phase { display: inline-block; padding: 0 6px; border-radius: 3px; }
"""

SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, i) {
    th.addEventListener('click', function () {
      var dir = th.dataset.dir === 'asc' ? 'desc' : 'asc';
      table.querySelectorAll('th').forEach(function (h) { delete h.dataset.dir; });
      th.dataset.dir = dir;
      var key = function (row) {
        var cell = row.cells[i], v = cell.dataset.v !== undefined ? cell.dataset.v : cell.textContent.trim();
        return (v !== '' && !isNaN(Number(v))) ? Number(v) : v.toLowerCase();
      };
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === '' || y === '') { return x === y ? 0 : (x === '' ? 1 : -1); }  // blanks last
        if (typeof x !== typeof y) { return typeof x === 'number' ? -1 : 1; }
        return (x < y ? -1 : x > y ? 1 : 0) * (dir === 'asc' ? 1 : -1);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

DRAW_JS = """
document.querySelectorAll('div.plot[data-fig]').forEach(function (div) {
  var spec = JSON.parse(document.getElementById(div.dataset.fig).textContent);
  Plotly.newPlot(div, spec.data, spec.layout, {displaylogo: false, responsive: true});
});
"""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def script_json(text: str) -> str:
    """JSON text made safe inside <script>: `</script>` and `<!--` can no longer appear."""
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def table(rows: Iterable[Mapping[str, Any]], cls: str = "") -> str:
    """An HTML table of dict rows (columns: the union of keys, in first-seen order), all cells escaped."""
    rows = list(rows)
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            num = isinstance(v, int | float) and not isinstance(v, bool)
            cells.append(f'<td class="num" data-v="{esc(v)}">{esc(fmt(v))}</td>' if num else f"<td>{esc(fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    c = f' class="{esc(cls)}"' if cls else ""
    return f"<table{c}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# ------------------------------------------------------------------------------------ run page
SUMMARY_KEYS = ("step", "key_frequencies", "key_frequencies_source", "key_frequencies_neurons", "neuron_fve",
                "neurons_explained", "neuron_fve_mean", "neuron_fve_all_freqs", "mlp_fve", "mlp_fve_std", "logit_fve",
                "wl_residual", "logit_fit_loss", "logit_fit_acc", "restricted_loss",
                "restricted_acc", "excluded_loss", "test_loss", "test_acc", "gini_W_E", "gini_W_L", "gini_basis",
                "key_rule", "phase_rule")


def _status(d: RunData) -> tuple[str, list[str]]:
    """A one-line status and the notes a reader needs (still training, analysis out of date)."""
    info = d.info
    status, last, total = info.get("status", "unknown"), info.get("last_step"), info.get("total_steps")
    line = f"status: {status}; step {fmt(last)} of {fmt(total)}"
    if info.get("grok_epoch_50") is not None or info.get("grok_epoch_99") is not None:
        line += (f"; test accuracy above 50% at epoch {fmt(info.get('grok_epoch_50'))},"
                 f" above 99% at epoch {fmt(info.get('grok_epoch_99'))}")
    notes = []
    if status in ("running", "interrupted", "failed"):
        notes.append(f"This run is {status} (step {fmt(last)} of {fmt(total)}): the report shows what exists so "
                     "far. Rebuild it at any time with `grokscope report RUN`.")
    if d.summary is None and d.is_modular:
        notes.append("No analysis yet (analysis/summary.json is missing): the progress measures, Fourier figures and "
                     "summary tables appear after `grokscope analyze RUN`, then `grokscope report RUN`.")
    elif d.summary is None and d.task.get("name") == "text":
        notes.append("No analysis yet (analysis/summary.json is missing): run `grokscope analyze RUN`, then "
                     "`grokscope report RUN`.")
    elif d.summary is not None and isinstance(d.summary.get("step"), int | float) and isinstance(last, int | float) and d.summary["step"] < last:
        notes.append(f"The analysis is of step {fmt(d.summary['step'])}; the run has reached step {fmt(last)} since. "
                     "Rerun `grokscope analyze RUN` to bring it up to date.")
    return line, notes


def _when(hit: Any) -> str | None:
    """{"step": S, "tokens": T} (an LM summary's event) as text."""
    if isinstance(hit, Mapping) and "step" in hit:
        return f"step {fmt(hit['step'])} ({fmt(hit.get('tokens'))} tokens)"
    return None


def _copy_50(s: Mapping[str, Any], hit_key: str, best_key: str) -> str:
    """When a copy test's exact accuracy first passed 50% (summary key `hit_key`), or its best."""
    if s.get(hit_key):
        return f"exact accuracy above 50% at {_when(s[hit_key])}"
    return f"50% not reached (exact accuracy at most {fmt(s.get(best_key))})"


def _copy_surge(s: Mapping[str, Any]) -> str | None:
    """The copy-surge row: the paper's copy test (Lv et al.), the headline, then the hex variant.

    A run without the paper's test (logged before it existed, or a summary written before the
    analysis read it) says so, then shows the hex variant.
    """
    if "copy_50" not in s and "paper_copy_50" not in s:
        return None
    if s.get("best_paper_copy_accuracy") is not None:
        paper = f"the paper's copy test (Lv et al.): {_copy_50(s, 'paper_copy_50', 'best_paper_copy_accuracy')}"
    else:
        paper = "the paper's copy test (Lv et al.): not in this run's analysis summary"
    if "copy_50" not in s:
        return paper
    return f"{paper}; hex variant: {_copy_50(s, 'copy_50', 'best_copy_accuracy')}"


def _ours_lm(d: RunData, key: str) -> Any:
    """A copy-LM run's value for a quantity of Lv et al. (read from its summary, run.json, config)."""
    s, info, cfg = d.summary or {}, d.info, d.config
    if key == "copy_surge":
        return _copy_surge(s)
    if key == "loss_flattens":
        return _when(s.get("loss_flattens")) and f"90% of the training-loss drop done at {_when(s['loss_flattens'])}"
    if key == "induction_heads" and isinstance(s.get("induction_formed"), list):
        return "; ".join(f"layer {n}: {_when(hit) or 'never'}" for n, hit in enumerate(s["induction_formed"])) + (
            f" (first evaluation with a head's induction score above {fmt(s.get('induction_threshold', 0.3))})")
    if key == "model":
        task = d.task
        return (f"{describe_model(dict(cfg.get('model') or {}))}, {fmt(info.get('n_params'))} parameters, "
                f"{task.get('tokenizer', '?')} tokens (vocab {fmt(info.get('d_vocab'))}), context {task.get('context')}, "
                f"{fmt((cfg.get('train') or {}).get('batch_size'))} sequences per step")
    if key == "tokens":
        return info.get("last_tokens", info.get("total_tokens"))
    if key == "learning_rates":
        return (cfg.get("optim") or {}).get("lr")
    return s.get(key, info.get(key))


def _ours(d: RunData, key: str) -> Any:
    """This run's value for a quantity the paper reports under `key`."""
    if d.is_lm:
        return _ours_lm(d, key)
    s, info = d.summary or {}, d.info
    if key == "grok_epoch":
        return {"above 50%": info.get("grok_epoch_50"), "above 99%": info.get("grok_epoch_99")}
    if key == "phases":
        return d.phases or None
    if key == "neuron_fve" and isinstance(s.get("neuron_fve"), int | float):
        arr = d.arrays.get("neuron_fve")
        share = f"{s['neuron_fve']:.1%} of neurons above 0.85"
        if isinstance(s.get("neurons_explained"), int) and arr is not None:
            return f"{share} ({s['neurons_explained']} of {arr.size})"
        return f"{share} ({int((arr > 0.85).sum())} of {arr.size})" if arr is not None and arr.ndim == 1 else share
    return s.get(key, info.get(key))


def paper_section(d: RunData) -> str:
    if not d.paper:
        return ""
    paper = d.paper.get("paper") if isinstance(d.paper.get("paper"), Mapping) else {}
    head = []
    if d.paper.get("title"):
        head.append(f"<b>{esc(d.paper['title'])}</b>")
    if d.paper.get("reproduces"):
        head.append(f"reproduces {esc(d.paper['reproduces'])}")
    rows = [{"quantity": k, "the paper reports": fmt(v), "this run": fmt(_ours(d, k))} for k, v in paper.items()]
    sep = " \u2014 "
    change = ""
    if d.paper.get("data_change"):
        ours = ""
        if d.is_lm:
            t = d.task
            ours = f" This run: task.repeat_frac = {fmt(t.get('repeat_frac', 0.0))}"
            if t.get("repeat_random"):
                ours += (f", task.repeat_random = {fmt(t.get('repeat_random'))} (that share of the repeated spans is "
                         f"random token ids), task.repeat_symbols = {fmt(t.get('repeat_symbols', 0))}")
            ours += "."
        change = f"<div class='note'><b>Data change from the paper:</b> {esc(d.paper['data_change'])}{esc(ours)}</div>"
    return (f"<h2 id='paper'>What the paper reports, beside this run</h2><p class='src'>{sep.join(head)}"
            f"{'<br>' if head else ''}Source: {esc(d.paper_source)}.</p>" + change + (table(rows) if rows else ""))


def _rows(v: Any) -> bool:
    """A list of dicts: shown as a table."""
    return isinstance(v, list) and bool(v) and all(isinstance(r, Mapping) for r in v)


def _nested(v: Any) -> bool:
    return isinstance(v, Mapping) and any(isinstance(x, Mapping | list) for x in v.values())


def summary_section(d: RunData) -> str:
    s = d.summary
    if s is None:
        return ""
    parts = ["<h2 id='summary'>Analysis summary</h2>"]
    parts.append(table([{"quantity": k, "value": fmt(s[k])} for k in SUMMARY_KEYS if k in s]))
    phases = s.get("phases") if isinstance(s.get("phases"), Mapping) else {}
    if phases:
        paper_phases = ((d.paper or {}).get("paper") or {}).get("phases") or {}
        paper_phases = paper_phases if isinstance(paper_phases, Mapping) else {}
        rows = []
        alt = s.get("phases_test_loss") if isinstance(s.get("phases_test_loss"), Mapping) else {}
        for name, span in phases.items():
            ok = isinstance(span, list | tuple) and len(span) == 2  # null: the run did not reach it
            row = {"phase": str(name).replace("_", " "), "start epoch": span[0] if ok else None,
                   "end epoch": span[1] if ok else None}
            if alt:
                row["test-loss rule"] = fmt(alt.get(name))
            if paper_phases:
                row["the paper"] = fmt(paper_phases.get(name))
            rows.append(row)
        parts.append("<h3>Phases</h3>" + table(rows))
    # the paper's tables as analysis laid them out; ablations and heads on their own unless already there
    tables = dict(s.get("tables")) if isinstance(s.get("tables"), Mapping) else {}
    for title, key in (("Ablations in Fourier space of the logits", "ablations"), ("Attention heads", "attention_heads"),
                       ("Neuron clusters", "clusters")):
        if _rows(s.get(key)) and tables.get(key) != s.get(key):
            parts.append(f"<h3>{esc(title)}</h3>" + table(s[key]))
    for name, rows in tables.items():
        if _rows(rows):
            parts.append(f"<h3>Table: {esc(str(name).replace('_', ' '))}</h3>" + table(rows))
        elif isinstance(rows, list) and not rows:
            parts.append(f"<h3>Table: {esc(str(name).replace('_', ' '))}</h3><p class='src'>empty</p>")
    shown = (*SUMMARY_KEYS, "phases", "phases_test_loss", "ablations", "attention_heads", "clusters", "tables")
    rest = {k: v for k, v in s.items() if k not in shown}
    flat = {k: v for k, v in rest.items() if not _nested(v) and not _rows(v)}
    if flat:
        parts.append("<h3>Other analysis results</h3>" + table([{"key": k, "value": fmt(v)} for k, v in flat.items()]))
    for k, v in rest.items():
        if _rows(v):
            parts.append(f"<h3>{esc(k)}</h3>" + table(v))
        elif _nested(v):
            parts.append(f"<details><summary>{esc(k)}</summary><pre>{esc(json.dumps(v, indent=2, default=str))}</pre></details>")
    return "".join(parts)


def figure_block(fig: Figure, spec_json: str, png: bool) -> str:
    link = f' <a class="src" href="{esc(quote(fig.key))}.png">PNG</a>' if png else ""
    return (f"<section id='{esc(fig.key)}'><h3>{esc(fig.title)}{link}</h3><p class='caption'>{esc(fig.caption)}</p>"
            f"<div class='plot' data-fig='data-{esc(fig.key)}'></div>"
            f"<script type='application/json' id='data-{esc(fig.key)}'>{script_json(spec_json)}</script></section>")


def run_page(d: RunData, figs: list[Figure], specs: Mapping[str, str], missing: list[Missing], plotly_js: str,
             png: bool, built: str) -> str:
    """The whole run report as one HTML string. `specs` maps figure key -> plotly JSON."""
    status, notes = _status(d)
    sections: dict[str, list[str]] = {}
    for f in figs:
        sections.setdefault(f.section, []).append(figure_block(f, specs[f.key], png))
    toc = "".join(f"<a href='#{esc(f.key)}'>{esc(f.title)}</a>" for f in figs)
    phases = "".join(f"<span class='phase' style='background:{c}'>{esc(n.replace('_', ' '))}</span> "
                     for n, c in _phase_legend(d).items())
    body = [f"<h1>{esc(d.name)}</h1>",
            f"<p class='meta'>Run folder: <code>{esc(d.path)}</code><br>Task: {esc(_task_line(d))}<br>{esc(status)}"
            f"<br>Report built {esc(built)}</p>"]
    body += [f"<div class='warn'>{esc(w)}</div>" for w in d.warnings]
    body += [f"<div class='note'>{esc(n)}</div>" for n in notes]
    if phases:
        body.append(f"<p>Phases shaded in the figures: {phases}</p>")
    body.append(paper_section(d))
    body.append(summary_section(d))
    if figs:
        body.append(f"<h2>Figures</h2><nav class='toc'>{toc}</nav>")
    for name, blocks in sections.items():
        body.append(f"<h2>{esc(name)}</h2>" + "".join(blocks))
    if missing:
        items = "".join(f"<li><b>{esc(m.title)}</b>: {esc(m.reason)}</li>" for m in missing)
        body.append(f"<h2 id='missing'>Not available yet</h2><ul>{items}</ul>")
    body.append(f"<h2 id='config'>Config</h2><pre>{esc(d.config_text)}</pre>")
    if d.info:
        body.append(f"<h2 id='runinfo'>run.json</h2><pre>{esc(json.dumps(d.info, indent=2))}</pre>")
    return page(f"grokscope report: {d.name}", "".join(body),
                 scripts=[plotly_js, DRAW_JS] if figs else [])


def _phase_legend(d: RunData) -> dict[str, str]:
    return {n: phase_colour(n) for n in d.phases}


def _task_line(d: RunData) -> str:
    return f"{describe_task(d.task)}; model {describe_model(dict(d.config.get('model') or {}))}"


def page(title: str, body: str, scripts: list[str], wide: bool = False) -> str:
    """A whole self-contained HTML page: the report's style sheet, `body`, then `scripts` inlined."""
    js = "".join(f"<script>{s}</script>" for s in scripts)
    main = "<main class='wide'>" if wide else "<main>"
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body>{main}{body}</main>{js}</body></html>\n")


# ------------------------------------------------------------------------------------ index page
INDEX_COLUMNS = ("name", "task", "model", "seed", "frac_train", "lr", "weight_decay", "status", "epochs",
                 "final test acc", "grok epoch (50%)", "grok epoch (99%)", "key frequencies", "report")


def index_page(rows: list[dict[str, Any]], root: Path, built: str) -> str:
    """The sortable index of runs; links are relative to `root` (where the page is written)."""
    head = "".join(f"<th>{esc(c)}</th>" for c in INDEX_COLUMNS)
    body = []
    for r in rows:
        rel = Path(os.path.relpath(r["path"], root))
        href = quote((rel / "report" / "index.html").as_posix())
        link = (f"<a href='{esc(href)}'>report</a>" if r["report"]
                else f"<span class='src'>none yet: grokscope report {esc(rel.as_posix())}</span>")
        s = r["settings"]
        vals: list[tuple[Any, str | None]] = [
            (r["task"], None), (s.get("model"), None), (s.get("seed"), "num"),
            (s.get("frac_train"), "num"), (s.get("lr"), "num"), (s.get("weight_decay"), "num"),
            (r["status"] or (f"unreadable: {r['error']}" if r["error"] else ""), None), (r["epoch"], "num"),
            (r["test_acc"], "pct"), (r["grok_epoch_50"], "grok"), (r["grok_epoch_99"], "grok"),
            (r["key_frequencies"], None)]
        cells = [f"<td data-v='{esc(r['name'])}'>{esc(r['name'])}<br><span class='small'>{esc(rel.as_posix())}</span></td>"]
        for v, kind in vals:
            if kind == "num":
                sort = "" if v is None else esc(v)
                cells.append(f"<td class='num' data-v='{sort}'>{esc(fmt(v)) if v is not None else ''}</td>")
            elif kind == "grok":  # None: never (a finished run) or not yet (one still training)
                blank = "" if "grok_epoch_50" not in r["info_keys"] else (
                    "not yet" if r["status"] in ("running", "interrupted") else "never")
                cells.append(f"<td class='num' data-v='{'' if v is None else esc(v)}'>"
                             f"{esc(fmt(v)) if v is not None else blank}</td>")
            elif kind == "pct":
                sort = "" if v is None else esc(v)
                cells.append(f"<td class='num' data-v='{sort}'>{f'{v:.1%}' if v is not None else ''}</td>")
            else:
                cells.append(f"<td>{esc(fmt(v)) if v not in (None, '') else ''}</td>")
        cells.append(f"<td data-v='{1 if r['report'] else 0}'>{link}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    content = (f"<h1>Runs in {esc(root)}</h1><p class='meta'>{len(rows)} runs; click a column header to sort. "
               f"Built {esc(built)}.</p><table class='sortable' id='runs'><thead><tr>{head}</tr></thead>"
               f"<tbody>{''.join(body)}</tbody></table>")
    return page(f"grokscope runs: {root}", content, scripts=[SORT_JS], wide=True)
