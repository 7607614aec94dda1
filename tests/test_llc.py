"""The LLC estimator (analysis/llc.py) on models whose learning coefficient is known by
construction, its diagnostics, and `grokscope analyze --llc` end to end.

Known answers (Watanabe 2009; Lau et al. 2023, Section 3), for the squared loss of n examples with
an orthonormal design (X^T X / n = I) and noise orthogonal to the columns of X, so that w* is the
exact minimum:
- linear regression with d weights is regular: lambda = d/2;
- the same with every column duplicated (d weights, rank d/2) has lambda = rank/2 = d/4: the
  duplicated directions change nothing;
- f(x) = sum_i w_i^2 x_i at w* = 0 is singular: each weight enters quartically, lambda = d/4, with
  no quadratic approximation to explain it (a regular count would say d/2).
Localisation gamma lowers the finite-sample answer slightly: for the quadratic cases the exact
tempered-posterior value is 1/2 sum_i nbeta h_i / (nbeta h_i + gamma) (here within 0.4% of the
limit), for the quartic one a 1-D integral, computed below.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from grokscope.analysis import llc, llc_run
from grokscope.config import ConfigError
from tests.conftest import TINY, run_cli_here, train_tiny

N = 2000


def orthonormal_design(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """X [n, d] with X^T X / n = I, and noise [n] orthogonal to X's columns."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    e = torch.randn(n, generator=g, dtype=torch.float64)
    return Q * math.sqrt(n), e - Q @ (Q.T @ e)


def linear_case(d: int, duplicate: bool = False, seed: int = 0):
    """A least-squares fit: (loss_fn, [w*], X, y); with duplicate, X = [Z, Z] has rank d/2."""
    Z, e = orthonormal_design(N, d // 2 if duplicate else d, seed)
    y = Z @ torch.randn(Z.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 7)) + e
    v = Z.T @ y / N  # the exact least-squares fit, as Z^T Z / N = I
    X, w = (torch.cat([Z, Z], dim=1), torch.cat([v, v]) / 2) if duplicate else (Z, v)
    w.requires_grad_(True)
    return (lambda bx, by: 0.5 * ((by - bx @ w) ** 2).mean()), [w], X, y


QUICK = llc.Settings(epsilon=3e-4, gamma=1.0, chains=4, burnin=200, draws=1000, batches=1)


@pytest.fixture(scope="module")
def regular():
    """Linear regression with 10 weights, and its estimate: (estimate, w* before, w after)."""
    loss_fn, params, X, y = linear_case(10)
    w_star = params[0].detach().clone()
    est = llc.estimate(loss_fn, params, [(X, y)], QUICK)
    return est, w_star, params[0].detach().clone()


def test_regular_model_has_half_its_parameter_count(regular):
    est = regular[0]
    assert est.nbeta == pytest.approx(N / math.log(N))
    assert est.llc == pytest.approx(5.0, rel=0.10)  # d/2
    assert est.trace.shape == (4, 1200)


def test_duplicated_directions_do_not_count():
    loss_fn, params, X, y = linear_case(12, duplicate=True)
    est = llc.estimate(loss_fn, params, [(X, y)], QUICK)
    assert est.llc == pytest.approx(3.0, rel=0.10)  # rank/2 = 6/2, not 12/2


def test_singular_quartic_model_has_a_quarter_per_weight():
    d = 4
    X, e = orthonormal_design(N, d, 2)
    w = torch.zeros(d, dtype=torch.float64, requires_grad=True)
    loss_fn = lambda bx, by: 0.5 * ((by - bx @ w**2) ** 2).mean()  # noqa: E731
    s = llc.Settings(epsilon=3e-3, gamma=1.0, chains=8, burnin=200, draws=800, batches=1)
    est = llc.estimate(loss_fn, [w], [(X, e)], s)
    # the exact tempered, localised posterior mean of nbeta*K, K = sum w_i^4 / 2, by quadrature
    nb, g = est.nbeta, torch.linspace(-3, 3, 200_001, dtype=torch.float64)
    dens = torch.exp(-nb * g**4 / 2 - s.gamma * g**2 / 2)
    exact = d * float((nb * g**4 / 2 * dens).sum() / dens.sum())
    assert exact == pytest.approx(d / 4, rel=0.05)  # gamma's pull costs ~3% at this nbeta
    assert est.llc == pytest.approx(exact, rel=0.10)
    assert est.llc < 0.6 * d / 2  # well below what a regular model of d weights would give


def test_minibatches_estimate_the_same_coefficient():
    loss_fn, params, X, y = linear_case(10)
    est = llc.estimate(loss_fn, params, llc.split_batches(X, y, 8, seed=0), QUICK)
    assert est.llc == pytest.approx(5.0, rel=0.15)


def test_unequal_minibatches_cancel_out_with_the_control_variate():
    """Batches of very unequal loss at w* (examples sorted by residual, 0.004 to 1.9) and a number
    of draws that is not a whole number of passes: the estimate stays near d/2 because each draw
    counts L_m(w) - L_m(w*); the same chains counted as L_m(w) - L_n(w*) (devinterp's way) miss by
    more than the coefficient itself on some seed."""
    loss_fn, params, X, y = linear_case(10)
    order = (y - X @ params[0].detach()).abs().argsort()
    batches = [(X[i].contiguous(), y[i].contiguous()) for i in order.tensor_split(8)]
    centred, plain = [], []
    for seed in range(4):
        s = llc.Settings(epsilon=3e-4, gamma=1.0, chains=4, burnin=200, draws=36, batches=8, seed=seed)
        est = llc.estimate(loss_fn, params, batches, s)
        centred.append(est.llc)
        raw = llc.sgld_trace(loss_fn, params, batches, s, est.nbeta)  # the same chains, no offsets
        plain.append(float(est.nbeta * (raw[:, s.burnin:].mean() - est.init_loss)))
    assert all(v == pytest.approx(5.0, rel=0.2) for v in centred), centred
    assert max(abs(v - 5.0) for v in plain) > 5.0, plain


def test_trace_is_stationary_after_burn_in_and_the_weights_come_back(regular):
    est, w_star, w_after = regular
    assert torch.equal(w_after, w_star)  # the chains leave w* as they found it
    draws = est.trace[:, QUICK.burnin:]
    assert est.r_hat < 1.1
    assert abs(est.drift) < 0.15 * est.llc
    # the first steps climb from L(w*) towards the posterior's mean loss, then stay there
    excess = draws.mean() - est.init_loss
    assert (est.trace[:, 0] - est.init_loss).abs().max() < excess / 10
    assert est.per_chain == pytest.approx([est.llc] * 4, rel=0.3)


def test_drift_flags_a_chain_that_has_not_reached_equilibrium():
    loss_fn, params, X, y = linear_case(10)
    s = llc.Settings(epsilon=1e-5, gamma=1.0, chains=2, burnin=0, draws=400, batches=1)
    est = llc.estimate(loss_fn, params, [(X, y)], s)
    assert est.drift > 0.3 * est.llc  # still climbing: the estimate is not to be trusted


def test_a_diverging_chain_gives_nan_not_a_number():
    loss_fn, params, X, y = linear_case(4)
    s = llc.Settings(epsilon=1.0, gamma=1.0, chains=1, burnin=0, draws=200, batches=1)
    est = llc.estimate(loss_fn, params, [(X, y)], s)
    assert math.isnan(est.llc) and math.isnan(est.row()["llc"])


def test_settings_overrides_are_checked():
    s = llc.Settings().with_overrides(["epsilon=1e-5", "chains=3", "nbeta=none"])
    assert (s.epsilon, s.chains, s.nbeta) == (1e-5, 3, None)
    for bad in ("eps=1", "chains=two", "gamma=-1", "draws=0", "epsilon=inf", "nbeta"):
        with pytest.raises(ConfigError):
            llc.Settings().with_overrides([bad])


# ----------------------------------------------------------------------------- the command line
FEW = ["--llc-set", "chains=2", "--llc-set", "burnin=3", "--llc-set", "draws=6", "--llc-set", "batches=2"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    threads = torch.get_num_threads()
    try:
        return train_tiny(tmp_path_factory.mktemp("llc") / "tiny", TINY + ["train.epochs=100"])
    finally:
        torch.set_num_threads(threads)


def test_analyze_llc_stores_every_checkpoint_and_adds_keys(tiny_run, tmp_path):
    from grokscope.report import figures as F
    from grokscope.report.data import load_run
    from grokscope.store import Run

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    plain = run_cli_here("analyze", str(run), "--json")
    assert plain.returncode == 0, plain.stderr
    res = run_cli_here("analyze", str(run), "--json", "--llc", *FEW)
    assert res.returncode == 0, res.stderr
    s, before = json.loads(res.stdout), json.loads(plain.stdout)
    assert set(before) < set(s)  # every existing key kept, only new ones added
    assert {"llc", "llc_std", "llc_settings"} <= set(s) and s["llc_settings"]["draws"] == 6
    assert s["timing_seconds"]["llc"] > 0
    table = Run(run).metrics("llc")
    assert list(table["step"]) == [0, 50, 100] and table["llc"].notna().all()
    assert table["llc"].iloc[-1] == pytest.approx(s["llc"])
    from safetensors.torch import load_file

    traces = load_file(str(run / "analysis" / "llc_traces.safetensors"))
    assert traces["trace"].shape == (3, 2, 9) and traces["steps"].tolist() == [0, 50, 100]
    # the report draws it once, in its own figure, not again as a generic table
    figs, _ = F.build_all(load_run(run))
    keys = [f.key for f in figs]
    assert "llc" in keys and "table_llc" not in keys
    fig = next(f for f in figs if f.key == "llc")
    drawn = [v if v > 0 else float("nan") for v in table["llc"]]  # negative: not a minimum, left out
    assert fig.series[0].y.tolist() == pytest.approx(drawn, nan_ok=True)


def test_the_figure_leaves_out_negative_estimates_and_names_them(tmp_path):
    """A negative LLC (the chain found lower loss: no minimum) is a gap in the curve, named in the
    caption, so the positive readings keep their scale."""
    import numpy as np
    import pandas as pd

    from grokscope.report import figures as F
    from grokscope.report.data import RunData

    llc_table = pd.DataFrame({"step": [0, 500, 1000, 1500], "llc": [-3167.0, 17.8, -10.9, 21.3]})
    d = RunData(path=tmp_path, config={"task": {"name": "text"}}, config_text="", info={},
                metrics=pd.DataFrame(), progress=pd.DataFrame(), summary=None, arrays={},
                other_tables={"llc": llc_table})
    (fig,) = F.local_learning_coefficient(d)
    y = fig.series[0].y
    assert np.isnan(y[[0, 2]]).all() and y[[1, 3]].tolist() == [17.8, 21.3]
    assert "step 0 (-3.17e+03), step 1,000 (-10.9)" in fig.caption
    llc_table["llc"] = [5.0, 4.0, 3.0, 2.0]
    (fig,) = F.local_learning_coefficient(d)
    assert fig.series[0].y.tolist() == [5.0, 4.0, 3.0, 2.0] and "Left out" not in fig.caption


def test_the_numbers_do_not_depend_on_the_number_of_processes(tiny_run):
    from grokscope.store import Run

    s = llc.Settings(chains=2, burnin=3, draws=6, batches=2)
    steps = Run(tiny_run).checkpoint_steps()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        rows1, tr1, n1 = llc_run.over_checkpoints(tiny_run, steps, 10, s, workers=1)  # in this process
        assert torch.get_num_threads() == 2  # lowered to one thread for the chains, then restored
        rows2, tr2, n2 = llc_run.over_checkpoints(tiny_run, steps, 10, s, workers=2)  # two spawned processes
    finally:
        torch.set_num_threads(threads)
    assert [r["step"] for r in rows2] == steps and rows2[0]["epoch"] == steps[0] / 10
    assert rows1 == rows2 and torch.equal(tr1["trace"], tr2["trace"]) and torch.equal(tr1["steps"], tr2["steps"])
    assert tr1["trace"].shape == (len(steps), 2, 9) and n1 == n2 == 264  # p=23, half of 23*23 pairs in training
    assert len({r["llc"] for r in rows1}) == len(steps)  # each checkpoint its own estimate, in order


def test_llc_bad_input_exits_2(tiny_run):
    res = run_cli_here("analyze", str(tiny_run), "--llc-set", "draws=5")
    assert res.returncode == 2 and "add --llc" in res.stderr
    res = run_cli_here("analyze", str(tiny_run), "--llc", "--llc-set", "draws=lots")
    assert res.returncode == 2 and "draws takes a number" in res.stderr


# ----------------------------------------------------------------------------- language-model runs
def test_analyze_llc_on_a_language_model_run(tmp_path):
    """The LM path: L_n(w*) is the LM's own next-token loss on the sampled training windows, n
    their number of predicted tokens, every checkpoint gets a row, and the LM report draws it."""
    from safetensors.torch import load_file

    from grokscope import pipeline
    from grokscope.lm.text import fixed_windows, prepare
    from grokscope.lm.trainer import lm_loss
    from grokscope.models.loading import model_from_run
    from grokscope.report import figures as F
    from grokscope.report.data import load_run
    from grokscope.store import Run
    from tests.test_lm_trainer import tiny_cfg

    cfg = tiny_cfg(tmp_path, **{"task.repeat_frac": 0})  # plain text windows: L_n(w*) computable here
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        pipeline.train_run(cfg, run, progress=False)
    finally:
        torch.set_num_threads(threads)
    res = run_cli_here("analyze", str(run), "--json", "--llc", "--threads", "1", *FEW, "--llc-set", "windows=12")
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["kind"] == "lm" and s["llc_step"] == 8 and s["llc_settings"]["n"] == 12 * 64
    table = Run(run).metrics("llc")
    assert list(table["step"]) == Run(run).checkpoint_steps() == [0, 3, 6, 8]
    assert "epoch" not in table and table["llc"].notna().all() and table["llc"].iloc[-1] == pytest.approx(s["llc"])
    assert load_file(str(run / "analysis" / "llc_traces.safetensors"))["trace"].shape == (4, 2, 9)
    model, _, _ = model_from_run(run, 8)
    w = fixed_windows(prepare(cfg.task).train, 12, 65)
    with torch.no_grad():
        want = float(lm_loss(model(w[:, :-1]), w[:, 1:]))
    assert table["llc_init_loss"].iloc[-1] == pytest.approx(want, rel=1e-5)
    assert table["llc_init_loss"].iloc[0] > table["llc_init_loss"].iloc[-1]  # training lowered the loss
    figs, _ = F.build_all(load_run(run))
    fig = next(f for f in figs if f.key == "llc")
    assert "copy accuracy" in fig.caption and "table_llc" not in [f.key for f in figs]
