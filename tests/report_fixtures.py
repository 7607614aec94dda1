"""Fake run folders for the report's tests: the store contract's files, filled with plausible data.

`make_fake_run` writes config.yaml, run.json, a "metrics" table and (unless `analysed=False`) what
analysis writes (grokscope.analysis's docstring): the "progress" table, analysis/summary.json and
analysis/figures.safetensors with the contract's names and shapes. The curves look like a grokking
run (train loss falls, test loss drops late; restricted loss falls early, excluded loss rises), so a
screenshot of the report looks like the real thing; the tests check that each figure shows exactly
these stored numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from safetensors.numpy import save_file

from grokscope.store import Run

KEYS = [3, 7, 9]


def fourier_basis(p: int) -> np.ndarray:
    """[p, p] orthonormal rows: const, cos 1, sin 1, ... (docs/measures.md, "Fourier basis"), for building test data."""
    x = np.arange(p)
    rows = [np.ones(p)]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [np.cos(2 * np.pi * k * x / p), np.sin(2 * np.pi * k * x / p)]
    F = np.stack(rows)
    return F / np.linalg.norm(F, axis=1, keepdims=True)


def modular_config(p: int, name: str | None = None, paper: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "seed": 0, "task": {"name": "modular", "p": p, "op": "add", "frac_train": 0.3},
            "model": {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32, "act_fn": "relu"},
            "optim": {"lr": 1e-3, "weight_decay": 1.0}, "train": {"epochs": 2000, "checkpoint_every": 100},
            "paper": paper}


def fake_metrics(epochs: int, every: int = 10, grok: float | None = None) -> list[dict[str, float]]:
    grok = 0.6 * epochs if grok is None else grok
    rows = []
    for s in range(0, epochs + 1, every):
        t = float(s)
        drop = 1 / (1 + np.exp((t - grok) / 60))  # 1 before grokking, 0 after
        rows.append({"step": s, "epoch": t, "lr": 1e-3 * min(1.0, t / 10),
                     "train_loss": 3.2 * np.exp(-t / 80) + 1e-5, "test_loss": 1e-4 + (4.0 + 4 * (1 - np.exp(-t / 200))) * drop,
                     "train_acc": min(1.0, t / 150), "test_acc": 0.04 + 0.96 * (1 - drop),
                     "weight_norm": 2000 + 1600 * np.exp(-((t - 200) / 250) ** 2) - 600 * (1 - drop)})
    return rows


def fake_progress(epochs: int, every: int | None = None, grok: float | None = None) -> list[dict[str, float]]:
    every = every or max(1, epochs // 20)  # like checkpoints: 20 of them
    grok = 0.6 * epochs if grok is None else grok
    rows = []
    for s in range(0, epochs + 1, every):
        t = float(s)
        drop = 1 / (1 + np.exp((t - grok) / 60))
        early = 1 / (1 + np.exp((t - 0.6 * grok) / 80))
        row = {"step": s, "epoch": t, "train_loss": 3.2 * np.exp(-t / 80) + 1e-5,
               "test_loss": 1e-4 + 8.0 * drop, "train_acc": min(1.0, t / 150), "test_acc": 0.04 + 0.96 * (1 - drop),
               "restricted_loss": 0.01 + 4.5 * early, "restricted_loss_train": 0.01 + 4.4 * early,
               "restricted_loss_test": 0.01 + 4.6 * early, "restricted_acc": 1 - 0.95 * early,
               "excluded_loss": 1e-4 + 6 * (1 - early) * (t / epochs), "gini_W_E": 0.2 + 0.6 * (1 - drop),
               "gini_W_L": 0.25 + 0.6 * (1 - drop), "weight_norm": 2000 + 1600 * early}
        for i, k in enumerate(KEYS):
            row[f"excluded_loss_k{k}"] = 1e-4 + (2 + i) * (1 - early)
            row[f"coef_k{k}"] = (10 + 3 * i) * (1 - early)
        rows.append(row)
    return rows


def fake_summary(epochs: int) -> dict[str, Any]:
    return {"step": epochs, "key_frequencies": KEYS, "neuron_fve": 0.78125, "logit_fve": 0.93,  # 25 of the 32 fake neurons below have FVE > 0.85
            "restricted_loss": 0.01, "excluded_loss": 5.2, "test_loss": 1e-4, "test_acc": 1.0,
            "gini_W_E": 0.8, "gini_W_L": 0.85,
            "phases": {"memorization": [0, 0.15 * epochs], "circuit_formation": [0.15 * epochs, 0.55 * epochs],
                       "cleanup": [0.55 * epochs, 0.75 * epochs]},
            "wl_residual": 0.07, "logit_fit_loss": 0.02,
            "ablations": [{"name": "none", "loss": 1e-4, "acc": 1.0}, {"name": "remove k=3", "loss": 2.3, "acc": 0.4},
                          {"name": "remove non-key", "loss": 5e-5, "acc": 1.0}],
            "attention_heads": [{"head": 0, "freq": 3, "fve": 0.97}, {"head": 1, "freq": 9, "fve": 0.95}],
            "phase_rule": "synthetic fixture", "gini_basis": "per frequency (N = (p-1)/2)",
            "tables": {"table 1 (fixture)": [{"run": "fixture", "test_loss": 1e-4, "key_frequencies": "3, 7, 9"}]}}


def fake_arrays(p: int, n_heads: int = 2, d_mlp: int = 32, n_neurons: int = 3) -> dict[str, np.ndarray]:
    F = fourier_basis(p)
    rng = np.random.default_rng(0)
    a = np.arange(p)[:, None]
    b = np.arange(p)[None, :]
    w = lambda k: 2 * np.pi * k / p  # noqa: E731
    spec = np.full(p, 0.05) + 0.02 * rng.random(p)
    for k in KEYS:
        spec[2 * k - 1: 2 * k + 1] = 3.0 + k / 10
    neuron_freq = np.array([KEYS[i % len(KEYS)] for i in range(d_mlp)], dtype=np.int64)
    acts = np.stack([np.maximum(0, np.cos(w(neuron_freq[n]) * (a + b)) + 0.3) for n in range(n_neurons)])
    cluster = [n for n in range(d_mlp) if neuron_freq[n] == KEYS[0]]
    cl = np.zeros((p, len(cluster)))
    cl[2 * KEYS[0] - 1] = rng.normal(size=len(cluster))
    cl[2 * KEYS[0]] = rng.normal(size=len(cluster))
    logits_norm = 0.02 * rng.random((p, p))
    for k in KEYS:
        logits_norm[2 * k - 1: 2 * k + 1, 2 * k - 1: 2 * k + 1] = 5.0
    return {
        "embed_spectrum": spec.astype(np.float32), "wl_spectrum": (spec * 1.5).astype(np.float32),
        "logit_fourier_norm": logits_norm.astype(np.float32),
        "attention": np.stack([0.5 + 0.45 * np.cos(w(KEYS[h % len(KEYS)]) * a) + 0 * b for h in range(n_heads)]).astype(np.float32),
        "neuron_ids": np.arange(n_neurons, dtype=np.int64),
        "neuron_acts": acts.astype(np.float32),
        "neuron_fourier": np.einsum("ia,nab,jb->nij", F, acts - acts.mean(axis=(1, 2), keepdims=True), F).astype(np.float32),
        "neuron_fve": np.clip(0.95 - 0.3 * (np.arange(d_mlp) % 5 == 0) + 0.02 * rng.random(d_mlp), 0, 1).astype(np.float32),
        "neuron_freq": neuron_freq,
        "cluster_wl_fourier": cl.astype(np.float32),
        "cluster_freq": np.array(KEYS[0], dtype=np.int64),
    }


def write_analysis(path: Path, p: int, epochs: int, n_heads: int = 2, d_mlp: int = 32) -> dict[str, np.ndarray]:
    """Add analysis's outputs (progress table, summary.json, figures.safetensors) to a run folder."""
    run = Run(path)
    run.replace_table("progress", fake_progress(epochs))
    run.write_summary(fake_summary(epochs))
    arrays = fake_arrays(p, n_heads, d_mlp)
    run.analysis_dir.mkdir(parents=True, exist_ok=True)
    save_file(arrays, str(run.analysis_dir / "figures.safetensors"))
    return arrays


def make_fake_run(path: Path, p: int = 23, epochs: int = 2000, name: str | None = None, analysed: bool = True,
                  status: str = "completed", paper: dict[str, Any] | None = None) -> Run:
    run = Run(path)
    path.mkdir(parents=True, exist_ok=True)
    run.write_config(yaml.safe_dump(modular_config(p, name, paper), sort_keys=False))
    run.update_info(status=status, seed=0, total_steps=epochs, steps_per_epoch=1, last_step=epochs,
                    grok_epoch_50=1200.0, grok_epoch_99=1400.0)
    run.append("metrics", fake_metrics(epochs))
    if analysed:
        write_analysis(path, p, epochs)
    return run


def make_fake_digits_run(path: Path, epochs: int = 500, n_pos: int = 3, extra_table: bool = True) -> Run:
    """A non-modular run (n-digit addition shape): per-position losses, an extra metric, an extra table."""
    run = Run(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"name": None, "seed": 1, "task": {"name": "digits", "n_digits": n_pos - 1, "n_train": 700},
           "model": {"n_layers": 1, "d_model": 32, "n_heads": 4, "d_head": 8, "d_mlp": 64},
           "optim": {"lr": 1e-4, "weight_decay": 0.1}, "train": {"epochs": epochs}}
    run.write_config(yaml.safe_dump(cfg, sort_keys=False))
    run.update_info(status="running", seed=1, total_steps=epochs * 2, last_step=epochs)
    rows = []
    for s in range(0, epochs + 1, 25):
        row = {"step": s, "epoch": s / 11, "lr": 1e-4, "train_loss": 2.0 / (1 + s / 50), "test_loss": 2.5 / (1 + s / 200),
               "train_acc": s / epochs, "test_acc": 0.5 * s / epochs, "weight_norm": 500 - s / 10, "grad_norm": 1 + s / 100}
        for j in range(n_pos):
            row[f"train_loss_pos{j}"] = 2.0 / (1 + s / (30 + 20 * j))
            row[f"test_loss_pos{j}"] = 2.4 / (1 + s / (60 + 40 * j))
            row[f"test_acc_pos{j}"] = min(1.0, s / (100 + 100 * j))
        rows.append(row)
    run.append("metrics", rows)
    if extra_table:
        run.append("induction", [{"step": s, "score_L0H0": s / epochs, "score_L0H1": 1 - s / epochs} for s in range(0, epochs + 1, 100)])
    return run


# the copy-LM fixture's exact copy accuracy at steps 0, 10, ..., 50: the paper's test first passes
# 50% at step 20, the hex variant at step 40 (so a page that reads the wrong test shows step 40)
LM_STEPS = [0, 10, 20, 30, 40, 50]
LM_PCOPY = [0.0, 0.2, 0.6, 0.7, 0.8, 0.9]
LM_HEX = [0.0, 0.0, 0.1, 0.3, 0.52, 0.6]
LM_TOKENS_PER_STEP = 512


def make_fake_lm_run(path: Path, paper: bool = True, analysed: bool = True) -> Run:
    """A finished copy-LM run written by hand (milliseconds): its `metrics` and `heads` tables with
    known copy accuracies (LM_PCOPY, LM_HEX; the paper's test left out when `paper` is False, as in
    a run logged before it existed), then the real `lm.analysis` summary of them."""
    from grokscope.lm.analysis import analyze_lm_run

    run = Run(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"name": None, "seed": 0,
           "task": {"name": "text", "corpus": "default", "tokenizer": "char", "context": 64, "repeat_frac": 0.5},
           "model": {"arch": "llama", "n_layers": 1, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32},
           "optim": {"lr": 3e-3}, "train": {"steps": LM_STEPS[-1], "batch_size": 4, "grad_accum": 2}}
    run.write_config(yaml.safe_dump(cfg, sort_keys=False))
    run.update_info(status="completed", seed=0, total_steps=LM_STEPS[-1], last_step=LM_STEPS[-1],
                    d_vocab=97, n_params=10_000)
    rows = []
    for i, s in enumerate(LM_STEPS):
        row = {"step": s, "tokens": s * LM_TOKENS_PER_STEP, "train_loss": 3.0 / (1 + i), "val_loss": 3.2 / (1 + i),
               "batch_loss": 3.0 / (1 + i), "copy_acc": LM_HEX[i], "copy_token_acc": min(1.0, LM_HEX[i] + 0.1),
               "copy_loss": 2.0 - LM_HEX[i], "rcopy_acc": LM_HEX[i] / 2, "rcopy_token_acc": LM_HEX[i] / 2 + 0.05,
               "icl_score": -0.1 * i, "repeat_gain": 0.1 * i, "induction_l0": 0.05 * i, "prefix_matching_l0": 0.05 * i,
               "previous_token_l0": 0.1, "induction_copying_l0": 0.01 * i, "induction_max": 0.05 * i}
        if paper:
            row.update(pcopy_acc=LM_PCOPY[i], pcopy_token_acc=min(1.0, LM_PCOPY[i] + 0.05), pcopy_loss=2.0 - LM_PCOPY[i])
        rows.append(row)
    run.append("metrics", rows)
    run.append("heads", [{"step": s, "layer": 0, "head": h, "induction": 0.05 * i * (h + 1) / 2,
                          "prefix_matching": 0.05 * i * (h + 1) / 2, "previous_token": 0.1, "copying": 0.5,
                          "induction_copying": 0.01 * i} for i, s in enumerate(LM_STEPS) for h in range(2)])
    if analysed:
        analyze_lm_run(path, write=True)
    return run
