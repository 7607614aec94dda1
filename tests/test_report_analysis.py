"""The report reads what the real analysis writes (the contract in grokscope.analysis's docstring).

Trains a tiny run, analyses it with grokscope.analysis, builds the report, and checks that no figure
is missing for a contract reason (a file, array or column the report expected under another name).
"""

from __future__ import annotations

import numpy as np
import torch

from grokscope import config as C
from grokscope import pipeline
from grokscope.analysis import runner
from grokscope.report import figures as F
from grokscope.report import write_report
from grokscope.report.data import load_run

CONTRACT_REASONS = ("does not exist yet", "has no `", "has shape", "no rows yet", "yet;")


def test_report_of_a_really_analysed_run(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "tiny"
    cfg = C.resolve({"task": {"name": "modular", "p": 11, "frac_train": 0.5},
                     "model": {"d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32},
                     "train": {"epochs": 200, "checkpoint_every": 20, "eval_every": 10, "threads": 1}})
    pipeline.train_run(cfg, out, progress=False)
    runner.analyze_run(out, threads=1)
    page = write_report(out, png=False).read_text()
    d = load_run(out)
    figs, missing = F.build_all(d)
    bad = [(m.key, m.reason) for m in missing if any(r in m.reason for r in CONTRACT_REASONS)]
    assert bad == []
    keys = {f.key for f in figs}
    assert {"loss", "progress_losses", "test_over_restricted", "gini", "embed_spectrum", "wl_spectrum",
            "logit_fourier", "attention", "neuron_activations", "neuron_fourier", "neuron_fve"} <= keys
    fig = {f.key: f for f in figs}
    assert np.array_equal(fig["embed_spectrum"].series[0].y, d.arrays["embed_spectrum"])
    restricted = next(s for s in fig["progress_losses"].series if s.name == "restricted loss")
    assert np.array_equal(restricted.y, d.progress["restricted_loss"].to_numpy())
    assert len(restricted.y) == 11  # one row per checkpoint (0, 20, ..., 200)
    assert "Analysis summary" in page and "No analysis yet" not in page
