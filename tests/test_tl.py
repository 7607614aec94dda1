"""TransformerLens interop: TransformerLens's own HookedTransformer, given a grokscope model's
parameters, must compute the same logits and the same activation at every hook both record."""

from __future__ import annotations

import sys

import pytest
import torch

from grokscope import config as C
from grokscope.lm.llama import build_llama, rope_tables
from grokscope.models.transformer import build
from grokscope.store import Run, StoreError
from grokscope.tasks import make_task
from tests.conftest import TINY, need_extra, train_tiny


@pytest.fixture(autouse=True)
def _tl():
    need_extra("transformer_lens", "tl")


def same_function(ours, tokens: torch.Tensor, tol: float) -> None:
    """Logits and every hook of grokscope's cache match the HookedTransformer's."""
    from grokscope.models.tl import to_hooked

    hooked = to_hooked(ours)
    logits, cache = ours.run_with_cache(tokens)
    h_logits, h_cache = hooked.run_with_cache(tokens)
    assert torch.allclose(logits, h_logits, atol=tol, rtol=0), (logits - h_logits).abs().max()
    missing = [k for k in cache if k not in h_cache]
    assert not missing, missing
    for name, act in cache.items():
        other = h_cache[name]
        if name.endswith("hook_attn_scores"):  # masked entries are -inf in both
            finite = torch.isfinite(act)
            assert torch.equal(finite, torch.isfinite(other)), name
            act, other = act[finite], other[finite]
        assert torch.allclose(act, other, atol=tol, rtol=0), (name, (act - other).abs().max())


@pytest.mark.parametrize("overrides", [
    [],  # the mainline: 1 layer, ReLU, no norm
    ["model.normalization=LN", "model.n_layers=2"],
    ["model.normalization=RMS", "model.act_fn=gelu"],
    ["model.attn_only=true", "model.n_layers=2"],
], ids=["mainline", "ln-2layer", "rms-gelu", "attn-only"])
def test_transformer_family_matches_hooked_transformer(overrides):
    cfg = C.resolve({}, ["model.init_std=0.3", *overrides])  # large weights: no term is negligible
    task = make_task(cfg)
    ours = build(cfg.model, task.d_vocab, task.d_vocab_out, task.n_ctx, seed=1).double()
    with torch.no_grad():  # MLP biases and norm parameters away from their initial 0 and 1
        for name, prm in ours.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("b_in", "b_out", "b"):
                prm.normal_(0, 0.5)
            elif leaf == "w":
                prm.uniform_(0.5, 1.5)
    same_function(ours, task.train_x[:64], tol=1e-10)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_llama_matches_hooked_transformer(tied):
    mc = C.ModelConfig(arch="llama", n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64,
                       tie_embeddings=tied, init_std=0.3, rope_base=100.0)
    ours = build_llama(mc, d_vocab=40, n_ctx=24, seed=0).double()
    # the rotary tables are built in float32; rebuilt in float64, the comparison can be tight
    ours.rope_cos, ours.rope_sin = rope_tables(24, 8, 100.0, torch.float64)
    with torch.no_grad():  # gains away from 1, so a norm's gain that is dropped shows
        for name, prm in ours.named_parameters():
            if name.endswith(".w"):
                prm.uniform_(0.5, 1.5)
    tokens = torch.randint(0, 40, (3, 24), generator=torch.Generator().manual_seed(0))
    same_function(ours, tokens, tol=1e-10)


def test_float32_model_stays_float32():
    from grokscope.models.tl import to_hooked

    cfg = C.resolve({}, [*TINY, "train.epochs=10"])
    task = make_task(cfg)
    hooked = to_hooked(build(cfg.model, task.d_vocab, task.d_vocab_out, task.n_ctx, seed=0))
    assert hooked.cfg.dtype == torch.float32 and hooked.W_E.dtype == torch.float32
    assert hooked.cfg.d_vocab == task.d_vocab and hooked.cfg.d_vocab_out == task.d_vocab_out


def test_load_hooked_reads_the_chosen_checkpoint(tmp_path):
    from grokscope.models.tl import load_hooked

    run_dir = train_tiny(tmp_path / "run", [*TINY, "train.epochs=100"])
    cfg = C.resolve({}, [*TINY, "train.epochs=100"])
    task = make_task(cfg)
    x = task.test_x[:32]
    for step in (0, 100):
        ours = build(cfg.model, task.d_vocab, task.d_vocab_out, task.n_ctx, seed=5)
        Run(run_dir).load_into(ours, step)
        assert torch.allclose(load_hooked(run_dir, step)(x), ours(x), atol=1e-5)
    assert torch.equal(load_hooked(run_dir).W_E, load_hooked(run_dir, 100).W_E)  # latest by default
    assert not torch.equal(load_hooked(run_dir, 0).W_E, load_hooked(run_dir, 100).W_E)


def test_load_hooked_errors_name_the_problem(tmp_path, monkeypatch):
    from grokscope.models import tl

    with pytest.raises(StoreError, match="does not exist"):
        tl.load_hooked(tmp_path / "nothing")
    monkeypatch.setitem(sys.modules, "transformer_lens", None)  # as if not installed
    with pytest.raises(ImportError, match=r"grokscope\[tl\]"):
        tl.load_hooked(tmp_path / "nothing")


def test_load_hooked_opens_a_copy_lm_run(tmp_path):
    from grokscope.lm.trainer import LMTrainer
    from grokscope.models.loading import model_from_run
    from grokscope.models.tl import load_hooked
    from tests.test_lm_trainer import tiny_cfg

    cfg = tiny_cfg(tmp_path, **{"model.tie_embeddings": "true"})
    run = Run(tmp_path / "run")
    run.write_config(C.to_yaml(cfg))
    trainer = LMTrainer(cfg, run, progress=False)
    trainer.fit()
    ours, _, step = model_from_run(run.path)
    assert step == 8 and ours.unembed is None
    hooked = load_hooked(run.path)
    tokens = torch.randint(0, ours.d_vocab, (2, cfg.task.context), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(hooked(tokens), ours(tokens), atol=1e-5)
    assert torch.equal(trainer.model.embed.W_E.detach(), ours.embed.W_E)  # the trained weights, read back
