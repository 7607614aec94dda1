"""Progress measures (docs/measures.md; Nanda et al. 2023, Section 5.1) against known answers, and the run-store round trip."""

from __future__ import annotations

import json
import math

import pytest
import torch

from grokscope.analysis import circuits as ci
from grokscope.analysis import progress as pg
from grokscope.analysis import runner
from grokscope.config import ModelConfig
from grokscope.models.loss import sum_sq_weights
from grokscope.models.transformer import build
from grokscope.store import Run
from tests.handbuilt import fourier_model, grid_data

P, KS = 31, [3, 7, 12]


def test_fourier_model_restricted_close_to_full_and_excluded_near_chance():
    model = fourier_model(P, KS)
    data = grid_data(P)
    row = pg.progress_row(model, pg.make_context(data, KS))
    assert row["train_acc"] == 1.0 and row["test_acc"] == 1.0
    assert abs(row["restricted_loss"] - row["train_loss"]) < 1e-4
    assert row["restricted_acc"] == 1.0
    assert row["restricted_loss_test"] < 1e-4 and row["restricted_loss_train"] < 1e-4
    chance = math.log(P)
    assert 0.9 * chance < row["excluded_loss"] < 1.1 * chance
    for k in KS:  # removing one frequency of three hurts, but less than removing all
        assert row["train_loss"] < row[f"excluded_loss_k{k}"] < row["excluded_loss"]
    for k in KS:
        assert row[f"coef_k{k}"] == pytest.approx(12.0, rel=0.08)
    # footnote 3's variant: the worst single frequency is one of the keys, and equals its own column
    assert row["excluded_loss_max_freq"] in KS
    assert row["excluded_loss_max"] == pytest.approx(max(row[f"excluded_loss_k{k}"] for k in KS), rel=1e-5)  # float32


def test_excluded_loss_max_needs_no_key_frequencies():
    # with K empty the excluded loss is the train loss; the footnote's variant still finds the circuit
    model = fourier_model(P, [5])
    data = grid_data(P)
    row = pg.progress_row(model, pg.make_context(data, []))
    assert row["excluded_loss"] == pytest.approx(row["train_loss"], rel=1e-9)
    assert row["excluded_loss_max_freq"] == 5
    assert row["excluded_loss_max"] > 0.9 * math.log(P)


def test_random_logits_excluded_equals_full_and_restricted_is_chance():
    data = grid_data(P)
    ctx = pg.make_context(data, KS)
    g = torch.Generator().manual_seed(1)
    L = 3 * torch.randn(P * P, P, generator=g, dtype=torch.float64)
    row = pg.restricted_excluded(L, ctx)
    full, _ = ci.loss_acc(L[data.train_mask], data.all_y[data.train_mask])
    assert row["excluded_loss"] == pytest.approx(full, rel=0.03)
    assert row["restricted_loss"] == pytest.approx(math.log(P), rel=0.05)


def test_restricted_loss_keeps_the_per_class_mean_over_inputs():
    # Known answer: L = a wave in the key directions + a per-class bias b_c (the same for every
    # input). P_K keeps the wave and drops b (a constant over inputs is orthogonal to every
    # cos/sin(w_k(a+b))), and the mean over inputs is b (the wave averages to 0), so the
    # restricted logits are exactly L: its loss is the cross-entropy of wave + b, not of the wave.
    data = grid_data(P)
    ctx = pg.make_context(data, KS)
    a, b = data.all_x[:, 0].double(), data.all_x[:, 1].double()
    c = torch.arange(P, dtype=torch.float64)
    wave = sum(2.0 * torch.cos(2 * math.pi * k / P * (a[:, None] + b[:, None] - c)) for k in KS)
    bias = torch.linspace(-3.0, 3.0, P, dtype=torch.float64)
    L = wave + bias
    row = pg.restricted_excluded(L, ctx)
    with_bias, _ = ci.loss_acc(L, data.all_y)
    wave_alone, _ = ci.loss_acc(wave, data.all_y)
    assert row["restricted_loss"] == pytest.approx(with_bias, rel=1e-9)
    assert abs(with_bias - wave_alone) > 0.1  # the bias term matters here


def test_memorised_logits_excluded_stays_low():
    """A lookup table (large logit on the label of each train pair, nothing on test pairs)
    spreads over all frequencies: removing K leaves it nearly intact."""
    data = grid_data(P)
    ctx = pg.make_context(data, KS)
    L = torch.zeros(P * P, P, dtype=torch.float64)
    tr = data.train_mask
    L[tr.nonzero().flatten(), data.all_y[tr]] = 20.0
    full, _ = ci.loss_acc(L[tr], data.all_y[tr])
    row = pg.restricted_excluded(L, ctx)
    assert full < 1e-6
    assert row["excluded_loss"] < 1e-4  # still memorised
    assert row["excluded_acc"] == 1.0


def test_train_and_test_loss_match_the_full_forward_pass():
    model = fourier_model(P, KS, amp=2.0)
    data = grid_data(P)
    row = pg.progress_row(model, pg.make_context(data, KS))
    with torch.no_grad():
        logits = model(data.all_x)[:, -1]  # the untabulated path
    tr, te = data.train_mask, data.test_mask
    assert row["train_loss"] == pytest.approx(ci.loss_acc(logits[tr], data.all_y[tr])[0], rel=1e-5)
    assert row["test_loss"] == pytest.approx(ci.loss_acc(logits[te], data.all_y[te])[0], rel=1e-5)


def test_weight_norm_is_the_sum_of_squared_weights_in_the_analysis_and_the_trainer():
    # Known answer: every weight 0.5 gives 0.25 per weight
    model = fourier_model(P, KS)
    with torch.no_grad():
        for prm in model.parameters():
            prm.fill_(0.5)
    n = sum(prm.numel() for prm in model.parameters())
    row = pg.progress_row(model, pg.make_context(grid_data(P), KS))
    assert row["weight_norm"] == pytest.approx(0.25 * n, rel=1e-12)
    assert sum_sq_weights(model.parameters()) == pytest.approx(0.25 * n, rel=1e-12)


def test_trainer_and_analysis_log_the_same_weight_norm(grokked_run):
    # The report plots the trainer's metric; the phases read the analysis's: they must agree at
    # every checkpoint.
    runner.analyze_run(grokked_run, threads=1)
    run = Run(grokked_run)
    logged = run.metrics().set_index("step")["weight_norm"]
    analysed = run.metrics("progress").set_index("step")["weight_norm"]
    steps = analysed.index.intersection(logged.index)
    assert len(steps) >= 10
    for s in steps:
        assert logged[s] == pytest.approx(analysed[s], rel=1e-9), s


def test_gini_of_spectra_is_per_frequency():
    p = 11
    one = torch.zeros(p, dtype=torch.float64)
    one[3], one[4] = 3.0, 4.0  # frequency 2's cos and sin rows: one frequency of N = 5
    assert ci.spectrum_gini(one, p) == pytest.approx(1 - 1 / 5)
    flat = torch.ones(p, dtype=torch.float64)
    assert ci.spectrum_gini(flat, p) == pytest.approx(0.0, abs=1e-12)


def _write_handbuilt_run(path, amps: list[float]) -> Run:
    """A run folder whose checkpoints are the hand-built model at growing amplitude."""
    from grokscope import config as C

    base = fourier_model(P, KS)
    mc = base.cfg
    cfg = C.resolve({"task": {"name": "modular", "p": P, "frac_train": 0.5},
                     "model": mc.model_dump(), "train": {"epochs": 100 * (len(amps) - 1), "checkpoint_every": 100}})
    run = Run(path)
    run.write_config(C.to_yaml(cfg))
    for i, amp in enumerate(amps):
        run.save_checkpoint(100 * i, fourier_model(P, KS, amp=amp).state_dict())
    run.update_info(status="completed", steps_per_epoch=1, last_step=100 * (len(amps) - 1))
    return run


def test_runner_writes_the_store_contract(tmp_path):
    run = _write_handbuilt_run(tmp_path / "hb", [0.2, 1.0, 4.0, 12.0])
    summary = runner.analyze_run(run.path)
    for key in ("key_frequencies", "neuron_fve", "logit_fve", "restricted_loss", "excluded_loss", "test_loss",
                "test_acc", "gini_W_E", "gini_W_L", "phases", "phase_rule", "step", "wl_residual",
                "logit_fit_loss", "ablations", "attention_heads", "gini_basis", "tables"):
        assert key in summary, key
    assert summary["key_frequencies"] == KS and summary["step"] == 300
    assert set(summary["phases"]) == {"memorization", "circuit_formation", "cleanup"}
    assert run.read_summary() == json.loads(json.dumps(summary))  # what was returned is what was written
    prog = run.metrics("progress")
    assert prog["step"].tolist() == [0, 100, 200, 300]
    for col in ("epoch", "train_loss", "test_loss", "train_acc", "test_acc", "restricted_loss",
                "restricted_loss_train", "restricted_loss_test", "restricted_acc", "excluded_loss",
                "gini_W_E", "gini_W_L", "weight_norm", *[f"excluded_loss_k{k}" for k in KS],
                *[f"coef_k{k}" for k in KS]):
        assert col in prog.columns, col
    # the coefficient grows with the amplitude the checkpoints were built with
    assert prog["coef_k3"].is_monotonic_increasing
    assert prog["test_loss"].is_monotonic_decreasing
    from safetensors.torch import load_file

    figs = load_file(run.analysis_dir / runner.FIGURES)
    assert figs["embed_spectrum"].shape == (P,) and figs["wl_spectrum"].shape == (P,)
    assert figs["attention"].shape == (2, P, P) and figs["neuron_fve"].shape == (fourier_model(P, KS).cfg.d_mlp,)
    assert figs["neuron_acts"].shape[1:] == (P, P) and figs["neuron_fourier"].shape == figs["neuron_acts"].shape
    assert figs["cluster_wl_fourier"].shape[0] == P and int(figs["cluster_freq"]) in KS


def test_attention_only_model_gets_what_applies(tmp_path):
    from grokscope import config as C

    cfg = C.resolve({"task": {"name": "modular", "p": 13, "frac_train": 0.5},
                     "model": {"d_model": 16, "n_heads": 2, "d_head": 8, "attn_only": True},
                     "train": {"epochs": 100, "checkpoint_every": 100}})
    run = Run(tmp_path / "ao")
    run.write_config(C.to_yaml(cfg))
    model = build(ModelConfig(**cfg.model.model_dump()), 14, 13, 3, 0)
    run.save_checkpoint(0, model.state_dict())
    summary = runner.analyze_run(run.path)
    assert summary["neuron_fve"] is None and summary["gini_W_L"] is None
    assert summary["key_frequencies"] == []
    assert len(summary["attention_heads"]) == 2


def test_per_checkpoint_keys(tmp_path):
    run = _write_handbuilt_run(tmp_path / "hb", [0.0, 12.0])
    runner.analyze_run(run.path, per_checkpoint_keys=True)
    prog = run.metrics("progress")
    # amplitude 0 leaves a model whose logits are constant: its neurons still read the key
    # frequencies, but nothing reaches the logits, so no frequency is key there
    assert prog["key_frequencies"].tolist() == ["", "3,7,12"]
