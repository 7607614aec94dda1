"""Induction, prefix-matching, copying and previous-token scores against hand-built heads."""

from __future__ import annotations

import pytest
import torch

from grokscope.config import ModelConfig
from grokscope.lm.induction import (
    copying_scores,
    eigen_positivity,
    head_scores,
    icl_score,
    ov_small,
    prefix_matching_score,
    previous_token_score,
    repeated_tokens,
)
from grokscope.lm.llama import build_llama

torch.set_num_threads(1)


def induction_pattern(s: int) -> torch.Tensor:
    """A perfect induction head on two halves of s tokens: second-half position s+i-1 attends to i;
    elsewhere it attends to the first token."""
    L = 2 * s
    pat = torch.zeros(1, 1, L, L)
    pat[0, 0, :, 0] = 1.0
    for i in range(1, s):
        pat[0, 0, s + i - 1] = 0
        pat[0, 0, s + i - 1, i] = 1.0
    return pat


def uniform_pattern(L: int) -> torch.Tensor:
    causal = torch.ones(L, L).tril()
    return (causal / causal.sum(-1, keepdim=True))[None, None]


def test_hand_built_induction_head_scores_one():
    s, d = 30, 16
    pm = prefix_matching_score(induction_pattern(s), s)
    assert float(pm) == pytest.approx(1.0)
    # OV = identity on a one-hot vocabulary: the head writes the attended token's own logit.
    W_E, W_U = torch.eye(d), torch.eye(d)
    W_V, W_O = torch.eye(d)[None, :, :8], torch.eye(d)[None, :8, :]
    ep = eigen_positivity(ov_small(W_E, W_V, W_O, W_U))
    assert float(ep) == pytest.approx(1.0)
    assert float(pm * ep) == pytest.approx(1.0)
    assert float(eigen_positivity(ov_small(W_E, W_V, -W_O, W_U))) == pytest.approx(-1.0)


def test_uniform_head_scores_near_zero():
    s = 50
    pm = float(prefix_matching_score(uniform_pattern(2 * s), s))
    expected = sum(1.0 / (s + i) for i in range(1, s)) / (s - 1)  # query s+i-1 sees s+i keys
    assert pm == pytest.approx(expected) and pm < 0.02
    g = torch.Generator().manual_seed(0)
    W_E, W_U = torch.randn(200, 64, generator=g), torch.randn(64, 200, generator=g)
    W_V, W_O = torch.randn(8, 64, 16, generator=g), torch.randn(8, 16, 64, generator=g)
    ep = eigen_positivity(ov_small(W_E, W_V, W_O, W_U))
    assert float(ep.abs().mean()) < 0.3  # a random OV circuit neither copies nor anti-copies


def test_small_product_has_the_full_circuits_eigenvalues():
    g = torch.Generator().manual_seed(1)
    W_E, W_U = torch.randn(12, 6, generator=g).double(), torch.randn(6, 12, generator=g).double()
    W_V, W_O = torch.randn(1, 6, 3, generator=g).double(), torch.randn(1, 3, 6, generator=g).double()
    full = W_E @ W_V[0] @ W_O[0] @ W_U  # [vocab, vocab], rank 3
    big = torch.linalg.eigvals(full)
    big = big[big.abs() > 1e-8]
    small = torch.linalg.eigvals(ov_small(W_E, W_V, W_O, W_U)[0])
    key = lambda z: (round(float(z.real), 6), round(float(z.imag), 6))  # noqa: E731
    assert sorted(map(key, big)) == sorted(map(key, small))
    ep_full = float(big.sum().real / big.abs().sum())
    assert float(eigen_positivity(ov_small(W_E, W_V, W_O, W_U))) == pytest.approx(ep_full)


def test_previous_token_score():
    L = 20
    pat = torch.zeros(1, 2, L, L)
    pat[0, 0, 0, 0] = 1
    pat[0, 0, torch.arange(1, L), torch.arange(L - 1)] = 1.0  # head 0: always the previous token
    pat[0, 1] = uniform_pattern(L)[0, 0]
    sc = previous_token_score(pat, 10)
    assert float(sc[0]) == pytest.approx(1.0)
    assert float(sc[1]) == pytest.approx(sum(1 / (p + 1) for p in range(1, 10)) / 9)


def test_model_with_blind_attention_has_uniform_heads():
    """W_Q = 0 makes every head attend uniformly: the model path must give the analytic value."""
    cfg = ModelConfig(arch="llama", n_layers=2, d_model=32, n_heads=2, d_head=8, d_mlp=32)
    model = build_llama(cfg, d_vocab=60, n_ctx=64, seed=0)
    with torch.no_grad():
        for b in model.blocks:
            b.attn.W_Q.zero_()
    sc = head_scores(model, s=32, n_seq=2, seed=0)
    expected = sum(1.0 / (32 + i) for i in range(1, 32)) / 31
    torch.testing.assert_close(sc["prefix_matching"], torch.full((2, 2), expected), atol=1e-5, rtol=1e-4)
    assert float(sc["induction"].abs().max()) < 0.03
    assert sc["copying"].shape == (2, 2)


def _copying_llama(ln1: torch.Tensor, ln_final: torch.Tensor):
    """A 1-layer Llama over 16 tokens with one-hot embeddings: head 0 reads and writes dimensions
    0-3, head 1 dimensions 4-7, so head h's OV circuit is diag(ln1 * ln_final) on its four."""
    cfg = ModelConfig(arch="llama", n_layers=1, d_model=16, n_heads=2, d_head=4, d_mlp=16)
    model = build_llama(cfg, d_vocab=16, n_ctx=16, seed=0)
    eye = torch.eye(16)
    with torch.no_grad():
        model.embed.W_E.copy_(eye)
        model.W_U.copy_(eye)
        attn = model.blocks[0].attn
        attn.W_V.copy_(torch.stack([eye[:, 0:4], eye[:, 4:8]]))
        attn.W_O.copy_(torch.stack([eye[0:4], eye[4:8]]))
        model.blocks[0].ln1.w.copy_(ln1)
        model.ln_final.w.copy_(ln_final)
    return model


def test_model_copying_score_folds_in_both_norms():
    # Known answer: head h's eigenvalues are ln1_i * ln_final_i over its dimensions, so
    # EP = sum of those products / sum of their absolute values.
    ln1 = torch.arange(1, 17) / 4  # non-uniform, positive
    ln_final = torch.ones(16)
    ln_final[1], ln_final[5], ln_final[6] = -1.0, -2.0, -0.5  # some of each head's dimensions flip sign
    model = _copying_llama(ln1, ln_final)
    prod = (ln1 * ln_final).double()
    expected = torch.stack([prod[0:4].sum() / prod[0:4].abs().sum(), prod[4:8].sum() / prod[4:8].abs().sum()])
    ep = copying_scores(model)
    torch.testing.assert_close(ep[0].double(), expected, atol=1e-6, rtol=0)
    assert float(ep[0, 0]) != pytest.approx(1.0)  # the sign flips count: without ln_final it would be 1
    # The same from the full vocab x vocab circuit with the gains written out
    attn = model.blocks[0].attn
    for h in range(2):
        with torch.no_grad():
            full = (model.embed.W_E * ln1) @ attn.W_V[h] @ attn.W_O[h] @ (model.W_U * ln_final[:, None])
        assert float(ep[0, h]) == pytest.approx(float(eigen_positivity(full)), abs=1e-6)
    # A copying head scores 1, and flipping the final norm's sign makes it anti-copy
    assert copying_scores(_copying_llama(ln1, torch.ones(16)))[0].tolist() == pytest.approx([1.0, 1.0])
    assert copying_scores(_copying_llama(ln1, -torch.ones(16)))[0].tolist() == pytest.approx([-1.0, -1.0])


def test_repeated_tokens_layout():
    t = repeated_tokens(vocab=50, s=20, n=3, gen=torch.Generator().manual_seed(0))
    assert t.shape == (3, 40)
    assert torch.equal(t[:, :20], t[:, 20:])
    assert all(len(set(row[:20].tolist())) == 20 for row in t)  # distinct within a half


def test_icl_score_is_late_minus_early_loss():
    n = 512
    pos_loss = torch.linspace(4.0, 2.0, n, dtype=torch.float64)  # loss falls with context
    expected = float(pos_loss[500] - pos_loss[50])
    assert icl_score(pos_loss) == pytest.approx(expected, abs=1e-9)  # windows are symmetric on a line
    assert icl_score(torch.full((64,), 3.0)) == pytest.approx(0.0)


@pytest.mark.parametrize(("n", "late", "early"), [
    (64, [61, 62, 63], [5, 6, 7]),  # centres round(500/512 * 64) = 62 and round(6.25) = 6; +-1
    (100, [96, 97, 98, 99], [8, 9, 10, 11, 12]),  # centres 98 and 10, +-2, cut at the context's end
])
def test_icl_score_windows_scale_with_the_context(n, late, early):
    pos_loss = torch.arange(n, dtype=torch.float64) ** 2  # curved: the windows' means pin where they are
    expected = float(pos_loss[late].mean() - pos_loss[early].mean())
    assert icl_score(pos_loss) == pytest.approx(expected, abs=1e-9)


def test_repeat_gain_of_a_perfect_copier_and_of_a_blind_model():
    from grokscope.lm.induction import per_position_loss, repeat_gain, with_repeated_span

    w = torch.randint(0, 30, (6, 65), generator=torch.Generator().manual_seed(0))
    rep, ctl, where = with_repeated_span(w, 12)
    assert torch.equal(rep[:, where], ctl[:, where])  # the same late tokens in both
    span = where.stop - where.start + 1
    assert torch.equal(rep[:, 8:8 + span], rep[:, where.start - 1:where.stop])  # repeated from L/8
    assert not torch.equal(ctl[:, 8:8 + span], ctl[:, where.start - 1:where.stop])

    def copier_logits(x):  # predicts the token after the last earlier match of the current token pair
        out = torch.zeros(*x.shape, 30)
        for b in range(len(x)):
            t = x[b].tolist()
            for p in range(1, len(t)):
                for j in range(p - 1, 0, -1):
                    if t[j - 1:j + 1] == t[p - 1:p + 1]:
                        out[b, p, t[j + 1]] = 20.0
                        break
        return out

    losses = [per_position_loss(copier_logits(x[:, :-1]), x[:, 1:]) for x in (ctl, rep)]
    assert repeat_gain(losses[0], losses[1], where) > 2.0  # log(30) = 3.4 at best
    blind = [per_position_loss(torch.zeros(len(x), 64, 30), x[:, 1:]) for x in (ctl, rep)]
    assert repeat_gain(blind[0], blind[1], where) == pytest.approx(0.0)
