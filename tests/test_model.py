"""The transformer: TransformerLens names, shapes and hooks; the fast step equals a plain one."""

from __future__ import annotations

import copy

import pytest
import torch

from grokscope import config as C
from grokscope.models.loss import FLOAT32_TINY, cross_entropy64
from grokscope.models.reference import ReferenceTransformer, reference_loss
from grokscope.models.transformer import build
from grokscope.tasks import make_task

# TransformerLens's names and shapes for a 1-layer model (d_vocab 114, d_model 128, 4 heads of 32,
# d_mlp 512, n_ctx 3, d_vocab_out 113), as HookedTransformer.state_dict() lists them.
TL_SHAPES = {
    "embed.W_E": (114, 128), "pos_embed.W_pos": (3, 128),
    "blocks.0.attn.W_Q": (4, 128, 32), "blocks.0.attn.W_K": (4, 128, 32), "blocks.0.attn.W_V": (4, 128, 32),
    "blocks.0.attn.W_O": (4, 32, 128), "blocks.0.mlp.W_in": (128, 512), "blocks.0.mlp.b_in": (512,),
    "blocks.0.mlp.W_out": (512, 128), "blocks.0.mlp.b_out": (128,), "unembed.W_U": (128, 113),
}
TL_HOOKS = ["hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.0.attn.hook_q",
            "blocks.0.attn.hook_k", "blocks.0.attn.hook_v", "blocks.0.attn.hook_attn_scores",
            "blocks.0.attn.hook_pattern", "blocks.0.attn.hook_z", "blocks.0.hook_attn_out",
            "blocks.0.hook_resid_mid", "blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post",
            "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"]


@pytest.fixture(scope="module")
def mainline():
    cfg = C.resolve({})
    task = make_task(cfg)
    return cfg, task, build(cfg.model, task.d_vocab, task.d_vocab_out, task.n_ctx, seed=0)


def test_parameter_names_and_shapes_follow_transformer_lens(mainline):
    _, _, model = mainline
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == TL_SHAPES


def test_cache_has_transformer_lens_hooks_and_shapes(mainline):
    _, task, model = mainline
    logits, cache = model.run_with_cache(task.train_x[:7])
    assert list(cache) == TL_HOOKS
    assert logits.shape == (7, 3, 113)
    assert cache["blocks.0.attn.hook_pattern"].shape == (7, 4, 3, 3)  # batch head query key
    assert cache["post", 0].shape == (7, 3, 512) and cache["pattern", 0] is cache["blocks.0.attn.hook_pattern"]
    assert torch.allclose(cache["blocks.0.hook_resid_post"] @ model.unembed.W_U, logits)
    # causal: no attention to later positions
    assert cache["pattern", 0][:, :, 0, 1:].abs().max() == 0


def test_init_is_seeded_and_scaled(mainline):
    cfg, task, model = mainline
    again = build(cfg.model, task.d_vocab, task.d_vocab_out, task.n_ctx, seed=0)
    other = build(cfg.model, task.d_vocab, task.d_vocab_out, task.n_ctx, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True))
    assert not torch.equal(model.embed.W_E, other.embed.W_E)
    assert abs(model.blocks[0].mlp.W_in.std().item() - 128**-0.5) < 0.01
    assert abs(model.unembed.W_U.std().item() - 114**-0.5) < 0.01
    assert model.blocks[0].mlp.b_in.abs().max() == 0


@pytest.mark.parametrize("extra", [[], ["model.n_layers=2"], ["model.normalization=LN"], ["model.attn_only=true"],
                                   ["model.act_fn=gelu"]])
def test_forward_last_equals_full_forward(extra):
    cfg = C.resolve({}, ["task.p=31", *extra])
    task = make_task(cfg)
    model = build(cfg.model, task.d_vocab, task.d_vocab_out, task.n_ctx, seed=2)
    tokens = torch.randint(0, task.d_vocab, (300, 3), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(model.forward_last(tokens), model(tokens)[:, -1], atol=2e-5)


NAMES = {"embed.W_E": "W_E", "pos_embed.W_pos": "W_pos", "unembed.W_U": "W_U"}
NAMES |= {f"blocks.0.attn.{k}": k for k in ("W_Q", "W_K", "W_V", "W_O")}
NAMES |= {f"blocks.0.mlp.{k}": k for k in ("W_in", "b_in", "W_out", "b_out")}


def _grads(model, x, y, fast: bool) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    if fast:  # the training step's loss: tables by autograd, the per-example part by hand
        loss = model.loss_last(x, y)
        loss.backward()
        return loss.item(), {k: p.grad.double() for k, p in model.named_parameters()}
    loss = reference_loss(model(x)[:, -1], y)
    loss.backward()
    return loss.item(), {k: getattr(model, v).grad.double() for k, v in NAMES.items()}


@pytest.mark.parametrize("act_fn", ["relu", "gelu"])
def test_fast_step_matches_straightforward_model_loss_and_gradients(act_fn):
    """The tabulated step computes the plain model's loss and gradients: exactly in float64, and
    in float32 no less accurately than the plain float32 model (both against float64). The
    float32 check uses GELU: with ReLU one pre-activation within 1e-7 of zero flips its
    derivative under either summation order, which measures luck, not accuracy."""
    cfg = C.resolve({}, [f"model.act_fn={act_fn}"])
    task = make_task(cfg)
    model32 = build(cfg.model, task.d_vocab, task.d_vocab_out, task.n_ctx, seed=1)
    x, y = task.train_x, task.train_y[:, 0]
    ref64 = ReferenceTransformer(task.d_vocab, task.d_vocab_out, task.n_ctx, act_fn=act_fn).double()
    ref64.load_tl_state(model32.state_dict())
    loss_true, g_true = _grads(ref64, x, y, fast=False)
    loss_64, g_64 = _grads(copy.deepcopy(model32).double(), x, y, fast=True)
    assert abs(loss_64 - loss_true) < 1e-12
    for name, truth in g_true.items():
        assert (g_64[name] - truth).abs().max() <= 1e-10 * truth.abs().max(), name
    if act_fn == "relu":
        return
    ref32 = ReferenceTransformer(task.d_vocab, task.d_vocab_out, task.n_ctx, act_fn=act_fn)
    ref32.load_tl_state(model32.state_dict())
    loss_ref, g_ref = _grads(ref32, x, y, fast=False)
    loss_fast, g_fast = _grads(copy.deepcopy(model32), x, y, fast=True)
    assert abs(loss_fast - loss_true) < 1e-6
    for name, truth in g_true.items():
        scale = truth.abs().max()
        err_fast = (g_fast[name] - truth).abs().max()
        err_ref = (g_ref[name] - truth).abs().max()
        assert err_fast <= max(4 * err_ref, 1e-6 * scale), (name, err_fast, err_ref)


def test_float64_loss_flushes_subnormal_gradients():
    # A confident, correct prediction: wrong-class probabilities underflow float32's normal range.
    logits = torch.zeros(2, 5)
    logits[:, 0] = 87.5  # p(wrong) / 2 examples = 5e-39: subnormal in float32
    logits[1, 0] = 20.0  # a normal, small gradient that must survive
    logits.requires_grad_(True)
    loss = cross_entropy64(logits, torch.tensor([0, 0]))
    loss.backward()
    g = logits.grad
    assert loss.dtype == torch.float64
    assert ((g == 0) | (g.abs() >= FLOAT32_TINY)).all()
    assert (g[0] == 0).all() and (g[1, 1:] > 0).all()
    # and it equals float64 autograd where the values are normal
    x = torch.randn(50, 7, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 7, (50,))
    torch.nn.functional.cross_entropy(x, y).backward()
    x32 = x.detach().float().requires_grad_(True)
    cross_entropy64(x32, y).backward()
    assert torch.allclose(x32.grad.double(), x.grad, atol=1e-7)
