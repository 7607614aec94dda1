"""The replication page: every claim of the paper beside our measurement and a verdict.

    write_replication(DIR)  -> DIR/replication.json, DIR/replication.html, DIR/replication.md

`grokscope reproduce --all` calls it after each experiment, and `grokscope report --replication
DIR` rebuilds it from what the folder holds. The claims and how each is judged are
report/claims.py's; this module evaluates them against the folder and renders the result three
ways: JSON (the data), a self-contained HTML page in the style of the run reports (offline, a
sortable table), and Markdown (to commit as docs/replication.md). DIR/reproduce.json, written
by `reproduce --all`, says whether the runs are the quick ones and how long each experiment took.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from grokscope.report.claims import (
    CLAIMS,
    NANDA,
    NOT_RUN,
    VERDICTS,
    Claim,
    Row,
    evaluate,
    experiments_of,
)
from grokscope.report.html import SORT_JS, esc, page
from grokscope.report.results import Results
from grokscope.store import StoreError, atomic_write_json, atomic_write_text

MANIFEST = "reproduce.json"
VERDICT_COLOURS = {"reproduced": "#cdebc4", "partly": "#fbe7b0", "not reproduced": "#f6c5c0", "not run": "#e4e4e4"}
QUICK_NOTE = ("These are the quick runs (`reproduce --all --quick`): every experiment at a tiny budget, a small "
              "model and one seed, to test the pipeline end to end. Their verdicts say nothing about the paper.")

CSS = """
td.verdict { min-width: 120px; max-width: 200px; }
td.verdict b { white-space: nowrap; }
td.verdict .small { display: block; margin-top: 4px; }
td.quote { min-width: 260px; max-width: 380px; font-style: italic; }
td.ours { min-width: 240px; max-width: 400px; }
td.differs { min-width: 180px; max-width: 300px; font-size: 12px; color: #444; }
span.badge { display: inline-block; padding: 2px 8px; border-radius: 3px; margin-right: 6px; }
"""


TITLE = "Replication of Nanda et al. 2023 (and of Lv et al. 2024's copy LM), claim by claim"
COPY_NOTE = ("The rows of Lv et al. 2024 (ids copy.*) read the copy-LM experiments, which `reproduce --all` does not "
             "run: run `grokscope reproduce copy-lm --out DIR/copy-lm` (and copy-lm-deep, copy-lm-deep-seeds, "
             "copy-batch-size, copy-batch-size-large, copy-learning-rate, copy-regularization likewise) into the same "
             "folder.")


def section(claim: dict[str, Any]) -> str:
    """The claim's section, prefixed by its paper where that is not the grokking paper."""
    return claim["section"] if claim["paper"] == NANDA else f"{claim['paper']}, {claim['section']}"


def read_manifest(root: Path) -> dict[str, Any]:
    """DIR/reproduce.json, or {} when the folder was not made by `reproduce --all` or it is unreadable."""
    try:
        data = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def replication(root: str | Path, claims: Sequence[Claim] = CLAIMS) -> dict[str, Any]:
    """The claims judged against the folder, as plain data (what replication.json holds)."""
    root = Path(root)
    if not root.is_dir():
        raise StoreError(f"{str(root)!r} is not a folder; pass the --out of `grokscope reproduce --all` (e.g. runs)")
    res = Results(root)
    rows = evaluate(res, claims)
    manifest = read_manifest(root)
    exps = []
    for name in experiments_of(claims):
        runs = res.runs(name)
        done = manifest.get("experiments", {}).get(name, {}) if isinstance(manifest.get("experiments"), dict) else {}
        exps.append({"name": name, "runs": len(runs), "finished": sum(r.finished for r in runs),
                     "statuses": dict(Counter(r.status for r in runs)), "seconds": done.get("seconds"),
                     "error": done.get("error"), "page": page_of(root, name)})
    return {
        "format": "grokscope-replication/1",
        "folder": str(root),
        "built": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": bool(manifest.get("quick")),
        "overrides": {n: e.get("overrides") for n, e in (manifest.get("experiments") or {}).items()
                      if isinstance(e, dict) and e.get("overrides")},
        "estimate_seconds": manifest.get("estimate_seconds"),
        "counts": {v: sum(r.verdict == v for r in rows) for v in VERDICTS},
        "claims": [r.as_dict() for r in rows],
        "experiments": exps,
        "unwired": unwired(rows),
    }


def page_of(root: Path, name: str) -> str | None:
    """The experiment's own page, relative to the folder, when it exists."""
    for rel in (f"{name}/report/index.html", f"{name}/sweep.html"):
        if (root / rel).is_file():
            return rel
    return None


def unwired(rows: Sequence[Row]) -> list[dict[str, str]]:
    """Claims whose runs exist but whose measure is missing from what analysis writes."""
    return [{"id": r.claim.id, "note": r.measure.note} for r in rows
            if r.verdict == NOT_RUN and r.measure.note.startswith("not measured") and " has no " in r.measure.note]


# ------------------------------------------------------------------------------------ HTML
def link(root: Path, target: str, text: str = "figure") -> str:
    """A link relative to the page when its file exists, else a grey note."""
    if not target:
        return ""
    file = target.split("#", 1)[0]
    if (root / file).is_file():
        return f"<a href='{esc(quote(target, safe='/#=_.-'))}'>{esc(text)}</a>"
    return f"<span class='small'>{esc(file)} not written yet</span>"


def badge(verdict: str, n: int | None = None) -> str:
    label = verdict if n is None else f"{verdict}: {n}"
    return f"<span class='badge' style='background:{VERDICT_COLOURS.get(verdict, '#eee')}'>{esc(label)}</span>"


def to_html(data: dict[str, Any]) -> str:
    root = Path(data["folder"])
    counts = "".join(badge(v, n) for v, n in data["counts"].items())
    body = [f"<h1>{esc(TITLE)}</h1>",
            f"<p class='meta'>Folder: <code>{esc(root)}</code><br>Built {esc(data['built'])}. "
            f"{len(data['claims'])} claims. Click a column header to sort.</p>", f"<p>{counts}</p>"]
    if data["quick"]:
        body.append(f"<div class='warn'>{esc(QUICK_NOTE)}</div>")
    body.append("<p class='small'>Each row quotes the paper (words in [brackets] were lost from its text and are "
                "our reading), gives its number where it states one, our measurement over the finished runs "
                "(median [range] where there are several), the verdict by the rule shown, and what differs from the "
                "paper's settings and definitions. 'Not run' means no finished run or no stored measure: the row "
                "says which.</p>")
    body.append(f"<p class='small'>{esc(COPY_NOTE)}</p>")
    head = "".join(f"<th>{h}</th>" for h in ("claim", "section", "the paper", "its number", "ours", "verdict",
                                             "what differs", "figure"))
    trs = []
    for c in data["claims"]:
        differs = esc(c["differs"])
        if c["settings_differ"]:
            n = len(c["settings_differ"])
            differs += (f"<details><summary>{n} setting{'s' if n > 1 else ''} differ</summary>"
                        + "<br>".join(esc(x) for x in c["settings_differ"]) + "</details>")
        ours = esc(c["ours"] or "")
        if c["note"] and c["note"] not in (c["ours"] or ""):
            ours += f"<br><span class='small'>{esc(c['note'])}</span>"
        rule = f"<span class='small'>rule: {esc(c['rule'])}</span>" if c["rule"] else ""
        trs.append(
            f"<tr id='{esc(c['id'])}'><td data-v='{esc(c['id'])}'><code>{esc(c['id'])}</code></td>"
            f"<td>{esc(section(c))}</td><td class='quote'>{esc(c['statement'])}</td><td>{esc(c['paper_number'])}</td>"
            f"<td class='ours'>{ours}</td>"
            f"<td class='verdict' data-v='{VERDICTS.index(c['verdict'])}' "
            f"style='background:{VERDICT_COLOURS[c['verdict']]}'><b>{esc(c['verdict'])}</b>{rule}</td>"
            f"<td class='differs'>{differs}</td>"
            f"<td>{link(root, c['figure'])}</td></tr>")
    body.append(f"<table class='sortable' id='claims'><thead><tr>{head}</tr></thead><tbody>{''.join(trs)}</tbody></table>")
    body.append("<h2 id='experiments'>Experiments</h2>" + experiments_table(data, root))
    if data["unwired"]:
        items = "".join(f"<li><code>{esc(u['id'])}</code>: {esc(u['note'])}</li>" for u in data["unwired"])
        body.append(f"<h2 id='unwired'>Measures analysis does not write yet</h2><ul>{items}</ul>")
    return page(f"grokscope: {TITLE}", f"<style>{CSS}</style>" + "".join(body),
                scripts=[SORT_JS], wide=True)


def experiments_table(data: dict[str, Any], root: Path) -> str:
    rows = []
    for e in data["experiments"]:
        secs = e.get("seconds")
        state = ", ".join(f"{k} {v}" for k, v in e["statuses"].items()) or "not run"
        rows.append(f"<tr><td>{esc(e['name'])}</td><td class='num'>{e['finished']} of {e['runs']}</td>"
                    f"<td>{esc(state)}{(' — ' + esc(e['error'])) if e.get('error') else ''}</td>"
                    f"<td class='num'>{'' if secs is None else f'{secs / 60:.1f}'}</td>"
                    f"<td>{link(root, e['page'], 'page') if e['page'] else ''}</td></tr>")
    return ("<table><thead><tr><th>experiment</th><th>finished runs</th><th>status</th><th>minutes</th>"
            f"<th>page</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


# ------------------------------------------------------------------------------------ Markdown
def md(text: Any) -> str:
    """Text made safe inside a Markdown table cell."""
    return str(text or "").replace("|", "\\|").replace("\n", " ")


def to_markdown(data: dict[str, Any], link_prefix: str = "") -> str:
    """The page as Markdown (to commit as docs/replication.md); links are `link_prefix` + the
    figure's path in the folder."""
    c = data["counts"]
    out = [f"# {TITLE}", "",
           f"Built {data['built']} from `{data['folder']}` by `grokscope reproduce --all"
           f"{' --quick' if data['quick'] else ''}`. " + ", ".join(f"{v}: {n}" for v, n in c.items()) + ".", ""]
    if data["quick"]:
        out += [f"> {QUICK_NOTE}", ""]
    out += ["Words in [brackets] were lost from the paper's text and are our reading. 'Ours' is the median "
            "[range] over the finished runs where there are several.", "", COPY_NOTE, "",
            "| Claim | § | The paper | Its number | Ours | Verdict |", "|---|---|---|---|---|---|"]
    for r in data["claims"]:
        out.append(f"| [`{r['id']}`](#{r['id'].replace('.', '')}) | {md(section(r))} | {md(r['statement'])} | "
                   f"{md(r['paper_number'])} | {md(r['ours'])} | **{r['verdict']}** |")
    out += ["", "## Details", ""]
    for r in data["claims"]:
        out += [f"### {r['id']}", "", f"- Rule: {r['rule']}."]
        if r["note"] and r["note"] != r["ours"]:
            out.append(f"- Note: {r['note']}")
        if r["differs"]:
            out.append(f"- Definitions: {r['differs']}")
        for s in r["settings_differ"]:
            out.append(f"- Setting: {s}")
        if r["figure"]:
            out.append(f"- Figure: [{r['figure']}]({link_prefix}{quote(r['figure'], safe='/#=_.-')})")
        out.append("")
    if data["unwired"]:
        out += ["## Measures analysis does not write yet", ""]
        out += [f"- `{u['id']}`: {u['note']}" for u in data["unwired"]]
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------ writing
def write_replication(root: str | Path, claims: Sequence[Claim] = CLAIMS) -> dict[str, Path]:
    """Write DIR/replication.json, .html and .md; returns their paths by kind."""
    root = Path(root)
    data = replication(root, claims)
    paths = {"json": root / "replication.json", "html": root / "replication.html", "md": root / "replication.md"}
    atomic_write_json(paths["json"], data)
    atomic_write_text(paths["html"], to_html(data))
    atomic_write_text(paths["md"], to_markdown(data))
    for p in paths.values():
        os.chmod(p, 0o644)  # for reading, as the run reports are
    return paths
