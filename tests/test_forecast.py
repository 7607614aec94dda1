"""The grokking forecast (analysis/forecast.py) against known answers, and `grokscope forecast`'s errors.

Synthetic curves: a run whose weight norm, from epoch t on, sits at ln(W0) + KAPPA * ln((T - t)/t)
below a fixed early peak follows a known law, y = ln((T - t)/t) linear in one feature; the forecaster
must recover T for runs it has not seen, of other lengths. No peeking: changing the rows after t
changes nothing at t. The baseline on an exactly log-linear test loss hits the known epoch.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from grokscope.analysis import forecast as fc
from tests.conftest import run_cli_here

KAPPA, SPIKE, W0 = 0.1, 2.0, 1000.0


def law_run(T: float, name: str, every: float = 10.0, ckpt: float = 20.0, seed: int = 0) -> fc.Curves:
    """A run that groks at T; its weight norm encodes ln((T - e)/e) exactly; test loss is flat until T."""
    rng = np.random.default_rng(seed)
    e = np.arange(0.0, 1.5 * T + every, every)
    y = np.log(np.clip(T - e, 1e-9, None) / np.maximum(e, 1e-9))
    wn = W0 * np.exp(KAPPA * np.clip(y, -5, 5))
    wn[e == every] = W0 * math.exp(SPIKE)  # the peak every run shares, before the law starts
    metrics = pd.DataFrame({"step": e.astype(int), "epoch": e, "test_loss": np.where(e >= T, 0.01, 5.0),
                            "train_loss": 1e-3, "test_acc": np.where(e >= T, 1.0, 0.1), "weight_norm": wn})
    pe = np.arange(0.0, 1.5 * T + ckpt, ckpt)
    progress = pd.DataFrame({"step": pe.astype(int), "epoch": pe, "gini_W_E": 0.3, "gini_W_L": 0.4,
                             "excluded_loss_max": 1.0 + 0.01 * rng.random(len(pe))})
    return fc.Curves(name, metrics, progress, "law", name)


def test_the_forecaster_recovers_a_known_law_on_runs_of_other_lengths():
    train = [law_run(T, f"r{T}", seed=i) for i, T in enumerate((400, 600, 1000, 1400, 2000))]
    model = fc.fit(train)
    assert model.lam == min(fc.LAMBDAS)  # the law is exact: the weakest penalty wins
    for T in (520, 3000):  # inside and outside the training lengths: the features are scale-free
        run = law_run(T, "new", seed=9)
        for f in fc.BACKTEST_FRACTIONS:
            out = fc.predict(model, run, f * T)
            assert out.epoch == pytest.approx(T, rel=0.01), (T, f)  # t on the eval grid: y is exact
            assert out.low <= out.epoch <= out.high and out.high / out.low < 1.15  # an exact law: a narrow interval


def test_backtest_scores_each_run_from_the_others():
    runs = [law_run(T, f"r{T}", seed=i) for i, T in enumerate((400, 600, 1000, 1400, 2000))]
    rows = fc.backtest(runs)
    assert len(rows) == 5 * len(fc.BACKTEST_FRACTIONS)
    assert max(r["rel_err"] for r in rows) < 0.05
    assert all(r["n_train"] == 4 for r in rows)
    assert all(r["baseline_never"] for r in rows)  # a flat test loss gives the baseline nothing
    s = fc.summarise(rows)
    assert [x["fraction"] for x in s] == list(fc.BACKTEST_FRACTIONS) and all(x["forecast_better"] == 1 for x in s)


def test_no_run_is_trained_on_its_own_setup():
    a, b = law_run(500, "a"), law_run(700, "b")
    twin = fc.Curves("a-again", a.metrics, a.progress, "law", a.setup)  # the mainline and the seeds' seed 0
    rows = fc.backtest([a, b, twin, law_run(900, "c"), law_run(1100, "d")])
    assert {r["n_train"] for r in rows if r["run"] in ("a", "a-again")} == {3}
    assert {r["n_train"] for r in rows if r["run"] not in ("a", "a-again")} == {4}


def test_no_peeking_rows_after_t_change_nothing():
    model = fc.fit([law_run(T, f"r{T}", seed=i) for i, T in enumerate((400, 600, 900, 1300))])
    run = law_run(1000, "x")
    t = 430.0
    before = fc.predict(model, run, t)
    m, p = run.metrics.copy(), run.progress.copy()
    later_m, later_p = m["epoch"] > t, p["epoch"] > t
    m.loc[later_m, ["test_loss", "weight_norm"]] *= 1e3
    m.loc[later_m, "test_acc"] = 1.0  # it groks at once after t
    p.loc[later_p, ["gini_W_E", "gini_W_L", "excluded_loss_max"]] = 0.99
    after = fc.predict(model, fc.Curves("x", m, p, "law", "x"), t)
    assert after == before
    assert fc.features(run, t, 0.1) == fc.features(fc.upto(run, t), t, 0.1)


def test_baseline_on_an_exact_log_linear_curve():
    rate, L0, target = 0.004, 20.0, 0.05
    e = np.arange(0.0, 3000.0, 10.0)
    m = pd.DataFrame({"epoch": e, "test_loss": L0 * np.exp(-rate * e), "test_acc": 0.0})
    c = fc.Curves("lin", m, pd.DataFrame({"epoch": e}))
    for t in (300.0, 800.0, 1200.0):
        assert fc.baseline(c, t, target) == pytest.approx(math.log(L0 / target) / rate, rel=1e-9)
    assert fc.baseline(c, 2000.0, target) == 2000.0  # already below the target loss
    rising = fc.Curves("up", m.assign(test_loss=L0 * np.exp(rate * e)), c.progress)
    assert fc.baseline(rising, 800.0, target) == math.inf


def test_check_at_refuses_what_cannot_be_forecast():
    run = law_run(1000, "x")
    with pytest.raises(fc.ForecastError, match="already passed"):
        fc.check_at(run, 1200)
    with pytest.raises(fc.ForecastError, match="outside"):
        fc.check_at(run, 1e6)
    with pytest.raises(fc.ForecastError, match="needs 3"):
        fc.check_at(run, 50)
    stale = fc.Curves("x", run.metrics, run.progress[run.progress["epoch"] <= 300], "law", "x")
    with pytest.raises(fc.ForecastError, match="reaches epoch 300"):
        fc.check_at(stale, 600)
    with pytest.raises(fc.ForecastError, match="at least 3"):
        fc.fit([law_run(500, "a"), law_run(600, "b")])


# ------------------------------------------------------------------------------------ the CLI
def write_run(path, c: fc.Curves, seed: int, analysed: bool = True):
    """A run folder holding c's tables, written through the store (no training)."""
    from grokscope import config as C
    from grokscope import experiments
    from grokscope.store import Run

    cfg, _ = experiments.load("mainline", [f"seed={seed}", "task.p=23"])
    run = Run(path)
    path.mkdir(parents=True)
    run.mark()
    run.write_config(C.to_yaml(cfg))
    run.append("metrics", c.metrics.to_dict("records"))
    if analysed:
        run.replace_table("progress", c.progress.to_dict("records"))
    return path


def test_cli_forecast_and_its_bad_input(tmp_path):
    for i, T in enumerate((400, 600, 900, 1300)):
        write_run(tmp_path / "runs" / f"r{i}", law_run(T, f"r{i}", seed=i), seed=i)
    target = write_run(tmp_path / "runs" / "new", law_run(1000, "new", seed=7), seed=7)
    res = run_cli_here("forecast", str(target), "--at", "500", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["forecast"] == pytest.approx(1000, rel=0.05) and out["train_runs"] == 4 and out["actual"] == 1000
    assert out["low"] <= out["forecast"] <= out["high"] and out["baseline"] is None
    res = run_cli_here("forecast", str(target), "--at", "500")
    assert res.returncode == 0 and "test accuracy passes 99% at epoch" in res.stdout and "baseline" in res.stdout

    bare = write_run(tmp_path / "bare", law_run(1000, "bare"), seed=8, analysed=False)
    for args, says in [((str(bare),), "no progress measures"),
                       ((str(target), "--at", "99999"), "outside"),
                       ((str(target),), "already passed"),
                       ((str(target), "--at", "500", "--train-on", str(tmp_path / "runs" / "r0")), "needs 3"),
                       ((str(tmp_path / "nope"),), "does not exist")]:
        res = run_cli_here("forecast", *args)
        assert res.returncode == 2 and says in res.stderr and len(res.stderr.strip().splitlines()) == 1, (args, res.stderr)


# ------------------------------------------------------------------------------------ live
def test_live_forecast_matches_the_offline_one_and_changes_no_weight(tmp_path, tiny_overrides, monkeypatch):
    """`train --forecast-from`: the forecast shown at the last checkpoint before grokking is the one
    `grokscope forecast --at` makes afterwards from the analysed run; the weights are those of a run
    trained without it; a resumed run rebuilds its history from its checkpoints; bad input is one line."""
    from grokscope import experiments, pipeline
    from grokscope.analysis.runner import analyze_run
    from grokscope.report.forecast import load_curves
    from grokscope.store import Run

    for i, T in enumerate((400, 600, 900, 1300)):
        write_run(tmp_path / "pool" / f"r{i}", law_run(T, f"r{i}", seed=i), seed=i)
    sets = tiny_overrides + ["seed=9", "train.epochs=300", "train.checkpoint_every=20"]
    cfg, _ = experiments.load("mainline", sets)
    live_info = pipeline.train_run(cfg, tmp_path / "live", progress=False, forecast_from=[tmp_path / "pool"])
    plain_info = pipeline.train_run(cfg, tmp_path / "plain", progress=False)
    assert "live_forecast" not in plain_info
    a, b = Run(tmp_path / "live").load_checkpoint()[1], Run(tmp_path / "plain").load_checkpoint()[1]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    live = live_info["live_forecast"]
    assert live["train_runs"] == 4 and live["seconds"] > 0 and live["last"] is not None
    f = live["last"]
    assert f["low"] <= f["epoch"] <= f["high"] and f["at"] < (live["grokked"] or math.inf)
    analyze_run(tmp_path / "live")
    target = load_curves(tmp_path / "live")
    others = [load_curves(tmp_path / "pool" / f"r{i}") for i in range(4)]
    model = fc.fit(others, [k for k in fc.common_features(others + [target])])
    offline = fc.predict(model, target, f["at"])
    assert offline.epoch == pytest.approx(f["epoch"], rel=1e-9) and offline.low == pytest.approx(f["low"], rel=1e-9)

    # a run interrupted mid-way and resumed measures the checkpoints already on disk: it makes the
    # same forecasts as the uninterrupted run
    class Interrupted(pipeline.LiveForecast):
        def __call__(self, step, row):
            if step == 230:  # after the step-220 checkpoint: the forecast at 300 reads slopes from 150
                raise KeyboardInterrupt
            return super().__call__(step, row)

    monkeypatch.setattr(pipeline, "LiveForecast", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.train_run(cfg, tmp_path / "again", progress=False, forecast_from=[tmp_path / "pool"])
    monkeypatch.undo()
    again = pipeline.train_run(cfg, tmp_path / "again", resume=True, progress=False,
                               forecast_from=[tmp_path / "pool"])["live_forecast"]
    assert again["checkpoints"] == live["checkpoints"] == [float(e) for e in range(20, 301, 20)]
    assert again["last"] == pytest.approx(live["last"]) and again["grokked"] == live["grokked"]

    for args, says in [(("--forecast-from", str(tmp_path / "pool" / "r0")), "needs 3"),
                       (("--forecast-from", str(tmp_path / "nope")), "not a folder")]:
        res = run_cli_here("train", "mainline", "--out", str(tmp_path / "bad"), *[f"--set={s}" for s in sets], *args)
        assert res.returncode == 2 and says in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not (tmp_path / "bad").exists()
