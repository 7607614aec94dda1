"""What each report figure plots comes from the store, unchanged (grokscope.report.figures/render)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from safetensors.numpy import save_file

from grokscope.analysis import fourier
from grokscope.report import figures as F
from grokscope.report import render
from grokscope.report.data import load_run
from grokscope.store import Run
from tests.report_fixtures import KEYS, fourier_basis, make_fake_digits_run, make_fake_run


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    path = tmp_path_factory.mktemp("fake") / "run"
    make_fake_run(path, p=23, epochs=2000)
    return load_run(path)


def by_key(d):
    figs, missing = F.build_all(d)
    return {f.key: f for f in figs}, {m.key: m for m in missing}


def series(fig, name):
    (s,) = [s for s in fig.series if s.name == name]
    return s


def test_fourier_labels_name_the_basis_rows_in_spec_order():
    assert F.fourier_labels(5) == ["const", "cos 1", "sin 1", "cos 2", "sin 2"]
    assert len(F.fourier_labels(113)) == 113 and F.fourier_labels(113)[2 * 14 - 1: 2 * 14 + 1] == ["cos 14", "sin 14"]
    assert F.fourier_labels(4)[-1] == "(-1)^x"
    # the labels match the rows of an actual Fourier basis: "cos k" is the row with k periods of cosine
    B = fourier_basis(7)
    x = np.arange(7)
    row = F.fourier_labels(7).index("cos 3")
    assert np.allclose(B[row], np.cos(2 * np.pi * 3 * x / 7) / np.linalg.norm(np.cos(2 * np.pi * 3 * x / 7)))
    # and they name the rows of the basis the analysis writes its figures in
    for p in (7, 113):
        basis, names = fourier.fourier_basis(p)
        assert F.fourier_labels(p) == names
        assert np.allclose(basis.numpy(), fourier_basis(p))


def test_loss_and_accuracy_curves_are_the_metrics_columns(fake):
    m = fake.metrics
    figs, _ = by_key(fake)
    loss = figs["loss"]
    assert np.array_equal(series(loss, "train loss").y, m["train_loss"].to_numpy())
    assert np.array_equal(series(loss, "test loss").y, m["test_loss"].to_numpy())
    assert np.array_equal(series(loss, "test loss").x, m["epoch"].to_numpy())
    assert loss.log_y and loss.x_label == "epoch"
    acc = figs["accuracy"]
    assert np.array_equal(series(acc, "test accuracy").y, m["test_acc"].to_numpy())
    # restricted accuracy comes from analysis's progress table, on its own (checkpoint) x values
    r = series(acc, "restricted accuracy")
    assert np.array_equal(r.y, fake.progress["restricted_acc"].to_numpy())
    assert np.array_equal(r.x, fake.progress["epoch"].to_numpy())


def test_progress_figures_are_the_progress_columns(fake):
    p = fake.progress
    figs, _ = by_key(fake)
    pl = figs["progress_losses"]
    for name, col in (("restricted loss", "restricted_loss"), ("excluded loss", "excluded_loss"),
                      ("train loss", "train_loss"), ("test loss", "test_loss")):
        assert np.array_equal(series(pl, name).y, p[col].to_numpy())
    assert series(pl, "restricted loss (test)").hidden and not series(pl, "restricted loss").hidden
    ratio = figs["test_over_restricted"].series[0].y
    assert np.allclose(ratio, p["test_loss"].to_numpy() / p["restricted_loss"].to_numpy())
    g = figs["gini"]
    assert np.array_equal(series(g, "Gini(W_E)").y, p["gini_W_E"].to_numpy())
    assert np.array_equal(series(g, "Gini(W_L)").y, p["gini_W_L"].to_numpy())
    assert "per frequency" in g.caption  # the summary's gini_basis is stated
    coefs = figs["key_coefficients"]
    assert [s.name for s in coefs.series] == [f"k = {k}" for k in sorted(KEYS)]
    for k in KEYS:
        assert np.array_equal(series(coefs, f"k = {k}").y, p[f"coef_k{k}"].to_numpy())
        assert np.array_equal(series(figs["excluded_per_frequency"], f"excluding k = {k}").y,
                              p[f"excluded_loss_k{k}"].to_numpy())
    wn = figs["weight_norm"]  # the cheap metric (every eval), not the per-checkpoint copy
    assert np.array_equal(wn.series[0].y, fake.metrics["weight_norm"].to_numpy())


def test_a_restricted_loss_of_zero_is_left_out_of_the_ratio_and_said(fake, recwarn):
    # a long run whose key frequencies fit the data past float precision stores restricted loss 0
    p = fake.progress.copy()
    p.loc[p.index[-3:], "restricted_loss"] = 0.0
    fig = F.test_over_restricted(dataclasses.replace(fake, progress=p))
    y = fig.series[0].y
    assert np.isnan(y[-3:]).all() and np.isfinite(y[:-3]).all()
    assert np.allclose(y[:-3], p["test_loss"].to_numpy()[:-3] / p["restricted_loss"].to_numpy()[:-3])
    assert "Left out: 3 checkpoint(s) whose restricted loss rounds to 0" in fig.caption
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_phases_from_summary_are_shaded_on_every_curve(fake):
    figs, _ = by_key(fake)
    want = {"memorization": [0.0, 300.0], "circuit_formation": [300.0, 1100.0], "cleanup": [1100.0, 1500.0]}
    for key in ("loss", "accuracy", "progress_losses", "gini", "weight_norm", "key_coefficients"):
        assert figs[key].phases == want
    pf = render.to_plotly(figs["loss"])
    rects = [(s.x0, s.x1) for s in pf.layout.shapes if s.type == "rect"]
    assert sorted(rects) == sorted((a, b) for a, b in want.values())


def test_final_checkpoint_figures_are_the_stored_arrays(fake):
    a = fake.arrays
    figs, _ = by_key(fake)
    es = figs["embed_spectrum"].series[0]
    assert np.array_equal(es.y, a["embed_spectrum"]) and list(es.x) == F.fourier_labels(23)
    assert np.array_equal(figs["wl_spectrum"].series[0].y, a["wl_spectrum"])
    lf = figs["logit_fourier"].heatmaps[0]
    assert np.array_equal(lf.z, a["logit_fourier_norm"]) and list(lf.y) == F.fourier_labels(23)
    att = figs["attention"].heatmaps
    assert [h.title for h in att] == ["head 0", "head 1"]
    for h in range(2):
        assert np.array_equal(att[h].z, a["attention"][h])
    acts = figs["neuron_activations"].heatmaps
    assert [h.title for h in acts] == [f"neuron {i}" for i in a["neuron_ids"]]
    assert all(np.array_equal(h.z, a["neuron_acts"][j]) for j, h in enumerate(acts))
    nf = figs["neuron_fourier"].heatmaps[0]
    assert np.array_equal(nf.z, a["neuron_fourier"][0]) and nf.diverging
    assert np.array_equal(figs["neuron_fve"].series[0].y, a["neuron_fve"])
    cw = figs["cluster_wl"]
    assert np.array_equal(cw.heatmaps[0].z, a["cluster_wl_fourier"]) and f"k = {KEYS[0]}" in cw.title


def test_neuron_clusters_count_neurons_per_frequency(tmp_path):
    path = tmp_path / "run"
    make_fake_run(path, p=11, epochs=200)
    # hand-made: freq 2 -> 3 neurons (2 above 0.85), freq 5 -> 1 neuron (below)
    arrays = {"neuron_freq": np.array([2, 5, 2, 2], dtype=np.int64),
              "neuron_fve": np.array([0.9, 0.5, 0.99, 0.2], dtype=np.float32)}
    save_file(arrays, str(Run(path).analysis_dir / "figures.safetensors"))
    figs, missing = by_key(load_run(path))
    c = figs["neuron_clusters"]
    assert list(c.series[0].x) == ["2", "5"]
    assert list(c.series[0].y) == [2, 0] and list(c.series[1].y) == [1, 1]
    # the other arrays are now absent: their figures are listed as missing, with the array named
    assert "attention" in missing and "`attention`" in missing["attention"].reason


def test_plotly_and_png_draw_the_figure_data(fake, tmp_path):
    figs, _ = by_key(fake)
    pf = render.to_plotly(figs["loss"])
    assert [t.name for t in pf.data] == ["train loss", "test loss"]
    assert np.allclose(pf.data[1].y, fake.metrics["test_loss"].to_numpy(), rtol=1e-6)  # float32 on the page
    assert pf.layout.yaxis.type == "log"
    buttons = pf.layout.updatemenus[0].buttons
    assert [b.args[0]["yaxis.type"] for b in buttons] == ["log", "linear"]
    hm = render.to_plotly(figs["attention"])
    assert len(hm.data) == 2 and np.allclose(hm.data[1].z, fake.arrays["attention"][1])
    for key in ("loss", "attention", "neuron_fve", "neuron_clusters", "embed_spectrum"):
        out = render.to_png(figs[key], tmp_path / f"{key}.png")
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_unanalysed_run_shows_curves_and_lists_what_is_missing(tmp_path):
    path = tmp_path / "run"
    make_fake_run(path, p=11, epochs=300, analysed=False, status="running")
    d = load_run(path)
    figs, missing = by_key(d)
    assert {"loss", "accuracy", "weight_norm", "metric_lr"} <= set(figs)
    assert "restricted accuracy" not in [s.name for s in figs["accuracy"].series]
    assert {"progress_losses", "gini", "embed_spectrum", "attention", "cluster_wl"} <= set(missing)
    assert "grokscope analyze" in missing["progress_losses"].reason
    assert figs["loss"].phases == {}


def test_bad_array_shape_is_reported_not_drawn(tmp_path):
    path = tmp_path / "run"
    make_fake_run(path, p=11, epochs=200)
    save_file({"attention": np.zeros((11, 11), dtype=np.float32)}, str(Run(path).analysis_dir / "figures.safetensors"))
    _, missing = by_key(load_run(path))
    assert "shape [11, 11], expected [n_heads, p, p]" in missing["attention"].reason


def test_generic_run_gets_per_position_and_other_columns(tmp_path):
    path = tmp_path / "digits"
    make_fake_digits_run(path, n_pos=3)
    d = load_run(path)
    figs, missing = by_key(d)
    m = d.metrics
    tl = figs["test_loss_per_position"]
    assert [s.name for s in tl.series] == ["position 0", "position 1", "position 2"]
    assert np.array_equal(tl.series[2].y, m["test_loss_pos2"].to_numpy())
    assert np.array_equal(figs["train_loss_per_position"].series[0].y, m["train_loss_pos0"].to_numpy())
    assert np.array_equal(figs["test_acc_per_position"].series[1].y, m["test_acc_pos1"].to_numpy())
    assert np.array_equal(figs["metric_grad_norm"].series[0].y, m["grad_norm"].to_numpy())
    ind = figs["table_induction"]
    assert [s.name for s in ind.series] == ["score_L0H0", "score_L0H1"]
    assert np.array_equal(ind.series[1].y, d.other_tables["induction"]["score_L0H1"].to_numpy())
    # no modular figures, and none reported missing: they do not apply
    assert not ({"embed_spectrum", "progress_losses"} & (set(figs) | set(missing)))
    # x is the stored epoch column (fractional epochs with minibatches), not the step
    assert np.array_equal(figs["loss"].series[0].x, m["epoch"].to_numpy())


def test_crowded_fourier_axes_tick_cosines_at_round_frequencies():
    labels = F.fourier_labels(113)
    shown = [labels[i] for i in render.tick_subset(labels, 30)]
    assert shown[0] == "const" and shown[1:4] == ["cos 2", "cos 4", "cos 6"] and shown[-1] == "cos 56"
    assert len(shown) <= 30 and not any(s.startswith("sin") for s in shown)
    assert render.tick_subset(F.fourier_labels(7), 30) == list(range(7))  # few labels: all shown
    assert render.tick_subset([str(i) for i in range(113)], 12) == list(range(0, 113, 10))


def test_analysis_without_key_frequencies_says_why(tmp_path):
    path = tmp_path / "run"
    make_fake_run(path, p=11, epochs=300)
    run = Run(path)
    s = run.read_summary()
    s["key_frequencies"] = []
    run.write_summary(s)
    prog = run.metrics("progress")
    run.replace_table("progress", prog.drop(columns=[c for c in prog if "_k" in c]).to_dict("records"))
    arrays = {k: v for k, v in load_run(path).arrays.items() if not k.startswith("cluster_")}
    save_file(arrays, str(run.analysis_dir / "figures.safetensors"))
    _, missing = by_key(load_run(path))
    for key in ("key_coefficients", "excluded_per_frequency"):
        assert missing[key].reason.startswith("analysis found no key frequencies at step 300")
    assert "only when some neuron is explained by one frequency" in missing["cluster_wl"].reason


def test_attention_only_runs_skip_the_mlp_figures(tmp_path):
    path = tmp_path / "run"
    make_fake_run(path, p=11, epochs=300, analysed=False)
    cfg = (path / "config.yaml").read_text().replace("act_fn: relu", "act_fn: relu\n  attn_only: true")
    (path / "config.yaml").write_text(cfg)
    figs, missing = by_key(load_run(path))
    mlp = {"wl_spectrum", "neuron_activations", "neuron_fourier", "neuron_fve", "neuron_clusters", "cluster_wl"}
    assert not (mlp & (set(figs) | set(missing)))
    assert {"embed_spectrum", "attention"} <= set(missing)  # these still apply


def test_progress_columns_no_figure_shows_get_their_own(tmp_path):
    path = tmp_path / "run"
    make_fake_run(path, p=11, epochs=300)
    run = Run(path)
    rows = run.metrics("progress").to_dict("records")
    for r in rows:
        r["excluded_acc"] = 1 - r["step"] / 600
    run.replace_table("progress", rows)
    d = load_run(path)
    figs, _ = by_key(d)
    other = figs["progress_other"]
    assert [s.name for s in other.series] == ["excluded_acc"]
    assert np.array_equal(other.series[0].y, d.progress["excluded_acc"].to_numpy())


def test_close_vertical_line_labels_are_stacked_not_overprinted():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grokscope.report.base import Figure, Series

    x = np.arange(0, 8001, 100, dtype=float)
    fig = Figure("layers", "t", "c", "lines", [Series("a", x, np.sin(x)), Series("b", x, np.cos(x))],
                 vlines=[(4800.0, "layer 3"), (4350.0, "layer 4"), (1000.0, "layer 1")])
    _, ax = plt.subplots()
    render._mpl_axes(fig, ax)
    offsets = {t.get_text(): t.xyann[1] for t in ax.texts}
    plt.close("all")
    assert offsets["layer 4"] == offsets["layer 1"]  # far apart: one row
    assert offsets["layer 3"] > offsets["layer 4"]  # 450 steps apart on an 8,000-step axis: the next row up
