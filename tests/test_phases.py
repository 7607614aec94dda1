"""Phase location (Nanda et al. 2023, Section 5.2; docs/measures.md, "Phases") on curves with known phases, and on a tiny run that groks."""

from __future__ import annotations

import math

import pytest

from grokscope.analysis import phases as ph
from grokscope.analysis import runner
from grokscope.store import Run


def weight_norm(e: int) -> float:
    """Falls slowly to epoch 60, by 10x (log-linearly) over 60-85, then ten times slower than before."""
    if e <= 60:
        return 100.0 * 10 ** (-0.002 * e)
    if e <= 85:
        return weight_norm(60) * 10 ** (-(e - 60) / 25)
    return weight_norm(85) * 10 ** (-0.0002 * (e - 85))


def synthetic_rows(grok: bool = True, circuit: bool = True) -> list[dict]:
    """Memorise 0-20, form the circuit 20-60 (excluded loss rises), clean up 60-80 (test loss
    falls 4 decades, log-linearly) while the weight norm falls sharply until 85, flat afterwards."""
    rows = []
    for e in range(0, 101):
        train = 10 ** (-3 * min(e, 20) / 20)
        exc = train if (e <= 20 or not circuit) else 10 ** (-3 + 3 * min(e - 20, 40) / 40)
        if grok and e > 60:
            test = 10 ** (1 - 4 * min(e - 60, 20) / 20)
        else:
            test = 10.0
        rows.append({"epoch": float(e), "train_loss": train, "test_loss": test, "excluded_loss": exc,
                     "restricted_loss": 3.0, "weight_norm": weight_norm(e), "gini_W_E": 0.1, "gini_W_L": 0.1})
    return rows


def test_known_phases_are_found():
    phases, rule, ev = ph.locate_phases(synthetic_rows(), rule="test_loss")
    assert phases["memorization"] == [0.0, 20.0]
    cf, cl = phases["circuit_formation"], phases["cleanup"]
    assert cf[0] == 20.0
    # 10% of the 4-decade fall is done after 2 epochs, 90% after 18
    assert cl == [62.0, 78.0]
    assert cf[1] == cl[0]
    assert ev["changes"]["circuit_formation"]["excluded_loss"] > 0
    assert "10%-90%" in rule


def test_cleanup_ends_when_the_sharp_fall_of_the_weight_norm_is_over():
    phases, rule, ev = ph.locate_phases(synthetic_rows())
    assert phases["memorization"] == [0.0, 20.0]
    assert phases["cleanup"][0] == 62.0  # starts as the test-loss rule does
    # the sharp fall (0.04 decades/epoch) ends at 85; the slope is averaged over 5 intervals
    # (i-2 .. i+2), so the first window holding none of the sharp intervals starts at 87
    assert phases["cleanup"][1] == 87.0
    assert ev["weight_norm_flattened"] is True and 60 <= ev["weight_norm_fastest_fall_epoch"] <= 85
    assert "weight norm" in rule


def test_cleanup_ends_at_the_last_checkpoint_while_the_weight_norm_still_falls():
    rows = [r for r in synthetic_rows() if r["epoch"] <= 80]
    phases, _, ev = ph.locate_phases(rows)
    assert phases["cleanup"] == [62.0, 80.0]
    assert ev["weight_norm_flattened"] is False and "still falling" in ev["note"]
    with pytest.raises(ValueError, match="unknown phase rule"):
        ph.locate_phases(rows, rule="gini")


def test_no_grokking_means_no_cleanup():
    phases, _, _ = ph.locate_phases(synthetic_rows(grok=False))
    assert phases["cleanup"] is None
    assert phases["memorization"] == [0.0, 20.0]
    assert phases["circuit_formation"] == [20.0, 100.0]


def test_no_circuit_means_no_circuit_formation():
    phases, _, _ = ph.locate_phases(synthetic_rows(grok=False, circuit=False))
    assert phases["circuit_formation"] is None and phases["cleanup"] is None


def test_too_few_checkpoints():
    phases, _, ev = ph.locate_phases(synthetic_rows()[:2])
    assert phases == {"memorization": None, "circuit_formation": None, "cleanup": None}
    assert "note" in ev  # the report says why there are no phases


def test_tiny_trained_run_has_phases_in_order(grokked_run, tmp_path):
    summary = runner.analyze_run(grokked_run)
    phases = summary["phases"]
    mem, cf, cl = phases["memorization"], phases["circuit_formation"], phases["cleanup"]
    assert mem is not None and cf is not None and cl is not None, phases
    assert mem[0] < mem[1] <= cf[0] < cf[1] <= cl[0] < cl[1]
    assert summary["test_acc"] > 0.95 and 2 <= len(summary["key_frequencies"]) <= 6
    prog = Run(grokked_run).metrics("progress").set_index("epoch")
    # excluded loss rises during circuit formation while train loss stays low
    assert prog.loc[cf[1], "excluded_loss"] > 3 * prog.loc[cf[0], "excluded_loss"]
    assert prog.loc[cf[0]:cf[1], "train_loss"].max() < 0.1
    # restricted loss falls well before test loss: over circuit formation it drops more than
    # 5x, and by a factor over ten times larger than test loss does
    r0, r1 = prog.loc[cf[0], "restricted_loss"], prog.loc[cf[1], "restricted_loss"]
    t0, t1 = prog.loc[cf[0], "test_loss"], prog.loc[cf[1], "test_loss"]
    assert r1 < r0 / 5 and (r1 / r0) < (t1 / t0) / 10
    # the test loss at the end of cleanup is within reach of its final value
    assert math.log10(prog.loc[cl[1], "test_loss"]) < math.log10(prog["test_loss"].iloc[-1]) + 1


@pytest.mark.parametrize("key", ["memorization", "circuit_formation", "cleanup"])
def test_phase_evidence_has_boundaries(key):
    _, _, ev = ph.locate_phases(synthetic_rows())
    assert key in ev["changes"]
    assert ev["boundaries"]["memorization_end"]["epoch"] == 20.0
