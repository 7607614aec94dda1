"""The copy-LM report (docs/measures.md, part 2): a tiny LM run end to end -> its page, its sweep page.

Every figure's numbers are the store's (`metrics` and `heads` tables), against steps and tokens;
the experiment's data change and paper numbers are on the page; `analyze --json` prints the
summary the issue asks for.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from grokscope import config as C
from grokscope import experiments
from grokscope.analysis.runner import analyze_run
from grokscope.lm.trainer import train_text_run
from grokscope.report import figures as F
from grokscope.report import write_report
from grokscope.report.data import load_run
from grokscope.store import Run
from tests.conftest import run_cli_here
from tests.test_lm_trainer import tiny_cfg

N_LAYERS, N_HEADS = 2, 2


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lm")
    cfg = tiny_cfg(tmp, **{"model.n_layers": N_LAYERS, "train.steps": 12})
    out = tmp / "run"
    train_text_run(cfg, out, progress=False)
    analyze_run(out)
    return out


def by_key(path):
    figs, missing = F.build_all(load_run(path, "copy-lm"))
    return {f.key: f for f in figs}, missing


def curve(fig, name):
    (s,) = [s for s in fig.series if s.name == name]
    return s


def test_lm_figures_are_the_store_against_steps_and_tokens(lm_run):
    figs, missing = by_key(lm_run)
    assert not missing
    m = Run(lm_run).metrics()
    for key, column, name in (("lm_loss", "val_loss", "validation loss"), ("lm_loss", "train_loss", "train loss"),
                              ("copy_accuracy", "copy_acc", "copy accuracy (exact)"),
                              ("copy_accuracy", "copy_token_acc", "copy accuracy (per token)"),
                              ("copy_accuracy", "rcopy_acc", "random-id copy accuracy (exact)"),
                              ("copy_accuracy", "rcopy_token_acc", "random-id copy accuracy (per token)"),
                              ("icl", "icl_score", "ICL score")):
        for axis in ("step", "tokens"):
            s = curve(figs[f"{key}_{axis}"], name)
            assert len(s.y) == len(m) > 3
            assert np.array_equal(s.y, m[column].to_numpy(dtype=float), equal_nan=True)
            assert np.array_equal(s.x, m[axis].to_numpy(dtype=float))
    assert figs["lm_loss_tokens"].x_label == "tokens seen" and figs["lm_loss_step"].x_label == "optimiser step"
    assert figs["lm_loss_tokens"].series[0].x[-1] == 12 * 4 * 2 * 64  # steps x batch x grad_accum x context


def test_induction_heatmap_is_the_heads_table(lm_run):
    figs, _ = by_key(lm_run)
    heads = Run(lm_run).metrics("heads")
    steps = sorted(heads["step"].unique())
    (hm,) = figs["induction_heads"].heatmaps
    assert hm.z.shape == (N_LAYERS * N_HEADS, len(steps))
    assert list(hm.y) == ["0.0", "0.1", "1.0", "1.1"] and list(hm.x) == [str(s) for s in steps]
    row = heads[(heads["layer"] == 1) & (heads["head"] == 0)].sort_values("step")
    assert np.allclose(hm.z[2], row["induction"].to_numpy())
    others = {h.title: h for h in figs["head_scores"].heatmaps}
    assert set(others) == {"previous-token attention", "OV copying score EP", "A * EP"}
    assert np.allclose(others["A * EP"].z[2], row["induction_copying"].to_numpy())
    # per layer: the metrics table's largest score of a head in that layer
    m = Run(lm_run).metrics()
    for prefix in ("induction", "induction_copying", "previous_token"):
        fig = figs[f"layers_{prefix}"]
        assert [s.name for s in fig.series] == ["layer 0", "layer 1"]
        assert np.array_equal(curve(fig, "layer 1").y, m[f"{prefix}_l1"].to_numpy(dtype=float))
    # the heads table is not also drawn as a generic table, nor the per-layer columns one by one
    assert "table_heads" not in figs and not any(k.startswith("metric_induction_l") for k in figs)


def test_lm_page_shows_the_experiments_data_change_and_paper(lm_run):
    page = write_report(lm_run, experiment="copy-lm").read_text()
    exp = experiments.meta("copy-lm")
    assert "Data change from the paper" in page and "task.repeat_frac = 0.5" in page
    for key, value in exp["paper"].items():
        assert key in page and str(value).split(",")[0] in page
    assert "never" in page  # induction heads: no layer passed the threshold in 12 steps
    for key in ("lm_loss_step", "lm_loss_tokens", "copy_accuracy_step", "copy_accuracy_tokens", "icl_step",
                "icl_tokens", "induction_heads", "head_scores", "layers_induction"):
        assert f"id='{key}'" in page and (lm_run / "report" / f"{key}.png").stat().st_size > 5_000


def test_analyze_json_on_an_lm_run(lm_run):
    res = run_cli_here("analyze", str(lm_run), "--json")
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    m = Run(lm_run).metrics()
    assert s["copy_accuracy"] == m["copy_acc"].iloc[-1] and s["copy_token_accuracy"] == m["copy_token_acc"].iloc[-1]
    assert s["icl_score"] == pytest.approx(m["icl_score"].iloc[-1])
    assert len(s["induction_score"]) == N_LAYERS
    assert s["induction_score"][1] == pytest.approx(m["induction_l1"].iloc[-1])
    assert (lm_run / "analysis" / "summary.json").is_file()


@pytest.mark.slow
def test_copy_sweep_page_plots_against_steps_and_tokens(tmp_path):
    from grokscope.sweep import run_sweep

    cfg = tiny_cfg(tmp_path, **{"train.steps": 6})
    src = tmp_path / "copy-sweep.yaml"
    raw = yaml.safe_load(C.to_yaml(cfg))
    raw["experiment"] = {"title": "tiny copy sweep", "data_change": "repeated spans (fixture)",
                         "paper": {"finding": "steps, not tokens"}}
    src.write_text(yaml.safe_dump(raw))
    out = tmp_path / "sweep"
    res = run_sweep(str(src), ["train.batch_size=2,4"], None, out, workers=2, echo=lambda _m: None)
    assert [r["status"] for r in res] == ["completed", "completed"]
    page = (out / "sweep.html").read_text()
    for stem in ("loss", "copy", "rcopy", "induction", "icl"):
        assert (out / f"sweep_{stem}.png").stat().st_size > 5_000 and f"sweep_{stem}.png" in page
    assert "sweep_test_loss.png" not in page and "sweep_grok" not in page
    assert "repeated spans (fixture)" in page and "steps, not tokens" in page
    table = pd.read_csv(out / "runs.csv")
    assert {"tokens", "val_loss", "copy_acc", "induction_max", "copy_50_step"} <= set(table.columns)
    assert sorted(table["tokens"]) == [6 * 2 * 2 * 64, 6 * 4 * 2 * 64]
    for name in table["run"]:  # each trial has its own report page, linked from the sweep page
        assert (out / name / "report" / "index.html").is_file() and f"{name}/report/index.html" in page
