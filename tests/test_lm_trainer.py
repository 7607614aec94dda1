"""The LM trainer end to end on a tiny corpus: tables, exact resume, DDP equivalence, analysis."""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from grokscope import config as C
from grokscope.lm.analysis import analyze_lm_run
from grokscope.lm.trainer import LMTrainer
from grokscope.store import Run

torch.set_num_threads(1)


def write_corpus(folder: Path) -> Path:
    rng = random.Random(0)
    words = "the cat sat on a mat and saw an old dog run far away while birds sang".split()
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("a", "b", "c"):
        (folder / f"{name}.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(12))
                                                      for _ in range(150)) + "\n")
    return folder


def tiny_cfg(tmp: Path, **over) -> C.RunConfig:
    raw = {
        "seed": 0,
        "task": {"name": "text", "corpus": str(write_corpus(tmp / "corpus")), "tokenizer": "char", "context": 64,
                 "cache_dir": str(tmp / "cache"), "copy_samples": 6, "eval_windows": 4, "induction_len": 16,
                 "repeat_frac": 0.5},
        "model": {"arch": "llama", "n_layers": 1, "d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32,
                  "attn_dropout": 0.1},
        "optim": {"lr": 3e-3, "weight_decay": 0.1, "warmup_steps": 2, "grad_clip": 1.0},
        "train": {"steps": 8, "batch_size": 4, "grad_accum": 2, "eval_every": 2, "eval_schedule": "log",
                  "checkpoint_every": 3, "threads": 1},
    }
    return C.resolve(raw, [f"{k}={v}" for k, v in over.items()])


def test_tiny_run_end_to_end_and_analysis(tmp_path):
    cfg = tiny_cfg(tmp_path)
    run = Run(tmp_path / "run")
    run.write_config(C.to_yaml(cfg))
    info = LMTrainer(cfg, run, progress=False).fit()
    assert info["status"] == "completed" and info["last_step"] == 8
    assert info["tokens_per_step"] == 4 * 2 * 64 and info["d_vocab"] > 16
    m = run.metrics()
    assert m["step"].iloc[-1] == 8 and m["tokens"].iloc[-1] == 8 * 512
    assert m["val_loss"].iloc[-1] < m["val_loss"].iloc[0]  # it learns something
    for col in ("train_loss", "icl_score", "repeat_gain", "copy_acc", "copy_token_acc", "copy_loss", "rcopy_acc", "induction_l0",
                "prefix_matching_l0", "previous_token_l0", "pcopy_acc", "pcopy_token_acc", "pcopy_loss"):
        assert col in m
    assert info["paper_copy_lines"] == (64 - 17) // 18 and info["paper_copy_query_lines"][-1] == info["paper_copy_lines"]
    part = info["corpus"]["parts"][0]
    assert len(part["sha256"]) == 64 and part["train_share"] == 1.0 and info["corpus"]["python"] == info["versions"]["python"]
    heads = run.metrics("heads")
    assert set(heads.columns) >= {"step", "layer", "head", "induction", "prefix_matching", "copying", "previous_token"}
    assert len(heads) == 2 * len(m)  # one row per head per evaluation
    assert run.checkpoint_steps()[-1] == 8
    s = analyze_lm_run(run.path)
    last = heads[heads["step"] == 8]
    assert s["induction_score"] == [pytest.approx(last["induction"].max())]
    assert s["copy_accuracy"] == m["copy_acc"].iloc[-1] and s["copy_token_accuracy"] == m["copy_token_acc"].iloc[-1]
    assert s["icl_score"] == pytest.approx(m["icl_score"].iloc[-1])
    assert s["paper_copy_accuracy"] == m["pcopy_acc"].iloc[-1] and s["claim1"]["copy_column"] == "pcopy_acc"
    assert len(s["claim3"]["thresholds"]["0.3"]["formed"]) == 1


def test_resume_replays_the_uninterrupted_run(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path)
    a = Run(tmp_path / "a")
    a.write_config(C.to_yaml(cfg))
    LMTrainer(cfg, a, progress=False).fit()

    b = Run(tmp_path / "b")
    b.write_config(C.to_yaml(cfg))
    trainer = LMTrainer(cfg, b, progress=False)
    real = trainer.train_step

    def dying(step: int):
        if step == 7:
            raise KeyboardInterrupt
        return real(step)

    monkeypatch.setattr(trainer, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert b.checkpoint_steps()[-1] == 6 and b.read_info()["status"] == "interrupted"
    LMTrainer(cfg, b, progress=False).fit(resume=True)
    _, ta = a.load_checkpoint()
    _, tb = b.load_checkpoint()
    for k in Run.params_only(ta):
        assert torch.equal(ta[k], tb[k]), k
    ma, mb = a.metrics(), b.metrics()
    assert ma.equals(mb)
    assert a.metrics("heads").equals(b.metrics("heads"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg_json: str, out: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from grokscope.lm import ddp

    cfg = C.RunConfig.model_validate(json.loads(cfg_json))
    run = Run(out)
    if rank == 0:
        run.write_config(C.to_yaml(cfg))
    try:
        LMTrainer(cfg, run, progress=False).fit()
    finally:
        ddp.shutdown()


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path):
    # No dropout: masks are drawn per rank, so only the dropout-free runs are comparable exactly.
    cfg = tiny_cfg(tmp_path, **{"model.attn_dropout": 0.0, "train.steps": 4})
    single = Run(tmp_path / "single")
    single.write_config(C.to_yaml(cfg))
    LMTrainer(cfg, single, progress=False).fit()
    LMTrainer(cfg, single, progress=False)  # the cache is filled; the workers only read it
    mp.spawn(_ddp_worker, args=(2, _free_port(), json.dumps(cfg.model_dump(mode="json")), str(tmp_path / "ddp")),
             nprocs=2, join=True)
    ddp_run = Run(tmp_path / "ddp")
    assert ddp_run.read_info()["world_size"] == 2
    ms, md = single.metrics(), ddp_run.metrics()
    torch.testing.assert_close(torch.tensor(md["batch_loss"].iloc[1:].to_numpy()),
                               torch.tensor(ms["batch_loss"].iloc[1:].to_numpy()), atol=1e-5, rtol=1e-5)
    _, ts = single.load_checkpoint()
    _, td = ddp_run.load_checkpoint()
    for k in Run.params_only(ts):
        torch.testing.assert_close(td[k], ts[k], atol=1e-5, rtol=1e-4)


def test_bad_input_is_a_one_line_error_before_anything_is_written(tmp_path):
    from grokscope import pipeline

    cfg = tiny_cfg(tmp_path, **{"task.context": 24})
    with pytest.raises(C.ConfigError, match="task.context=24"):
        pipeline.train_run(cfg, tmp_path / "short", progress=False)
    cfg = tiny_cfg(tmp_path, **{"model.d_head": 7})
    with pytest.raises(C.ConfigError, match="d_head"):
        pipeline.train_run(cfg, tmp_path / "odd", progress=False)
    assert not (tmp_path / "short").exists() and not (tmp_path / "odd").exists()


def test_random_spans_with_extra_symbols(tmp_path):
    cfg = tiny_cfg(tmp_path, **{"task.repeat_frac": 1.0, "task.repeat_random": 1.0, "task.repeat_symbols": 50,
                                "train.steps": 2})
    run = Run(tmp_path / "run")
    run.write_config(C.to_yaml(cfg))
    trainer = LMTrainer(cfg, run, progress=False)
    tok_vocab = trainer.data.vocab_size
    assert trainer.model.d_vocab == tok_vocab + 50  # the extra ids are in the model's vocabulary
    x = trainer.windows(0)
    assert int(x.max()) < tok_vocab + 50 and bool((x >= tok_vocab).any(dim=1).all())  # every window has extra ids
    assert bool((trainer.train_eval < tok_vocab).all()) and bool((trainer.copy_set.tokens < tok_vocab).all())
    info = trainer.fit()
    assert info["d_vocab"] == tok_vocab + 50 and info["tokenizer_vocab"] == tok_vocab
    # the probes draw only the tokenizer's ids: the same scores as on a model cut down to them
    from grokscope.lm.induction import head_scores

    model = trainer.model
    full = head_scores(model, 16, 4, 3, vocab=tok_vocab)
    assert not torch.allclose(full["copying"], head_scores(model, 16, 4, 3)["copying"])  # the extra rows matter
    small = type(model)(cfg.model, tok_vocab, cfg.task.context)
    sd = {k: (v[:tok_vocab] if k == "embed.W_E" else v[:, :tok_vocab] if k == "unembed.W_U" else v)
          for k, v in model.state_dict().items()}
    small.load_state_dict(sd)
    cut = head_scores(small, 16, 4, 3)
    for k in full:
        torch.testing.assert_close(full[k], cut[k], atol=1e-5, rtol=1e-4)
