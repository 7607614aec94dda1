"""The report: a run's results as a self-contained HTML page plus PNGs, and an index of many runs.

    write_report(RUN)        -> RUN/report/index.html and RUN/report/<figure>.png
    write_index(RUNS_DIR)    -> RUNS_DIR/index.html, a sortable table of every run below it

    grokscope report RUN [--experiment NAME] [--no-png]
    grokscope report --index RUNS_DIR
    grokscope reproduce NAME ...      (ends with write_report and prints the page's path)

The report reads the store only (docs/architecture.md: "the report never computes a measure") and works with
whatever exists: a run still training, a run not analysed yet (it says what is missing). It follows
the figures of Nanda et al. 2023 for modular arithmetic (docs/measures.md, part 1) and shows generic
curves for other tasks, and the copy-LM figures of Lv et al. 2024 (docs/measures.md, part 2) for text runs.
Modules: data.py (read the store), base.py (the figure data and helpers the others share),
figures.py (what each figure plots), lm.py (the copy-LM figures), render.py (plotly and matplotlib
drawing), html.py (page assembly), sweep.py (a sweep's page; it reads what `grokscope.sweep` wrote
through the store and never imports the sweep package, which sits above the report).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from grokscope.store import StoreError, atomic_write_text


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _readable(path: Path) -> Path:
    """Reports are for reading (a browser, a web server): rw-r--r-- rather than the temp file's 0600."""
    os.chmod(path, 0o644)
    return path


def write_report(run_path: str | Path, experiment: str | Mapping[str, Any] | None = None, png: bool = True) -> Path:
    """Build RUN/report/index.html (and one PNG per figure); returns the page's path.

    `experiment`: a named experiment, or an experiment's `experiment:` section (title, reproduces,
    paper), whose `paper` numbers are shown beside this run's.
    """
    import plotly.io as pio
    import plotly.offline

    from grokscope.report import figures, html, render
    from grokscope.report.data import load_run

    d = load_run(run_path, experiment)
    figs, missing = figures.build_all(d)
    out = d.path / "report"
    specs = {f.key: pio.to_json(render.to_plotly(f), validate=False) for f in figs}
    if png:
        for f in figs:
            _readable(render.to_png(f, out / f"{f.key}.png"))
    page = html.run_page(d, figs, specs, missing, plotly.offline.get_plotlyjs(), png=png, built=_now())
    path = out / "index.html"
    atomic_write_text(path, page)
    return _readable(path)


def write_index(runs_dir: str | Path) -> Path:
    """Build RUNS_DIR/index.html listing every run folder below RUNS_DIR; returns its path."""
    from grokscope.report import html
    from grokscope.report.data import index_row, runs_below

    root = Path(runs_dir)
    if not root.is_dir():
        raise StoreError(f"{str(root)!r} is not a folder; pass the folder that holds your runs (e.g. runs)")
    paths = runs_below(root)
    if not paths:
        raise StoreError(f"no run folders (with config.yaml) under {str(root)!r}; train one with `grokscope train`")
    rows = [index_row(p) for p in paths]
    path = root / "index.html"
    atomic_write_text(path, html.index_page(rows, root, built=_now()))
    return _readable(path)
