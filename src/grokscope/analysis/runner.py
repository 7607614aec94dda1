"""Analyse a run folder: read its checkpoints, write the measures back (docs/measures.md, part 1).

With llc_run.py (the LLC's chains, in their own processes), the only module of
`grokscope.analysis` that touches the run store. `analyze_run` is what
`grokscope analyze` and `grokscope reproduce` call. It checks everything it needs (config, task,
checkpoints) and computes every measure before the first write, so a bad or corrupt run leaves
what is already saved untouched; each write is atomic. The summary is written last: its
presence means the analysis is complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from grokscope import config as C
from grokscope.analysis import circuits as ci
from grokscope.analysis import llc as lc
from grokscope.analysis import llc_run
from grokscope.analysis import phases as ph
from grokscope.analysis import progress as pg
from grokscope.models.transformer import build
from grokscope.store import Run, StoreError, atomic_write, read_run_config

FIGURES = "figures.safetensors"
LLC_TRACES = "llc_traces.safetensors"  # SGLD's loss at every step, per checkpoint and chain (--llc)


def analysis_supported(cfg: C.RunConfig) -> bool:
    """Whether `analyze_run` can analyse a run of this config (modular, or text with the LM analysis)."""
    if cfg.task.name == "modular":
        return True
    if cfg.task.name == "text":
        try:
            import grokscope.lm.analysis  # noqa: F401
        except ImportError:
            return False
        return True
    return False


def analyze_run(run_dir: str | Path, step: int | None = None, per_checkpoint_keys: bool = False,
                keys: list[int] | None = None, threads: int | None = None, key_rule: str = "wl",
                log: Callable[[str], None] | None = None, llc: lc.Settings | None = None) -> dict[str, Any]:
    """Analyse the run in `run_dir`; write summary.json, the "progress" table and figures.

    step: the checkpoint to reverse-engineer (default: the last); its key frequencies are used
    for every checkpoint unless per_checkpoint_keys, or unless `keys` gives them explicitly.
    key_rule: how key frequencies are found, "wl" (the paper's: W_L's DFT) or "neurons"
    (analysis/circuits.py's docstring).
    llc: also estimate the local learning coefficient of every checkpoint with these settings
    (analysis/llc.py): the "llc" table, analysis/llc_traces.safetensors and the summary's llc* keys.
    Returns the summary written to RUN/analysis/summary.json.
    """
    t_start = time.perf_counter()
    run = Run(run_dir).require()
    cfg = read_run_config(run)  # an unreadable config.yaml is a StoreError
    if cfg.task.name == "text":
        return _analyze_text_run(run, step, threads, llc, log or (lambda _msg: None))
    if cfg.task.name != "modular":
        raise C.ConfigError(f"`grokscope analyze` handles modular-arithmetic runs; {str(run.path)!r} is a "
                            f"{cfg.task.name!r} run, which has no Fourier analysis")
    threads = threads or cfg.train.threads
    if threads is not None:
        torch.set_num_threads(threads)
    say = log or (lambda _msg: None)
    steps = run.checkpoint_steps()
    if not steps:
        raise StoreError(f"{str(run.path)!r} has no checkpoints; train it first with `grokscope train`")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise StoreError(f"{str(run.path)!r} has no checkpoint at step {step}; it has {len(steps)} "
                         f"from {steps[0]} to {steps[-1]} (every {cfg.train.checkpoint_every})")
    info = run.read_info()
    per_epoch = int(info.get("steps_per_epoch") or 1)

    data = ci.modular_data(cfg)
    p = data.p
    if key_rule not in ci.KEY_RULES:
        raise C.ConfigError(f"--key-rule {key_rule}: choose one of {', '.join(ci.KEY_RULES)}")
    if keys is not None and not all(1 <= k <= p // 2 for k in keys):
        raise C.ConfigError(f"--keys {','.join(map(str, keys))}: frequencies of p={p} run from 1 to {p // 2}")
    model = build(cfg.model, p + 1, p, 3, cfg.seed)

    # 1. reverse-engineer the chosen checkpoint; its key frequencies serve every checkpoint
    t0 = time.perf_counter()
    run.load_into(model, step)
    final, figs = ci.reverse_engineer(model, data, ks=keys, key_rule=key_rule)
    ks = final["key_frequencies"]
    t_circuits = time.perf_counter() - t0
    nf = final["neuron_fve"]
    say(f"step {step}: key frequencies {ks}, neurons explained {'n/a' if nf is None else f'{nf:.1%}'}, "
        f"logit FVE {final['logit_fve']:.3f} ({t_circuits:.1f} s)")

    # 2. progress measures over every checkpoint
    t0 = time.perf_counter()
    ctx = pg.make_context(data, ks)
    rows = []
    for s in steps:
        run.load_into(model, s)
        if per_checkpoint_keys:
            c = pg.make_context(data, ci.find_key_frequencies(model, data, key_rule))
            row = pg.progress_row(model, c)
            row["key_frequencies"] = ",".join(str(k) for k in c.ks)
        else:
            row = pg.progress_row(model, ctx)
        rows.append({"step": s, "epoch": s / per_epoch, **row})
    t_progress = time.perf_counter() - t0
    say(f"progress measures over {len(steps)} checkpoints in {t_progress:.1f} s")

    # 2b. the local learning coefficient of every checkpoint (--llc), on the train set
    llc_rows, llc_traces, llc_n, t_llc = [], {}, 0, 0.0
    if llc is not None:
        llc_rows, llc_traces, llc_n, t_llc = _llc(run, steps, per_epoch, llc, threads, say)

    # 3. phases from the curves
    phases, rule, evidence = ph.locate_phases(rows)
    phases_tl, rule_tl, _ = ph.locate_phases(rows, rule="test_loss")
    at = next(r for r in rows if r["step"] == step)
    cleanup_end = _ablations_at_cleanup_end(run, model, data, ks, phases, per_epoch, step, steps, final)

    summary: dict[str, Any] = {
        "run": str(run.path),
        "step": step,
        "epoch": step / per_epoch,
        "p": p,
        "op": cfg.task.op,
        "key_frequencies": ks,
        "neuron_fve": final["neuron_fve"],
        "logit_fve": final["logit_fve"],
        "restricted_loss": at["restricted_loss"],
        "excluded_loss": at["excluded_loss"],
        "test_loss": final["test_loss"],
        "test_acc": final["test_acc"],
        "gini_W_E": final["gini_W_E"],
        "gini_W_L": final["gini_W_L"],
        "phases": phases,
        "phase_rule": rule,
        "phase_evidence": evidence,
        "phases_test_loss": phases_tl,
        "phase_rule_test_loss": rule_tl,
        "train_loss": final["train_loss"],
        "train_acc": final["train_acc"],
        "restricted_acc": at["restricted_acc"],
        "restricted_loss_test": at.get("restricted_loss_test"),
        "weight_norm": at["weight_norm"],
        "neurons_explained": final["neurons_explained"],
        "neuron_fve_mean": final["neuron_fve_mean"],
        "neuron_fve_weighted": final["neuron_fve_weighted"],
        "neuron_fve_all_freqs": final["neuron_fve_all_freqs"],
        "neuron_fve_all_freqs_mean": final["neuron_fve_all_freqs_mean"],
        "mlp_fve": final["mlp_fve"],
        "mlp_fve_std": final["mlp_fve_std"],
        "mlp_fve_components": final["mlp_fve_components"],
        "mlp_ablations": final["mlp_ablations"],
        "mlp_ablations_cleanup_end": cleanup_end,
        "skip_ablations": final["skip_ablations"],
        "key_rule": final["key_rule"],
        "key_rule_name": final["key_rule_name"],
        "key_frequencies_wl": final["key_frequencies_wl"],
        "key_frequencies_neurons": final["key_frequencies_neurons"],
        "wl_frequency_shares": final["wl_frequency_shares"],
        "gini_W_E_rows": final["gini_W_E_rows"],
        "embed_frequencies": final["embed_frequencies"],
        "gini_W_L_rows": final["gini_W_L_rows"],
        "gini_neurons": final["gini_neurons"],
        "key_frequencies_source": "given" if keys is not None else f"found on step {step}",
        "per_checkpoint_keys": per_checkpoint_keys,
        "frequency_shares": final["frequency_shares"],
        "wl_residual": final["wl_residual"],
        "logit_coefs": final["logit_coefs"],
        "logit_fit_loss": final["logit_fit_loss"],
        "logit_fit_acc": final["logit_fit_acc"],
        "ablations": final["ablations"],
        "attention_heads": final["attention_heads"],
        "clusters": final["clusters"],
        "gini_basis": final["gini_basis"],
        "tables": final["tables"],
        "n_checkpoints": len(steps),
        "timing_seconds": {"circuits": t_circuits, "progress": t_progress,
                           "total": time.perf_counter() - t_start},
    }

    if llc is not None:
        summary.update(lc.summary(llc_rows, step, llc, llc_n))
        summary["timing_seconds"]["llc"] = t_llc

    # 4. write: figures, then the table, then the summary (its presence = analysis complete)
    write_figures(run, figs)
    run.replace_table("progress", rows)
    if llc is not None:
        run.replace_table("llc", llc_rows)
        atomic_write(run.analysis_dir / LLC_TRACES, lambda tmp: save_file(llc_traces, tmp))
    run.write_summary(summary)
    return summary


def _ablations_at_cleanup_end(run: Run, model: torch.nn.Module, data: ci.ModularData, ks: list[int],
                              phases: dict, per_epoch: int, step: int, steps: list[int],
                              final: dict) -> dict[str, Any] | None:
    """Section 4.4's MLP ablations at the checkpoint that ends cleanup, with the same key frequencies.

    A run trained long past cleanup sits at its loss floor, where these loss ratios keep drifting
    (the mainline's polynomial replacement: 1.06x at the end of cleanup, 3.45x 4,700 epochs later;
    docs/notes/mainline-ablations.md), so the summary gives both. None without a cleanup phase.
    """
    cleanup = phases.get("cleanup")
    if not cleanup:
        return None
    end = round(cleanup[1] * per_epoch)
    if end not in steps:
        return None
    if end == step:
        rows = final["mlp_ablations"]
    else:
        run.load_into(model, end)
        rows = ci.reverse_engineer(model, data, ks=ks)[0]["mlp_ablations"]
    return {"step": end, "epoch": end / per_epoch, "rows": rows}


def _llc(run: Run, steps: list[int], per_epoch: int | None, s: lc.Settings, threads: int | None,
         say: Callable[[str], None]) -> tuple[list[dict], dict[str, torch.Tensor], int, float]:
    """The LLC of every checkpoint, over single-thread processes, one per core the analysis may use."""
    t0 = time.perf_counter()
    rows, traces, n = llc_run.over_checkpoints(run.path, steps, per_epoch, s, llc_run.default_workers(threads), say)
    t = time.perf_counter() - t0
    say(f"LLC over {len(steps)} checkpoints in {t:.1f} s")
    return rows, traces, n, t


def _analyze_text_run(run: Run, step: int | None, threads: int | None, llc: lc.Settings | None,
                      say: Callable[[str], None]) -> dict[str, Any]:
    """A copy-LM run: its summary (grokscope.lm.analysis), and with --llc the LLC of every checkpoint
    up to the summarised step. Computed first, then written: the table, the traces, the summary."""
    try:  # the copy-LM analysis lives with the LM code
        from grokscope.lm.analysis import analyze_lm_run
    except ImportError:
        raise C.ConfigError(f"{str(run.path)!r} is a language-model run; its analysis "
                            "(grokscope.lm.analysis) is not installed in this version") from None
    summary = analyze_lm_run(run.path, step=step, write=False)
    if llc is not None:
        steps = [st for st in run.checkpoint_steps() if st <= summary["step"]]
        if not steps:
            raise StoreError(f"{str(run.path)!r} has no checkpoint at or before step {summary['step']}; "
                             "the LLC needs one")
        rows, traces, n, t = _llc(run, steps, None, llc, threads, say)
        summary.update(lc.summary(rows, steps[-1], llc, n))
        summary["llc_step"] = steps[-1]
        summary.setdefault("timing_seconds", {})["llc"] = t
        run.replace_table("llc", rows)
        atomic_write(run.analysis_dir / LLC_TRACES, lambda tmp: save_file(traces, tmp))
    run.write_summary(summary)
    return summary


def write_figures(run: Run, figs: dict[str, torch.Tensor]) -> Path:
    """Save the figure arrays as safetensors, atomically (temp file, then rename)."""
    path = run.analysis_dir / FIGURES
    tensors = {k: v.detach().to(torch.float32 if v.is_floating_point() else torch.int64).contiguous()
               for k, v in figs.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp))
    return path
