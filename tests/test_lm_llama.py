"""The Llama-style decoder: RMSNorm and RoPE against their formulas, the two attention paths, names."""

from __future__ import annotations

import math

import pytest
import torch

from grokscope.config import ModelConfig
from grokscope.lm.llama import apply_rope, build_llama, rope_tables
from grokscope.models.transformer import RMSNorm

torch.set_num_threads(1)


def small_cfg(**kw) -> ModelConfig:
    base = dict(arch="llama", n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=48)
    return ModelConfig(**{**base, **kw})


def test_rmsnorm_matches_formula():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.w.copy_(torch.randn(16))
    x = torch.randn(3, 5, 16)
    xd = x.double()
    ref = xd / torch.sqrt((xd ** 2).mean(-1, keepdim=True) + 1e-5) * norm.w.double()
    torch.testing.assert_close(norm(x).double(), ref, atol=1e-6, rtol=1e-5)


def test_rope_matches_complex_rotation():
    """Pair (x_i, x_{i+d/2}) as the complex number x_i + j x_{i+d/2}, times exp(j pos base^(-2i/d))."""
    torch.manual_seed(0)
    n_pos, d, base = 7, 8, 100.0
    x = torch.randn(2, n_pos, 3, d)
    cos, sin = rope_tables(n_pos, d, base)
    out = apply_rope(x, cos, sin).double()
    for p in range(n_pos):
        for i in range(d // 2):
            theta = p * base ** (-2 * i / d)
            z = torch.complex(x[:, p, :, i].double(), x[:, p, :, i + d // 2].double()) * complex(math.cos(theta), math.sin(theta))
            torch.testing.assert_close(out[:, p, :, i], z.real, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out[:, p, :, i + d // 2], z.imag, atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_on_relative_position_only():
    torch.manual_seed(1)
    d = 16
    q, k = torch.randn(1, 1, 1, d), torch.randn(1, 1, 1, d)
    cos, sin = rope_tables(40, d, 10000.0)

    def score(m: int, n: int) -> float:
        qm = apply_rope(q, cos[m:m + 1], sin[m:m + 1])
        kn = apply_rope(k, cos[n:n + 1], sin[n:n + 1])
        return float((qm * kn).sum())

    assert score(10, 3) == pytest.approx(score(30, 23), abs=1e-4)
    assert score(5, 5) == pytest.approx(float((q * k).sum()), abs=1e-4)


def test_fused_and_cached_paths_agree_and_record_patterns():
    model = build_llama(small_cfg(), d_vocab=50, n_ctx=24, seed=0).eval()
    tokens = torch.randint(0, 50, (3, 24), generator=torch.Generator().manual_seed(0))
    fast = model(tokens)
    slow, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)
    pattern = cache["pattern", 1]
    assert pattern.shape == (3, 4, 24, 24)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(3, 4, 24))
    assert float(pattern.detach().triu(1).abs().max()) == 0.0  # causal
    for name in ("blocks.0.hook_resid_pre", "blocks.1.mlp.hook_post", "blocks.0.attn.hook_z", "ln_final.hook_normalized"):
        assert name in cache


def test_causal_future_tokens_do_not_change_the_past():
    model = build_llama(small_cfg(), d_vocab=50, n_ctx=16, seed=0).eval()
    a = torch.randint(0, 50, (1, 16), generator=torch.Generator().manual_seed(0))
    b = a.clone()
    b[0, 10:] = (b[0, 10:] + 1) % 50
    torch.testing.assert_close(model(a)[:, :10], model(b)[:, :10])


def test_transformerlens_names_and_tied_embeddings():
    untied = build_llama(small_cfg(), d_vocab=50, n_ctx=16, seed=0)
    sd = untied.state_dict()
    assert sd["embed.W_E"].shape == (50, 32)
    assert sd["blocks.1.attn.W_Q"].shape == (4, 32, 8)
    assert sd["blocks.1.attn.W_O"].shape == (4, 8, 32)
    assert sd["blocks.0.mlp.W_gate"].shape == (32, 48) and sd["blocks.0.mlp.W_out"].shape == (48, 32)
    assert sd["blocks.0.ln1.w"].shape == (32,) and "ln_final.w" in sd and sd["unembed.W_U"].shape == (32, 50)
    assert not any(k.startswith("rope") for k in sd)  # tables are rebuilt, not stored
    tied = build_llama(small_cfg(tie_embeddings=True), d_vocab=50, n_ctx=16, seed=0)
    assert "unembed.W_U" not in tied.state_dict()
    torch.testing.assert_close(tied.W_U, tied.embed.W_E.T)


def test_dropout_only_in_training():
    model = build_llama(small_cfg(attn_dropout=0.5, resid_dropout=0.5), d_vocab=50, n_ctx=16, seed=0)
    tokens = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    model.eval()
    torch.testing.assert_close(model(tokens), model(tokens))
    model.train()
    torch.manual_seed(0)
    a = model(tokens)
    torch.manual_seed(0)
    b = model(tokens)
    c = model(tokens)
    torch.testing.assert_close(a, b)  # masks come from the seeded global generator
    assert not torch.allclose(a, c)


def test_backward_is_bit_identical_with_two_threads():
    # W_E[tokens] accumulated repeated tokens' embedding gradients in a thread-dependent order
    # (runs differed by ~1e-8); F.embedding's CPU backward sums in a fixed order.
    def grads() -> dict[str, torch.Tensor]:
        model = build_llama(small_cfg(tie_embeddings=True), d_vocab=20, n_ctx=256, seed=0)
        tokens = torch.randint(0, 20, (16, 257), generator=torch.Generator().manual_seed(1))
        logits = model(tokens[:, :-1])
        torch.nn.functional.cross_entropy(logits.reshape(-1, 20), tokens[:, 1:].reshape(-1)).backward()
        return {k: p.grad.clone() for k, p in model.named_parameters()}

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = [grads() for _ in range(3)]
    finally:
        torch.set_num_threads(before)
    for other in runs[1:]:
        for k, g in runs[0].items():
            assert torch.equal(g, other[k]), k
