"""End to end in a real headless browser: a tiny run's report opens from file:// and draws every figure.

Debian's chromium driven by playwright for Python, with the system browser (never `playwright
install`). Install: `apt-get install -y chromium` and `pip install playwright`. Skipped only when
chromium is absent and the CI variable is unset; in CI it must run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from grokscope import config as C
from grokscope import pipeline
from grokscope.report import figures as F
from grokscope.report import write_index, write_report
from grokscope.report.data import load_run
from grokscope.store import Run
from tests.report_fixtures import write_analysis

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EVIL = "<b>x</b><script>window.__pwned=1</script>"

pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                reason="chromium not installed (apt-get install -y chromium); required when CI is set")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A really trained tiny modular run, with analysis's outputs (fixture data) added."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = C.resolve({"name": "tiny", "task": {"name": "modular", "p": 11},
                     "model": {"d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32},
                     "train": {"epochs": 60, "checkpoint_every": 20, "eval_every": 5, "threads": 1}})
    pipeline.train_run(cfg, out, progress=False)
    # A run's name is validated when it trains, but the report reads config.yaml as it stands
    # (a hand-edited one, say): markup there must still be shown as text.
    raw = Run(out).read_config()
    Run(out).write_config(yaml.safe_dump({**raw, "name": EVIL}, sort_keys=False))
    write_analysis(out, p=11, epochs=60, n_heads=2, d_mlp=32)
    return out


@pytest.fixture(scope="module")
def browser():
    # pip install playwright; the system chromium is used (never `playwright install`)
    from playwright.sync_api import sync_playwright

    assert CHROMIUM is not None, "CI is set but chromium is missing: apt-get install -y chromium"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def open_page(browser, url: str):
    """A page that records console errors, page errors and every request (non-file ones are blocked)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    log = {"errors": [], "requests": [], "dialogs": []}
    page.on("console", lambda m: log["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: log["errors"].append(str(e)))
    page.on("dialog", lambda d: (log["dialogs"].append(d.message), d.dismiss()))
    page.on("request", lambda r: log["requests"].append(r.url))

    def guard(route):
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            route.abort()

    page.route("**/*", guard)
    page.goto(url, wait_until="load")
    return page, log


def test_run_report_renders_offline_in_chromium(tiny_run, browser, tmp_path):
    path = write_report(tiny_run)
    figs, missing = F.build_all(load_run(tiny_run))
    assert not missing and len(figs) >= 18
    page, log = open_page(browser, path.as_uri())
    page.wait_for_function("document.querySelectorAll('div.plot .main-svg').length >= "
                           f"{len(figs)}", timeout=30_000)
    drawn = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('div.plot')].map(d => [
        d.dataset.fig.slice(5), {
          svgs: d.querySelectorAll('.plot-container .main-svg').length,
          lines: [...d.querySelectorAll('.scatterlayer path.js-line')].filter(p => (p.getAttribute('d') || '').length > 10).length,
          bars: d.querySelectorAll('.barlayer .point path').length,
          heatmaps: d.querySelectorAll('.heatmaplayer image').length,
          width: d.getBoundingClientRect().width }]))""")
    assert set(drawn) == {f.key for f in figs}
    for f in figs:
        got = drawn[f.key]
        assert got["svgs"] >= 1 and got["width"] > 300, (f.key, got)
        if f.kind == "lines":
            assert got["lines"] == sum(not s.hidden for s in f.series), (f.key, got)
        elif f.kind == "heatmaps":
            assert got["heatmaps"] == len(f.heatmaps), (f.key, got)
        else:
            assert got["bars"] > 0, (f.key, got)
    # the run's name is shown as text, not markup, and its script never ran
    assert page.inner_text("h1") == EVIL
    assert page.locator("h1 b").count() == 0
    assert page.evaluate("typeof window.__pwned") == "undefined" and not log["dialogs"]
    # the log/linear toggle works: the loss figure starts log, the button makes it linear
    assert page.evaluate("document.querySelector(\"div[data-fig='data-loss']\").layout.yaxis.type") == "log"
    page.locator("div[data-fig='data-loss'] .updatemenu-button").filter(has_text="linear y").click()
    page.wait_for_function("document.querySelector(\"div[data-fig='data-loss']\").layout.yaxis.type === 'linear'")
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000
    assert log["errors"] == []
    assert [u for u in log["requests"] if not u.startswith("file://")] == []
    page.close()


def test_run_index_sorts_in_chromium(tiny_run, browser, tmp_path):
    root = tiny_run.parent
    other = root / "other"
    shutil.copytree(tiny_run, other)
    (other / "config.yaml").write_text((other / "config.yaml").read_text().replace("name:", "name: zz", 1))
    from grokscope.store import Run

    Run(other).append("metrics", [{"step": 61, "epoch": 61.0, "test_acc": 0.999, "train_acc": 1.0}])
    write_report(tiny_run, png=False)
    page, log = open_page(browser, write_index(root).as_uri())
    col = page.locator("#runs th").filter(has_text="final test acc")

    def accs():
        return page.evaluate("[...document.querySelectorAll('#runs tbody tr')].map(r => r.cells[9].dataset.v)")

    col.click()
    up = accs()
    col.click()
    assert accs() == up[::-1] and float(up[0]) < float(up[1]) == 0.999
    page.locator("#runs a[href='tiny/report/index.html']").click()
    page.wait_for_load_state("load")
    assert page.url.endswith("/tiny/report/index.html")
    page.screenshot(path=str(tmp_path / "index.png"))
    assert log["errors"] == [] and [u for u in log["requests"] if not u.startswith("file://")] == []


@pytest.fixture(scope="module")
def tiny_lm_run(tmp_path_factory) -> Path:
    """A really trained tiny copy-LM run (2 layers), analysed."""
    from grokscope.analysis.runner import analyze_run
    from grokscope.lm.trainer import train_text_run
    from tests.test_lm_trainer import tiny_cfg

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("lm")
    out = tmp / "lm"
    train_text_run(tiny_cfg(tmp, **{"model.n_layers": 2, "train.steps": 10}), out, progress=False)
    analyze_run(out)
    return out


def test_lm_report_draws_every_figure_in_chromium(tiny_lm_run, browser):
    path = write_report(tiny_lm_run, experiment="copy-lm", png=False)
    figs, missing = F.build_all(load_run(tiny_lm_run, "copy-lm"))
    assert not missing
    keys = {f.key for f in figs}
    assert {"lm_loss_step", "lm_loss_tokens", "copy_accuracy_step", "copy_accuracy_tokens", "icl_step", "icl_tokens",
            "induction_heads", "head_scores", "layers_induction", "layers_induction_copying",
            "layers_previous_token"} <= keys
    page, log = open_page(browser, path.as_uri())
    page.wait_for_function(f"document.querySelectorAll('div.plot .main-svg').length >= {len(figs)}", timeout=30_000)
    drawn = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('div.plot')].map(d => [
        d.dataset.fig.slice(5), {
          lines: [...d.querySelectorAll('.scatterlayer path.js-line')].filter(p => (p.getAttribute('d') || '').length > 10).length,
          heatmaps: d.querySelectorAll('.heatmaplayer image').length }]))""")
    for f in figs:
        if f.kind == "lines":
            assert drawn[f.key]["lines"] == sum(not s.hidden for s in f.series), (f.key, drawn[f.key])
        elif f.kind == "heatmaps":
            assert drawn[f.key]["heatmaps"] == len(f.heatmaps), (f.key, drawn[f.key])
    assert log["errors"] == []
    assert [u for u in log["requests"] if not u.startswith("file://")] == []
    page.close()


def test_replication_page_in_chromium(tiny_run, browser, tmp_path):
    """The replication page (`reproduce --all`) opens offline, lists every claim, shows hostile text
    as text, sorts by verdict, and its figure links lead to the run's report."""
    from grokscope.report.claims import CLAIMS, VERDICTS
    from grokscope.report.replication import write_replication
    from tests.test_replication import make_sweep

    root = tmp_path / "runs"
    shutil.copytree(tiny_run, root / "mainline")
    write_report(root / "mainline", png=False)
    make_sweep(root / "l1", [({"optim.l1": 1e-5}, {"grok": None})], "l1")
    info = json.loads((root / "l1" / "sweep.json").read_text())  # a setting's value is text a user wrote
    info["trials"][0]["settings"]["note"] = EVIL
    (root / "l1" / "sweep.json").write_text(json.dumps(info))
    path = write_replication(root)["html"]
    page, log = open_page(browser, path.as_uri())
    assert page.locator("#claims tbody tr").count() == len(CLAIMS)
    assert EVIL in page.inner_text("#claims") and page.locator("#claims td b:text('x')").count() == 0
    assert page.evaluate("typeof window.__pwned") == "undefined" and not log["dialogs"]

    def verdicts():
        return page.evaluate("[...document.querySelectorAll('#claims tbody tr')].map(r => r.cells[5].dataset.v)")

    page.locator("#claims th").filter(has_text="verdict").click()
    got = [int(v) for v in verdicts()]
    assert got == sorted(got) and set(got) <= set(range(len(VERDICTS)))
    details = page.locator("#claims details").first
    details.locator("summary").click()
    assert details.evaluate("d => d.open")
    page.locator("#claims tr[id='mainline.logit-fve'] a").click()
    page.wait_for_load_state("load")
    assert page.url.endswith("/mainline/report/index.html#logit_fourier")
    assert log["errors"] == [] and [u for u in log["requests"] if not u.startswith("file://")] == []
    page.close()
