"""The claim measurements of lm/analysis.py on synthetic metric curves with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from grokscope import config as C
from grokscope.lm import analysis as A
from grokscope.store import Run

STEPS = np.arange(0, 10_001, 100)
TOKENS_PER_STEP = 1_000


def sigmoid(t: np.ndarray, centre: float, width: float, top: float) -> np.ndarray:
    return top / (1 + np.exp(-(t - centre) / width))


def curves(copy_centre: float = 5050, **extra) -> pd.DataFrame:
    """Loss 2 + 3 exp(-t/300): within 5% of its end from t = 300 ln 30 = 1020, so from step 1100.
    Copy accuracy: a sigmoid rising 0 -> 0.8 around `copy_centre`."""
    m = pd.DataFrame({"step": STEPS, "tokens": STEPS * TOKENS_PER_STEP,
                      "train_loss": 2 + 3 * np.exp(-STEPS / 300),
                      "pcopy_acc": sigmoid(STEPS, copy_centre, 200, 0.8),
                      "pcopy_token_acc": sigmoid(STEPS, copy_centre - 1000, 200, 0.9)})
    for k, v in extra.items():
        m[k] = v
    return m


def test_loss_stabilises_by_the_stated_rule():
    m = curves()
    assert A.stable_index(m["train_loss"]) == list(STEPS).index(1100)
    assert A.stable_index([5.0, 4.0, 3.0, 3.0, 3.0, 3.0, 3.0]) == 2  # smoothed [4, 3.5, 3, 3, ...]
    assert A.stable_index([3.0] * 4) == 0
    # a loss that is still falling by more than 5% at the end is stable only at its last points
    falling = 10 - np.arange(50) * 0.1
    assert A.stable_index(falling) >= 45
    assert A.stable_index([10.0, 8.0, 6.0, 4.0, 2.0]) is None  # only the last evaluation is near the end: never stable


def test_surge_half_rise_and_width():
    m = curves()
    hit = A.surge(m["pcopy_acc"])
    # the sigmoid passes 0.4 between 5000 and 5100; 10% (0.08) at 5050 - 200 ln 9 = 4611 -> 4700;
    # 90% at 5050 + 200 ln 9 = 5489 -> 5500
    assert STEPS[hit["index"]] == 5100
    assert (STEPS[hit["i10"]], STEPS[hit["i90"]]) == (4700, 5500)
    assert hit["high"] == pytest.approx(0.8) and hit["low"] == pytest.approx(0.0, abs=1e-6)


def test_surge_ignores_one_noisy_evaluation_and_small_rises():
    acc = np.zeros(60)
    acc[10] = 0.9  # one lucky evaluation
    acc[40:] = 0.5
    hit = A.surge(acc)
    assert hit["index"] == 40 and hit["i10"] == hit["i90"] == 40  # a step edge survives the median
    assert A.surge(np.full(60, 0.02) + 0.05 * (np.arange(60) % 2)) is None  # rise below 0.1: no surge
    assert A.surge([math.nan] * 5 + [0.0] * 10 + [0.6] * 10)["index"] == 15  # rows without the measure skipped
    assert A.surge([math.nan] * 4) is None


def test_surge_is_read_after_the_lowest_point():
    acc = np.r_[np.full(10, 0.3), np.zeros(20), np.full(20, 0.8)]  # starts high (chance), dips, then rises
    hit = A.surge(acc)
    assert hit["index"] == 30 and hit["low"] == 0.0


def test_claim1_gap_in_steps_and_tokens():
    c = A.claim1(curves())
    assert c["copy_column"] == "pcopy_acc"
    assert c["loss_stable"] == {"step": 1100, "tokens": 1100 * TOKENS_PER_STEP}
    assert c["copy_surge"]["step"] == 5100 and c["copy_surge"]["rise_steps"] == 800
    assert c["gap_steps"] == 4000 and c["gap_tokens"] == 4000 * TOKENS_PER_STEP
    assert c["copy_token_surge"]["step"] == 4100 and c["token_gap_steps"] == 3000
    assert "5%" in c["rules"]["loss_stable"] and "50%" in c["rules"]["copy_surge"]
    flat = A.claim1(curves(pcopy_acc=np.zeros(len(STEPS))))
    assert flat["copy_surge"] is None and flat["gap_steps"] is None
    old = A.claim1(curves().drop(columns=["pcopy_acc", "pcopy_token_acc"]).assign(
        copy_acc=sigmoid(STEPS, 3050, 100, 0.5), copy_token_acc=0.0))
    assert old["copy_column"] == "copy_acc" and old["copy_surge"]["step"] == 3100


def induction(cross: dict[int, int], n_layers: int = 3) -> dict[str, np.ndarray]:
    """induction_l{N} columns that step from 0.02 to 0.5 at the given steps."""
    return {f"induction_l{layer}": np.where(STEPS >= cross[layer], 0.5, 0.02) if layer in cross else np.full(len(STEPS), 0.02)
            for layer in range(n_layers)}


@pytest.mark.parametrize(("cross", "order", "rho"), [
    ({0: 2000, 1: 4000, 2: 6000}, "shallow_to_deep", 1.0),
    ({0: 6000, 1: 4000, 2: 2000}, "deep_to_shallow", -1.0),
    ({0: 4000, 1: 2000, 2: 6000}, "mixed", 0.5),
    ({0: 3000, 1: 3000, 2: 3000}, "simultaneous", None),
    ({2: 3000}, "fewer than two layers crossed", None),
])
def test_claim3_layer_order(cross, order, rho):
    c = A.claim3(curves(**induction(cross)), 3)
    for th in ("0.1", "0.3"):
        got = c["thresholds"][th]
        assert [f and f["step"] for f in got["formed"]] == [cross.get(layer) for layer in range(3)]
        assert got["order"] == order and got["layers_crossed"] == sorted(cross)
        assert got["spearman"] == (pytest.approx(rho) if rho is not None else None)


def test_claim3_thresholds_differ():
    cols = {"induction_l0": np.where(STEPS >= 1000, 0.15, 0.02), "induction_l1": np.where(STEPS >= 2000, 0.4, 0.02)}
    c = A.claim3(curves(**cols), 2)
    assert [f and f["step"] for f in c["thresholds"]["0.1"]["formed"]] == [1000, 2000]
    assert [f and f["step"] for f in c["thresholds"]["0.3"]["formed"]] == [None, 2000]


def test_surge_spread_steps_tokens_and_censored():
    sizes = (8, 16, 32)
    cv_sizes = float(np.std(sizes) / np.mean(sizes))

    def pts(step_of):
        return [{"batch_size": b, "seed": s, "last_step": 20_000,
                 "surge": {"step": step_of(b, s), "tokens": step_of(b, s) * b * 128}} for b in sizes for s in range(3)]

    by_steps = A.surge_spread(pts(lambda b, s: 5000 + 100 * s))  # the same steps for every batch size
    assert by_steps["cv_steps"] == pytest.approx(0.0) and by_steps["cv_tokens"] == pytest.approx(cv_sizes)
    assert by_steps["verdict"] == "steps"
    row = by_steps["batch_sizes"][0]
    assert row == {"batch_size": 8, "runs": 3, "surged": 3, "mean_step": 5100.0, "mean_tokens": 5100.0 * 8 * 128,
                   "seed_cv_steps": pytest.approx(np.std([5000, 5100, 5200]) / 5100)}
    by_tokens = A.surge_spread(pts(lambda b, s: 80_000 // b))  # the same tokens for every batch size
    assert by_tokens["cv_tokens"] == pytest.approx(0.0) and by_tokens["verdict"] == "tokens"
    assert by_tokens["cv_steps"] == pytest.approx(float(np.std([1 / b for b in sizes]) / np.mean([1 / b for b in sizes])))
    between = A.surge_spread(pts(lambda b, s: int(40_000 / math.sqrt(b))))  # halfway: neither explains it
    assert between["verdict"] == "neither"
    p = pts(lambda b, s: 5000)
    p[0]["surge"] = None
    cut = A.surge_spread(p)
    assert cut["censored"] == [{"batch_size": 8, "seed": 0, "last_step": 20_000}]
    assert cut["cv_steps"] is None and cut["verdict"] is None and cut["batch_sizes"][0]["surged"] == 2


def fake_run(path, batch: int, seed: int, surge_step: int, n_layers: int = 2) -> Run:
    """A run folder with a text config and hand-written metrics and heads tables (no training)."""
    cfg = C.resolve({"seed": seed, "task": {"name": "text", "tokenizer": "char", "context": 128},
                     "model": {"arch": "llama", "n_layers": n_layers, "d_model": 16, "n_heads": 2, "d_head": 8},
                     "train": {"steps": 10_000, "batch_size": batch}}, [])
    run = Run(path)
    run.write_config(C.to_yaml(cfg))
    run.mark()
    tokens = STEPS * batch * 128
    m = curves(copy_centre=surge_step - 50, induction_max=np.where(STEPS >= surge_step - 1000, 0.5, 0.0),
               **induction({0: surge_step - 2000, 1: surge_step - 1000}, n_layers))
    m["tokens"] = tokens
    for col in ("val_loss", "copy_acc", "copy_token_acc", "copy_loss", "rcopy_acc", "rcopy_token_acc", "icl_score",
                "pcopy_loss"):
        m[col] = 0.0
    run.append("metrics", m.to_dict("records"))
    run.append("heads", [{"step": int(s), "layer": layer, "head": h, "induction": float(m[f"induction_l{layer}"].iloc[i]),
                          "prefix_matching": 0.0, "copying": 0.0, "induction_copying": 0.0, "previous_token": 0.0}
                         for i, s in enumerate(STEPS) for layer in range(n_layers) for h in range(2)])
    return run


def test_summary_holds_the_claims_and_the_headline(tmp_path):
    run = fake_run(tmp_path / "r", 16, 0, 5100)
    s = A.analyze_lm_run(run.path, write=True)
    assert s["paper_copy_accuracy"] == pytest.approx(0.8) and s["best_paper_copy_accuracy"] == pytest.approx(0.8)
    assert s["paper_copy_50"]["step"] == 5200  # 0.8 / (1 + e^-x) > 0.5 from 5050 + 102
    assert s["claim1"]["loss_stable"]["step"] == 1100 and s["claim1"]["copy_surge"]["step"] == 5100
    assert s["claim1"]["gap_steps"] == 4000 and s["claim1"]["gap_tokens"] == 4000 * 16 * 128
    t = s["claim3"]["thresholds"]["0.3"]
    assert [f["step"] for f in t["formed"]] == [3100, 4100] and t["order"] == "shallow_to_deep"
    assert s["claim2_events"] == {"copy": {"step": 5100, "tokens": 5100 * 16 * 128},
                                  "copy_token": {"step": 4100, "tokens": 4100 * 16 * 128},
                                  "induction": {"step": 4100, "tokens": 4100 * 16 * 128}}
    for key in ("copy_accuracy", "copy_token_accuracy", "copy_50", "induction_formed", "loss_flattens"):
        assert key in s  # the older keys stay
    assert run.read_summary()["claim1"]["gap_steps"] == 4000
    upto = A.analyze_lm_run(run.path, step=3000)  # the claims of the history up to a step
    assert upto["claim1"]["copy_surge"] is None


def test_batch_size_spread_from_run_folders(tmp_path):
    for b in (8, 16, 32):
        for seed in (0, 1):
            fake_run(tmp_path / f"b{b}_s{seed}", b, seed, 5100 + 100 * seed)
    (tmp_path / "sweep.json").write_text("{}")  # a sweep's own files are skipped
    (tmp_path / "not-a-run").mkdir()
    res = A.batch_size_spread(sorted(tmp_path.iterdir()))
    assert len(res["runs"]) == 6
    assert res["copy"]["verdict"] == "steps" and res["copy"]["cv_steps"] == pytest.approx(0.0)
    assert res["copy"]["batch_sizes"][2]["mean_tokens"] == pytest.approx(5150 * 32 * 128)
    assert res["induction"]["verdict"] == "steps"
