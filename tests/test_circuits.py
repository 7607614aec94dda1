"""Reverse-engineering one checkpoint (Nanda et al. 2023, Section 4; docs/measures.md) against models with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from grokscope.analysis import circuits as ci
from grokscope.analysis import fourier as fr
from grokscope.config import ModelConfig
from grokscope.models.transformer import build
from grokscope.store import Run, read_run_config
from tests.handbuilt import fourier_model, grid_data


@pytest.mark.parametrize("p,ks", [(31, [3, 7, 12]), (23, [2, 9]), (12, [1, 5])])
def test_handbuilt_fourier_model_is_recovered_exactly(p, ks):
    model = fourier_model(p, ks)
    data = grid_data(p)
    out, figs = ci.reverse_engineer(model, data)
    assert out["key_frequencies"] == ks
    assert out["embed_frequencies"] == ks  # W_E holds exactly the key waves
    assert out["neuron_fve"] == 1.0  # every neuron reads one frequency
    assert out["neuron_fve_mean"] > 0.95
    assert out["neuron_fve_weighted"] == pytest.approx(1.0)
    assert 0.0 <= out["gini_neurons"] < 1.0
    assert {c["freq"] for c in out["clusters"]} == set(ks)
    # each cluster writes to the logits through its own frequency only
    assert all(c["wl_share"] == pytest.approx(1.0, abs=1e-9) for c in out["clusters"])
    # both heads attend to a or b with a logit gap of 40: to `=` itself ~e^-40
    assert all(h["self_attention"] < 1e-9 for h in out["attention_heads"])
    assert out["acc_all"] == 1.0 and out["loss_all"] < 0.05
    assert out["logit_fve"] > 0.99
    assert out["wl_residual"] < 1e-6  # W_L lives in the key directions only
    # equal embedding norms on |K| of N frequencies: Gini = 1 - |K|/N; W_L likewise (its readout
    # waves have equal norms per key frequency)
    assert out["gini_W_E"] == pytest.approx(1 - len(ks) / fr.n_freqs(p), abs=1e-6)
    assert out["gini_W_L"] == pytest.approx(1 - len(ks) / fr.n_freqs(p), abs=1e-6)
    abl = {r["name"]: r for r in out["ablations"]}
    chance = math.log(p)
    assert abl["remove all key"]["loss"] > 0.9 * chance
    for k in ks:
        assert abl[f"remove key {k}"]["loss"] > 100 * abl["none"]["loss"]
    assert abl["remove all non-key"]["loss"] < 1.5 * abl["none"]["loss"]
    assert figs["neuron_fve"].shape == (model.cfg.d_mlp,)
    assert set(figs["neuron_freq"].tolist()) == set(ks)
    assert int(figs["cluster_freq"]) in ks
    assert figs["logit_fourier_norm"].shape == (p, p)
    # the logits' 2D Fourier norm sits in the key blocks
    lf = figs["logit_fourier_norm"].pow(2)
    key_mask = ci.freq_set_mask(p, ks)
    assert lf[key_mask].sum() / lf[1:, :].sum().add(lf[0, 1:].sum()) > 0.99


def test_attention_head_that_reads_one_frequency_of_a():
    # Known answer: head 0's score to position 0 is 2 cos(w_k a), to itself 0, to position 1
    # very negative, so its attention from `=` to a is sigmoid(2 cos(w_k a)): frequency k, almost
    # all of its variance in the fundamental (tanh(cos) has a small third harmonic). Head 1 still
    # attends to b alone: its attention to a is ~0 everywhere.
    p, k = 31, 5
    model = fourier_model(p, [3, k])
    attn = model.blocks[0].attn
    pos0, tok_cos_k = 6 * 2, 2  # fourier_model's layout for two frequencies: tok[1] is k
    gap = 40.0  # fourier_model's score after the 1/sqrt(d_head) scale
    with torch.no_grad():
        attn.W_K[0, pos0 + 0, 0] = 0.0  # no position-0 bonus any more
        attn.W_K[0, pos0 + 1, 0] = -10.0  # position 1: never attended
        attn.W_K[0, tok_cos_k, 0] = 2.0 / gap  # the token's cos(w_k x), at every position
    out, figs = ci.reverse_engineer(model, grid_data(p))
    heads = {h["head"]: h for h in out["attention_heads"]}
    a = torch.arange(p, dtype=torch.float64)
    expected = torch.sigmoid(2 * torch.cos(2 * math.pi * k / p * a))
    torch.testing.assert_close(figs["attention"][0].double(), expected[:, None].expand(p, p), atol=1e-4, rtol=0)
    # the paper's fit (C.1.3) of the pre-softmax score: exactly 2 cos(w_k a) + const
    assert heads["0.0"]["freq"] == k and heads["0.0"]["fve"] == pytest.approx(1.0, abs=1e-9)
    assert heads["0.0"]["alpha"] == pytest.approx(2.0, rel=1e-4) and abs(heads["0.0"]["beta"]) < 1e-4
    assert heads["0.0"]["b_spread"] < 1e-9  # layer 0: the score depends on a alone
    # the post-softmax pattern: sigmoid(2 cos(w_k a)), almost all in frequency k's block
    assert heads["0.0"]["pattern_freq"] == k and heads["0.0"]["pattern_fve"] > 0.99
    assert heads["0.0"]["std"] == pytest.approx(float(expected.std(correction=0)), rel=1e-3)
    assert heads["0.1"]["std"] < 1e-6
    # the rest of head 0's attention goes to `=` itself
    assert heads["0.0"]["self_attention"] == pytest.approx(float(1 - expected.mean()), abs=1e-4)
    assert heads["0.1"]["sigmoid_linear_fve"] is None  # its attention to a never varies


def test_sigmoid_linear_fve_known_answers():
    from grokscope.analysis.attention import sigmoid_linear_fve

    g = torch.Generator().manual_seed(0)
    sa, sb = torch.randn(31, 31, generator=g), torch.randn(31, 31, generator=g)
    # an attention that is exactly linear in the score difference, and one unrelated to it
    assert sigmoid_linear_fve(sa, sb, 0.5 + 0.1 * (sa - sb)) == pytest.approx(1.0, abs=1e-12)
    assert sigmoid_linear_fve(sa, sb, torch.rand(31, 31, generator=g)) < 0.02
    # sigmoid(x) for x uniform on [-L, L]: nearly a line for small L, far from one for large L;
    # the least-squares value in closed form is 1 - SSE/SST, computed here by numpy's lstsq
    import numpy as np

    for half, lo, hi in ((0.5, 0.999, 1.0), (20.0, 0.5, 0.85)):
        x = torch.linspace(-half, half, 2001, dtype=torch.float64)
        y = torch.sigmoid(x)
        A = np.stack([np.ones(len(x)), x.numpy()], 1)
        res = np.linalg.lstsq(A, y.numpy(), rcond=None)[1][0]
        want = 1 - res / float(((y - y.mean()) ** 2).sum())
        got = sigmoid_linear_fve(x, torch.zeros_like(x), y)
        assert got == pytest.approx(want, abs=1e-9) and lo < got <= hi
    # a constant attention has nothing to explain
    assert sigmoid_linear_fve(sa, sb, torch.full((31, 31), 0.7)) is None


def test_handbuilt_subtraction_model_uses_a_minus_b_directions():
    p, ks = 23, [4, 10]
    model = fourier_model(p, ks, sign=-1)
    data = grid_data(p, op="sub")
    assert data.sign == -1
    out, _ = ci.reverse_engineer(model, data)
    assert out["key_frequencies"] == ks
    assert out["acc_all"] == 1.0
    assert out["logit_fve"] > 0.99
    # read with the a+b waves instead, the fit explains nothing
    _, fve_plus, _ = ci.logit_fit(ci.run_grid(model, data).L, p, ks, sign=1)
    assert fve_plus < 0.05


def test_logit_fit_coefficients_and_loss_of_fitted_logits():
    p, ks = 31, [3, 7, 12]
    model = fourier_model(p, ks, amp=12.0)
    L = ci.run_grid(model, grid_data(p)).L
    coefs, fve, fit = ci.logit_fit(L, p, ks)
    # GELU's higher-order terms shave a few percent off the designed amplitude
    assert torch.allclose(coefs, torch.full((3,), 12.0, dtype=torch.float64), rtol=0.08)
    L6 = ci.run_grid(fourier_model(p, ks, amp=6.0), grid_data(p)).L
    coefs6, _, _ = ci.logit_fit(L6, p, ks)
    torch.testing.assert_close(coefs6, coefs / 2, rtol=1e-5, atol=0)  # W_out scales the logits linearly
    y = grid_data(p).all_y
    assert ci.loss_acc(fit, y)[1] == 1.0


def test_grid_fve_of_single_and_mixed_frequency_functions():
    p = 17
    F, _ = fr.fourier_basis(p)
    x = torch.arange(p, dtype=torch.float64)
    w = 2 * math.pi / p
    a, b = x[:, None], x[None, :]
    grids = torch.stack([
        1 + torch.cos(w * 4 * a) * torch.sin(w * 4 * b) + 0.5 * torch.cos(w * 4 * b),  # pure k=4
        torch.cos(w * 2 * a) + torch.cos(w * 6 * b),  # half k=2, half k=6
        0.5 + 0.1 * (torch.cos(w * 5 * (a - b))),  # an attention-like wave, k=5
    ], dim=-1)
    fve, var = ci.grid_fve(grids, F)
    assert fve[3, 0] == pytest.approx(1.0)
    assert fve[1, 1] == pytest.approx(0.5) and fve[5, 1] == pytest.approx(0.5)
    assert fve[4, 2] == pytest.approx(1.0)
    freq, best, explained = ci.neuron_frequencies(fve)
    assert freq.tolist() == [4, 2, 5] or freq.tolist() == [4, 6, 5]
    assert explained.tolist() == [True, False, True]
    torch.testing.assert_close(var[2], (grids[..., 2] - grids[..., 2].mean()).pow(2).sum())


def test_random_model_has_no_key_frequency_and_low_gini():
    p = 31
    cfg = ModelConfig(d_model=64, n_heads=4, d_head=16, d_mlp=128)
    model = build(cfg, p + 1, p, 3, seed=3)
    out, _ = ci.reverse_engineer(model, grid_data(p))
    assert out["key_frequencies"] == []
    assert out["neuron_fve"] < 0.05 and out["neuron_fve_weighted"] < 0.05
    # W_L's spectrum is flat: no frequency holds more than about twice the even share
    assert max(out["frequency_shares"].values(), default=0.0) < ci.key_threshold("wl", p)
    assert out["key_frequencies_neurons"] == []
    assert out["gini_W_E"] < 0.25 and out["gini_W_L"] < 0.25
    assert len(out["attention_heads"]) == 4


def test_random_logits_have_no_dominant_frequency():
    p = 31
    g = torch.Generator().manual_seed(0)
    L = torch.randn(p * p, p, generator=g, dtype=torch.float64)
    shares = ci.logit_freq_shares(L, p)
    assert ci.key_frequencies(shares) == []
    assert shares.max() < 3 * 2 / p  # ~ (2 directions per frequency) / (p outputs * p inputs / p)
    # while the hand-built model's logits put everything on its key frequencies
    L_f = ci.run_grid(fourier_model(p, [3, 7]), grid_data(p)).L
    assert ci.key_frequencies(ci.logit_freq_shares(L_f, p)) == [3, 7]


def test_memorising_model_has_no_key_frequency(memorising_run):
    run = Run(memorising_run)
    cfg = read_run_config(run)
    data = ci.modular_data(cfg)
    model = build(cfg.model, data.p + 1, data.p, 3, cfg.seed)
    run.load_into(model, run.checkpoint_steps()[-1])
    out, _ = ci.reverse_engineer(model, data)
    assert out["train_acc"] == 1.0 and out["test_acc"] < 0.2  # memorised, not learned
    assert out["key_frequencies"] == []
    assert out["gini_W_E"] < 0.25 and out["gini_W_L"] < 0.25
    # removing any handful of frequencies leaves the memorised train set intact
    abl = {r["name"]: r for r in ci.ablations(ci.run_grid(model, data).L, fr.fourier_basis(data.p)[0], [1, 5, 9], data)}
    assert abl["remove all key"]["loss"] < abl["none"]["loss"] + 0.1 * math.log(data.p)


def test_gini_known_values():
    N = 56
    one_hot = torch.zeros(N)
    one_hot[7] = 3.0
    assert ci.gini(one_hot) == pytest.approx(1 - 1 / N)
    assert ci.gini(torch.full((N,), 0.4)) == pytest.approx(0.0, abs=1e-12)
    assert ci.gini(torch.tensor([0.0, 1.0, 0.0, 1.0])) == pytest.approx(0.5)
    assert ci.gini(torch.tensor([2.0, 0.0, 0.0, 0.0])) == pytest.approx(0.75)


def test_neuron_gini_known_values():
    # one neuron of four carries the logits: the others are silent (variance 0) or write a
    # constant over the outputs, which the softmax ignores and the centring removes
    var = torch.tensor([4.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    W_L = torch.tensor([[1.0, -1.0, 0.0], [3.0, -2.0, 1.0], [5.0, 5.0, 5.0], [-2.0, -2.0, -2.0]], dtype=torch.float64)
    assert ci.neuron_gini(var, W_L) == pytest.approx(0.75)
    # every neuron the same: 0; the Gini reads std x row norm, so a neuron with 4x the variance
    # and half the row norm weighs the same
    same = torch.tensor([[1.0, -1.0, 0.0]] * 3 + [[0.5, -0.5, 0.0]], dtype=torch.float64)
    assert ci.neuron_gini(torch.tensor([1.0, 1.0, 1.0, 4.0], dtype=torch.float64), same) == pytest.approx(0.0, abs=1e-12)


def test_wl_residual_of_a_known_map():
    p = 11
    F, _ = fr.fourier_basis(p)
    c = torch.arange(p, dtype=torch.float64)
    w = 2 * math.pi / p
    W_L = torch.stack([torch.cos(w * 2 * c), torch.sin(w * 3 * c), 5 + 0 * c])  # const row ignored
    assert ci.wl_residual(W_L, F, [2, 3]) == pytest.approx(0.0, abs=1e-12)
    assert ci.wl_residual(W_L, F, [2]) == pytest.approx(math.sqrt(0.5))


def test_find_key_frequencies_agrees_with_the_full_analysis():
    model = fourier_model(23, [2, 9])
    assert ci.find_key_frequencies(model, grid_data(23)) == [2, 9]


def test_wave_fit_recovers_alpha_beta_and_frequency():
    from grokscope.analysis.attention import wave_fit

    for p in (31, 12):
        F, _ = fr.fourier_basis(p)
        a = torch.arange(p, dtype=torch.float64)
        w = 2 * math.pi * 5 / p
        fit = wave_fit(3 * torch.cos(w * a) - 2 * torch.sin(w * a) + 7, F)
        assert fit["freq"] == 5 and fit["fve"] == pytest.approx(1.0)
        assert fit["alpha"] == pytest.approx(3.0) and fit["beta"] == pytest.approx(-2.0)
        noisy = 3 * torch.cos(w * a) + torch.cos(2 * math.pi * 2 / p * a)  # 9/2 against 1/2 of the variance
        assert wave_fit(noisy, F)["fve"] == pytest.approx(0.9)


@pytest.mark.parametrize("p,ks", [(31, [3, 7, 12]), (23, [2, 9])])
def test_mlp_fve_and_mlp_ablations_on_the_handbuilt_model(p, ks):
    model = fourier_model(p, ks)
    out, _ = ci.reverse_engineer(model, grid_data(p))
    # Section 4.2: A (W_L c_k) is a multiple of cos(w_k(a+b)), A (W_L s_k) of sin(w_k(a+b))
    assert {(c["freq"], c["kind"]) for c in out["mlp_fve_components"]} == {(k, t) for k in ks for t in ("cos", "sin")}
    assert out["mlp_fve"] > 0.99 and out["mlp_fve_std"] < 0.01
    abl = {r["name"]: r for r in out["mlp_ablations"]}
    base = abl["none"]["loss"]
    assert base == pytest.approx(out["loss_all"], rel=1e-5)  # the model's logits (float32), rebuilt in float64
    # the neurons are (almost) degree-2 polynomials, and the logits read only the 2|K| directions
    assert abl["explained neurons -> degree-2 polynomial of their frequency"]["acc"] == 1.0
    assert abl["activations projected onto the W_L key directions"]["loss"] == pytest.approx(base, rel=1e-6)
    assert abl["all neurons -> key cos/sin(w(a+b)) terms"]["acc"] == 1.0
    assert abl["activations projected onto their null space"]["loss"] > 0.9 * math.log(p)
    # W_U reads only the dimensions the MLP writes: the skip connection carries nothing to the logits
    skip = {r["name"]: r for r in out["skip_ablations"]}
    assert skip["final skip connection zero-ablated"]["loss"] == pytest.approx(base, rel=1e-9)
    assert skip["final skip connection mean-ablated"]["loss"] == pytest.approx(base, rel=1e-9)


def test_neuron_frequency_is_chosen_among_the_key_frequencies():
    # neuron 0 is all frequency 2, neuron 1 is 60% frequency 4 and 40% frequency 1
    fve = torch.zeros(5, 2, dtype=torch.float64)
    fve[1, 0] = 1.0
    fve[3, 1], fve[0, 1] = 0.6, 0.4
    freq, best, explained = ci.neuron_frequencies(fve)
    assert freq.tolist() == [2, 4] and explained.tolist() == [True, False]
    freq, best, explained = ci.neuron_frequencies(fve, ks=[1, 3])
    assert freq.tolist()[1] == 1 and best.tolist() == [0.0, 0.4] and not explained.any()
    assert not ci.neuron_frequencies(fve, ks=[])[2].any()


def test_key_rules_agree_on_the_handbuilt_model_and_differ_in_threshold():
    p, ks = 31, [3, 7, 12]
    out, _ = ci.reverse_engineer(fourier_model(p, ks), grid_data(p), key_rule="neurons")
    assert out["key_rule_name"] == "neurons" and out["key_frequencies"] == ks
    assert out["key_frequencies_wl"] == ks and out["key_frequencies_neurons"] == ks
    with pytest.raises(ValueError, match="unknown key-frequency rule"):
        ci.reverse_engineer(fourier_model(p, ks), grid_data(p), key_rule="max")
    # W_L's shares: three equal key frequencies hold a third each
    shares = ci.wl_freq_shares(ci.model_wl(fourier_model(p, ks), p), fr.fourier_basis(p)[0])
    torch.testing.assert_close(shares[[k - 1 for k in ks]], torch.full((3,), 1 / 3, dtype=torch.float64))
