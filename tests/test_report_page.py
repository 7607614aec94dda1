"""The report page and the run index: self-contained, escaped, honest about what is missing; the CLI."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from grokscope import cli
from grokscope.report import figures as F
from grokscope.report import html as H
from grokscope.report import write_index, write_report
from grokscope.report.data import load_run
from grokscope.store import Run, StoreError
from tests.report_fixtures import make_fake_digits_run, make_fake_run

EVIL = "<b>x</b><script>window.__pwned=1</script>"


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["grokscope", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def external_refs(page: str) -> list[str]:
    """src/href attributes of the page's markup (script bodies aside) that would leave the file."""
    markup = re.sub(r"<script[^>]*>.*?</script>", "<script></script>", page, flags=re.S)
    refs = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)['"]""", markup)
    return [r for r in refs if re.match(r"^[a-z][a-z0-9+.-]*:|^//", r, re.I)]


def test_report_is_self_contained_with_a_png_per_figure(tmp_path):
    path = tmp_path / "run"
    make_fake_run(path, p=23, epochs=2000)
    page_path = write_report(path)
    assert page_path == path / "report" / "index.html"
    page = page_path.read_text()
    figs, missing = F.build_all(load_run(path))
    assert not missing
    for f in figs:
        assert (path / "report" / f"{f.key}.png").stat().st_size > 1000
        assert f"data-fig='data-{f.key}'" in page and f"href=\"{f.key}.png\"" in page
    assert page.count("<div class='plot'") == len(figs)
    assert external_refs(page) == []  # no CDN, no remote font or image: plotly.js is inlined
    assert "<script src" not in page and "<link" not in page
    assert page.count("Plotly.newPlot") == 1 and "/*!" in page  # plotly.js bundle embedded once
    # every figure's JSON block parses and holds its traces
    for f in figs:
        block = re.search(rf"<script type='application/json' id='data-{f.key}'>(.*?)</script>", page, re.S)
        spec = json.loads(block.group(1))
        assert spec["data"], f.key
    assert (path / "report" / "index.html").stat().st_mode & 0o777 == 0o644


def test_user_text_is_escaped_everywhere(tmp_path):
    path = tmp_path / "run"
    make_fake_run(path, p=11, epochs=300, name=EVIL, paper={"note": "</td><script>alert(1)</script>"})
    page = write_report(path, png=False).read_text()
    assert EVIL not in page and "<script>window" not in page and "<script>alert" not in page
    assert "<h1>&lt;b&gt;x&lt;/b&gt;&lt;script&gt;window.__pwned=1&lt;/script&gt;</h1>" in page
    assert "&lt;/td&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the paper's text, in the table
    assert "name: &lt;b&gt;x&lt;/b&gt;" in page  # the config, verbatim but escaped


def test_script_json_cannot_close_its_script_element():
    raw = json.dumps({"title": "</script><!-- & -->"})
    safe = H.script_json(raw)
    assert "</" not in safe and "<!--" not in safe and "&" not in safe
    assert json.loads(safe) == {"title": "</script><!-- & -->"}


def test_paper_numbers_sit_beside_ours(tmp_path):
    path = tmp_path / "run"
    make_fake_run(path, p=23, epochs=2000)
    page = write_report(path, experiment="mainline", png=False).read_text()
    sec = page[page.index("id='paper'"):page.index("id='summary'")]
    assert "14, 35, 41, 42, 52" in sec and "3, 7, 9" in sec  # the paper's key frequencies, and the run's
    assert "78.1% of neurons above 0.85 (25 of 32)" in sec  # summary's share, with the stored per-neuron FVE
    assert "above 99%: 1400" in sec and "experiment &#x27;mainline&#x27;" in sec
    with pytest.raises(Exception, match="unknown experiment"):
        write_report(path, experiment="no_such_experiment", png=False)


def test_paper_dict_in_config_is_used(tmp_path):
    path = tmp_path / "run"
    make_fake_run(path, p=11, epochs=300, paper={"key_frequencies": [1, 2]})
    page = write_report(path, png=False).read_text()
    assert "the run&#x27;s config (`paper`)" in page and "<td>1, 2</td>" in page


def test_running_unanalysed_run_says_so(tmp_path):
    path = tmp_path / "run"
    make_fake_run(path, p=11, epochs=300, analysed=False, status="running")
    page = write_report(path, png=False).read_text()
    assert "This run is running (step 300 of 300)" in page
    assert "No analysis yet" in page and "id='missing'" in page
    assert "Restricted and excluded loss</b>: the progress table has no restricted/excluded loss yet" in page


def test_stale_analysis_is_flagged(tmp_path):
    path = tmp_path / "run"
    make_fake_run(path, p=11, epochs=2000)
    Run(path).update_info(last_step=2500)
    page = write_report(path, png=False).read_text()
    assert "The analysis is of step 2000; the run has reached step 2500 since" in page


def test_corrupt_analysis_files_are_warned_about_not_fatal(tmp_path):
    path = tmp_path / "run"
    make_fake_run(path, p=11, epochs=300)
    (path / "analysis" / "summary.json").write_text("{not json")
    (path / "analysis" / "figures.safetensors").write_bytes(b"garbage")
    page = write_report(path, png=False).read_text()
    assert page.count("<div class='warn'>") == 2
    assert "summary.json is corrupt" in page and "figures.safetensors is unreadable" in page
    assert "data-fig='data-loss'" in page  # the curves still show


def test_index_lists_runs_sortably_with_relative_links(tmp_path):
    root = tmp_path / "runs"
    make_fake_run(root / "a", p=11, epochs=300, name=EVIL)
    make_fake_digits_run(root / "sweep" / "b")
    (root / "notes").mkdir()
    (root / "notes" / "x.txt").write_text("not a run")
    make_fake_run(root / "c", p=11, epochs=300, analysed=False)
    Run(root / "c").update_info(grok_epoch_50=None, grok_epoch_99=None)  # finished, never grokked
    write_report(root / "a", png=False)
    page = write_index(root).read_text()
    assert page.count("<tr>") == 4  # header + three runs (the notes folder is not a run)
    assert page.count("<td class='num' data-v=''>never</td>") == 2  # c's two grok epochs; b's are blank
    assert "class='sortable'" in page and "th.addEventListener('click'" in page
    assert EVIL not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    hrefs = re.findall(r"href='([^']*)'", page)
    assert hrefs == ["a/report/index.html"] and (root / hrefs[0]).is_file()  # b and c have no report yet
    assert "none yet: grokscope report sweep/b" in page  # b has no report yet
    assert "modular add mod 11" in page and "digits (n_digits 2)" in page
    assert "data-v='1400.0'" in page  # grok epoch from run.json, sortable as a number
    assert external_refs(page) == []
    with pytest.raises(StoreError, match="no run folders"):
        write_index(root / "notes")


def test_cli_report_and_index(tmp_path, monkeypatch, capsys):
    path = tmp_path / "runs" / "r1"
    make_fake_run(path, p=11, epochs=300)
    code, out, _ = run_cli(monkeypatch, capsys, "report", str(path), "--no-png")
    assert code == 0 and out.strip() == f"report: {path / 'report' / 'index.html'}"
    assert not list((path / "report").glob("*.png"))
    code, out, _ = run_cli(monkeypatch, capsys, "report", "--index", str(tmp_path / "runs"))
    assert code == 0 and out.strip() == f"index: {tmp_path / 'runs' / 'index.html'}"
    for args, msg in ((["report"], "give a RUN folder"), (["report", str(path), "--index", str(tmp_path)], "not both"),
                      (["report", str(tmp_path / "nope")], "does not exist"),
                      (["report", "--index", str(tmp_path / "nope")], "is not a folder"),
                      (["report", str(path), "-e", "nope"], "unknown experiment")):
        code, out, err = run_cli(monkeypatch, capsys, *args)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, (args, err)


def test_reproduce_ends_with_the_report(tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "mainline"
    code, out, err = run_cli(monkeypatch, capsys, "reproduce", "mainline", "--out", str(out_dir), "--epochs", "30",
                             "--quiet", "--set", "task.p=11", "--set", "model.d_model=16", "--set", "model.d_mlp=32",
                             "--set", "train.checkpoint_every=10", "--set", "train.threads=1")
    assert code == 0, err
    page = out_dir / "report" / "index.html"
    assert out.strip().splitlines()[-1] == f"report: {page}"
    text = page.read_text()
    assert "What the paper reports" in text and "14, 35, 41, 42, 52" in text  # the experiment's paper section
    assert (out_dir / "report" / "loss.png").is_file()


def test_load_run_refuses_a_non_run_folder(tmp_path):
    with pytest.raises(StoreError, match="not a run folder"):
        load_run(tmp_path)
    assert Path(tmp_path).is_dir()


def test_unexpected_summary_values_do_not_break_the_page(tmp_path):
    path = tmp_path / "run"
    make_fake_run(path, p=11, epochs=300)
    Run(path).write_summary({"key_frequencies": [2], "phases": {"memorization": [0, 50], "cleanup": None},
                             "ablations": "n/a", "tables": ["x"], "extra": {"a": 1}})
    page = write_report(path, experiment="mainline", png=False).read_text()
    assert "<td>memorization</td><td class=\"num\" data-v=\"0\">0</td>" in page
    assert "<td>cleanup</td><td>\u2014</td>" in page  # not reached: shown as a dash
    assert "<td>extra</td><td>a: 1</td>" in page  # keys the report does not know still show
    figs, _ = F.build_all(load_run(path))
    assert next(f for f in figs if f.key == "loss").phases == {"memorization": [0.0, 50.0]}


def test_a_run_with_only_its_config_still_gets_a_page(tmp_path):
    path = tmp_path / "fresh"
    path.mkdir()
    (path / "config.yaml").write_text("task: {name: modular, p: 7}\n")
    page = write_report(path).read_text()
    assert "Train and test loss</b>: the metrics table has no rows yet" in page
    assert "Plotly" not in page  # nothing to draw, so no 4 MB of plotly.js either
    assert not list((path / "report").glob("*.png"))


def test_summary_tables_once_and_nested_values_folded(tmp_path):
    path = tmp_path / "run"
    make_fake_run(path, p=11, epochs=300)
    run = Run(path)
    s = run.read_summary()
    s["tables"] = {"ablations": s["ablations"], "model": [{"test_loss": 0.1}]}
    s["clusters"] = [{"freq": 3, "neurons": 11, "share": 0.4}]
    s["phase_evidence"] = {"boundaries": {"start": {"epoch": 0}}}
    s["frequency_shares"] = {"3": 0.4, "7": 0.6}
    run.write_summary(s)
    page = write_report(path, png=False).read_text()
    assert page.count("<th>name</th><th>loss</th><th>acc</th>") == 1  # ablations: in tables, so shown once
    assert "<h3>Table: ablations</h3>" in page and "<h3>Attention heads</h3>" in page  # heads not in tables
    assert "<h3>Neuron clusters</h3>" in page and "<td class=\"num\" data-v=\"11\">11</td>" in page
    assert "<details><summary>phase_evidence</summary><pre>{\n  &quot;boundaries&quot;" in page
    assert "<td>frequency_shares</td><td>3: 0.4; 7: 0.6</td>" in page


def test_reproduce_from_a_yaml_file_shows_that_files_paper_numbers(tmp_path, monkeypatch, capsys):
    exp = tmp_path / "my_exp.yaml"
    exp.write_text("experiment:\n  title: My <i>own</i> experiment\n  paper: {key_frequencies: [4, 5]}\n"
                   "task: {name: modular, p: 7}\nmodel: {d_model: 8, n_heads: 1, d_head: 8, d_mlp: 16}\n"
                   "train: {epochs: 20, checkpoint_every: 10, threads: 1}\n")
    code, out, err = run_cli(monkeypatch, capsys, "reproduce", str(exp), "--out", str(tmp_path / "r"), "--quiet")
    assert code == 0, err
    text = (tmp_path / "r" / "report" / "index.html").read_text()
    assert "<td>key_frequencies</td><td>4, 5</td>" in text and "My &lt;i&gt;own&lt;/i&gt; experiment" in text
    assert "Source: the experiment this run reproduces." in text


def test_report_of_a_run_that_has_no_analysis_and_cannot_have_one(tmp_path):
    # skip-trigram runs are not analysed: their report shows training alone (it had crashed on the
    # missing summary)
    from grokscope import experiments, pipeline

    cfg, _ = experiments.load("skip-trigram", ["train.steps=5", "train.threads=1"])
    pipeline.train_run(cfg, tmp_path / "st", progress=False)
    page = write_report(tmp_path / "st", png=False)
    assert page.exists() and "loss" in page.read_text().lower()
