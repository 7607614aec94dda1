"""The tabulated last-position step (models/tabulated.py, models/kernels.py) against known answers.

tests/test_model.py checks loss and gradients against the plain model in float64 (1e-10) for
ReLU (the numba kernels) and GELU (torch's sparse products); here: ReLU in float32, dropout,
thread-count independence, a query token that varies, head counts other than the mainline's
four (the kernels' general paths), explicit layouts (held by the trainer, refused for other tokens),
the evaluation path (loss and first-maximum accuracy, NaN included), and the float32 loss kernel
against torch in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch

from grokscope import config as C
from grokscope.models import kernels, tabulated
from grokscope.models.loss import cross_entropy64
from grokscope.models.reference import ReferenceTransformer, reference_loss
from grokscope.models.transformer import build
from grokscope.tasks import make_task


def _model(seed: int, *extra: str):
    cfg = C.resolve({}, ["task.p=31", "train.epochs=10", *extra])
    task = make_task(cfg)
    return task, build(cfg.model, task.d_vocab, task.d_vocab_out, task.n_ctx, seed=seed, mlp_dropout=cfg.optim.dropout)


def _grads(model, loss_fn) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model)
    loss.backward()
    return loss.item(), {k: p.grad.clone() for k, p in model.named_parameters()}


def test_relu_kernels_in_float32_are_as_accurate_as_a_plain_float32_model():
    # Seed chosen so that no pre-activation lies within 4e-6 of zero, 100x the float32 rounding
    # of one (~3e-8 here): no ReLU derivative can flip, so this measures accuracy, not luck.
    task, model = _model(7)
    x, y = task.train_x, task.train_y[:, 0]
    _, cache = model.run_with_cache(x)
    assert cache["pre", 0][:, -1].abs().min() > 4e-6
    ref64 = ReferenceTransformer(task.d_vocab, task.d_vocab_out, task.n_ctx).double()
    ref64.load_tl_state(model.state_dict())
    ref32 = ReferenceTransformer(task.d_vocab, task.d_vocab_out, task.n_ctx)
    ref32.load_tl_state(model.state_dict())
    names = {"embed.W_E": "W_E", "blocks.0.mlp.W_in": "W_in", "blocks.0.attn.W_Q": "W_Q", "unembed.W_U": "W_U",
             "blocks.0.mlp.b_in": "b_in"}
    truth_loss, truth = _grads(ref64, lambda m: reference_loss(m(x)[:, -1], y))
    _, plain = _grads(ref32, lambda m: reference_loss(m(x)[:, -1], y))
    loss, fast = _grads(model, lambda m: m.loss_last(x, y))
    assert abs(loss - truth_loss) < 1e-6
    for name, ref_name in names.items():
        t = truth[ref_name]
        err_fast = (fast[name].double() - t).abs().max()
        err_plain = (plain[ref_name].double() - t).abs().max()
        assert err_fast <= max(4 * err_plain, 1e-6 * t.abs().max()), (name, err_fast, err_plain)


def test_kernels_give_the_same_bits_on_one_and_two_threads(monkeypatch):
    monkeypatch.setattr(tabulated, "BLOCK", 40)  # 8 blocks, the last one short
    task, model = _model(0)
    x, y = task.train_x, task.train_y[:, 0]
    assert 7 * 40 < len(x) < 8 * 40
    out = []
    try:
        for threads in (1, 2):
            kernels.set_threads(threads)
            out.append(_grads(model, lambda m: m.loss_last(x, y)))
    finally:
        kernels.set_threads(torch.get_num_threads())
    assert out[0][0] == out[1][0]
    assert all(torch.equal(out[0][1][k], out[1][1][k]) for k in out[0][1])


def test_dropout_kernels_match_the_differentiable_path_with_the_same_mask():
    task, model = _model(1, "optim.dropout=0.3")
    model = copy.deepcopy(model).double()
    x, y = task.train_x, task.train_y[:, 0]
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    loss_k, g_k = _grads(model, lambda m: m.loss_last(x, y, gen()))
    loss_a, g_a = _grads(model, lambda m: cross_entropy64(m.forward_last(x, gen()), y))  # autograd: the plain forward
    assert abs(loss_k - loss_a) < 1e-12
    for k in g_k:
        assert (g_k[k] - g_a[k]).abs().max() <= 1e-10 * g_a[k].abs().max(), k
    # and the mask did something: without dropout the loss differs
    assert abs(model.loss_last(x, y).item() - loss_k) > 1e-3


def _assert_fast_equals_plain_in_float64(model, x, y) -> None:
    model = copy.deepcopy(model).double()
    loss_k, g_k = _grads(model, lambda m: m.loss_last(x, y))
    loss_p, g_p = _grads(model, lambda m: cross_entropy64(m(x)[:, -1], y))
    assert abs(loss_k - loss_p) < 1e-12
    for k in g_k:
        assert (g_k[k] - g_p[k]).abs().max() <= 1e-10 * g_p[k].abs().max(), k


@pytest.mark.parametrize("n_heads", [4, 3])
def test_a_query_token_that_varies_is_tabulated_per_token(n_heads):
    # Random tokens at every position: the last token is no longer always '=', so the shared
    # rows are per query token (u > 1) and their sums' chunks cut where it changes. Loss and
    # gradients must still equal the plain model's, on the four-head paths and the general ones.
    task, model = _model(2, f"model.n_heads={n_heads}", "model.d_head=8")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, task.d_vocab, (400, 3), generator=g)
    y = torch.randint(0, task.d_vocab_out, (400,), generator=g)
    _assert_fast_equals_plain_in_float64(model, x, y)


@pytest.mark.parametrize("n_heads", [3, 8])
def test_head_counts_other_than_four_take_the_general_kernel_paths(n_heads):
    # The kernels have a one-pass path for the mainline's four heads; three heads take the
    # remainder loops, eight the four-at-a-time loop twice. Both must equal the plain model.
    task, model = _model(3, f"model.n_heads={n_heads}", "model.d_head=8")
    _assert_fast_equals_plain_in_float64(model, task.train_x, task.train_y[:, 0])


def test_a_layout_passed_in_gives_the_same_bits_and_one_of_other_tokens_is_refused():
    task, model = _model(0)
    x, y = task.train_x, task.train_y[:, 0]
    layout = model.layout(x)
    want_loss, want = _grads(model, lambda m: m.loss_last(x, y))  # built for the call
    loss, got = _grads(model, lambda m: m.loss_last(x, y, layout=layout))
    assert loss == want_loss and all(torch.equal(got[k], want[k]) for k in want)
    with torch.no_grad():
        assert torch.equal(model.forward_last(x, layout=layout), model.forward_last(x))
    assert model.loss_and_acc_last([(x, y)], [layout]) == model.loss_and_acc_last([(x, y)])
    with pytest.raises(ValueError, match="belongs to other tokens"):
        model.loss_last(task.test_x, task.test_y[:, 0], layout=layout)


def test_the_trainer_builds_each_datasets_layout_once(monkeypatch):
    # The train and test sets' layouts are built when the trainer sets up its data, one per
    # micro-batch for the step; steps and evaluations then reuse them.
    from grokscope.store import Run
    from grokscope.train.trainer import Trainer

    built = []
    make = tabulated.make_layout
    monkeypatch.setattr(tabulated, "make_layout", lambda x, *a: built.append(len(x)) or make(x, *a))
    for accum, want in ((1, 2), (2, 4)):
        built.clear()
        tr = Trainer(C.resolve({}, ["task.p=23", "train.epochs=3", f"train.grad_accum={accum}"]), Run("/nonexistent"),
                     progress=False)
        n_train, n_test = len(tr.task.train_x), len(tr.task.test_x)
        for s in range(3):
            tr.train_step(s)
            tr.metrics_row(s, 0.0)
        assert len(built) == want and sorted(built[:2]) == sorted([n_train, n_test]), built
        assert sum(built[2:]) == (n_train if accum > 1 else 0)


def test_gradient_accumulation_over_shares_of_the_batch_matches_the_whole_batch():
    # The ReLU step computes its gradients with the loss; backward only scales them by the
    # share each micro-batch contributes (grad_out != 1).
    task, model = _model(3)
    model = copy.deepcopy(model).double()
    x, y = task.train_x, task.train_y[:, 0]
    _, whole = _grads(model, lambda m: m.loss_last(x, y))
    model.zero_grad(set_to_none=True)
    for xs, ys in zip(x.chunk(3), y.chunk(3), strict=True):
        (model.loss_last(xs, ys) * (len(xs) / len(x))).backward()
    for k, p in model.named_parameters():
        assert (p.grad - whole[k]).abs().max() <= 1e-10 * whole[k].abs().max(), k


def test_evaluation_loss_and_accuracy_match_the_plain_model_in_float64(monkeypatch):
    # The evaluation path (one table build, the kernels' cross-entropy) against the plain model's
    # logits through loss_and_acc, for ReLU (the kernels, in 8 blocks, the last one short) and
    # GELU (torch's path), with exact ties planted: the accuracy counts the first maximum, as
    # torch.argmax does.
    from grokscope.models.loss import loss_and_acc

    monkeypatch.setattr(tabulated, "BLOCK", 40)
    for act in ("relu", "gelu"):
        task, model = _model(5, f"model.act_fn={act}")
        model = copy.deepcopy(model).double()
        x, y = task.train_x, task.train_y[:, 0]
        _, cache = model.run_with_cache(x)
        with torch.no_grad():  # classes 0 and 1 tie, along the mean final residual: mostly the maximum
            model.unembed.W_U[:, 0] = model.unembed.W_U[:, 1] = 10 * cache["resid_post", 0][:, -1].mean(0)
        logits = model(x)[:, -1]
        assert (logits[:80].argmax(-1) == 0).sum() >= 60
        y = y.clone()
        y[:40] = 1  # a tie the label loses (class 0 comes first)...
        y[40:80] = 0  # ...and one it wins
        plain = loss_and_acc(logits, y)
        ((loss, acc),) = model.loss_and_acc_last([(x, y)])
        assert abs(loss - plain[0]) < 1e-10 * plain[0], (act, loss, plain)
        assert acc == plain[1], (act, acc, plain)
        assert 0.0 < acc < 1.0


def test_a_nan_logit_gives_a_nan_loss_as_torch_does():
    # The loss kernels are compiled without fastmath's no-NaN assumption: a diverged run must log
    # NaN, not a finite-looking loss.
    from grokscope.models.loss import loss_and_acc

    task, model = _model(5)
    model = copy.deepcopy(model)
    x, y = task.train_x, task.train_y[:, 0]
    with torch.no_grad():
        model.unembed.W_U[3, 7] = float("nan")  # class 7's logit is NaN in every example
    ((loss, acc),) = model.loss_and_acc_last([(x, y)])
    plain_loss, plain_acc = loss_and_acc(model(x)[:, -1], y)
    assert torch.isnan(torch.tensor(plain_loss)) and torch.isnan(torch.tensor(loss))
    assert acc == plain_acc  # torch.argmax picks the NaN: right only where the label is 7
    assert torch.isnan(model.loss_last(x, y))


def test_the_float32_loss_kernel_matches_torch_in_float64():
    # kernels.cross_entropy_rows (its own vectorised expf) against torch's float64 log-softmax of
    # the same float32 logits: loss, gradient, first-maximum accuracy; with planted ties, a NaN
    # row, an infinite row, terms far below exp's float32 range, and a batch mean over more
    # examples than the block holds.
    g_ = torch.Generator().manual_seed(3)
    n, c, n_batch = 300, 113, 1000
    logits = torch.randn(n, c, generator=g_) * torch.logspace(-2, 2, n)[:, None]  # spreads up to ~400
    direct = torch.randn(n, c, generator=g_)
    labels = torch.randint(0, c, (n,), generator=g_)
    direct[:20, 5] = direct[:20, 9] = 0.0
    logits[:20, 5] = logits[:20, 9] = (logits + direct)[:20].max(1).values + 1  # ties: 5, the first, is the argmax
    labels[:10], labels[10:20] = 9, 5
    logits[20, 4], logits[21, 6] = float("nan"), float("inf")
    total = logits + direct
    g, losses = torch.empty(n, c), torch.empty(n, dtype=torch.float64)
    correct = torch.empty(n, dtype=torch.bool)
    kernels.cross_entropy_rows(logits.clone().numpy(), direct.numpy(), labels.numpy(), torch.finfo(torch.float32).tiny,
                               n_batch, g.numpy(), losses.numpy(), correct.numpy())
    ok = torch.ones(n, dtype=torch.bool)
    ok[20:22] = False
    # the reference rounds logits - max to float32 as the kernel does (and torch's float32 path
    # would), then computes in float64
    t = total[ok].double()
    top = t.max(1, keepdim=True).values
    e = (t - top).float().double().exp()
    want_loss = (top[:, 0] + e.sum(1).log() - t.gather(1, labels[ok, None])[:, 0])
    assert torch.allclose(losses[ok], want_loss, rtol=1e-6, atol=1e-12)
    want_g = (e / e.sum(1, keepdim=True) - torch.nn.functional.one_hot(labels[ok], c)) / n_batch
    tiny, got = torch.finfo(torch.float32).tiny, g[ok].double()
    normal = want_g.abs() > 1.01 * tiny
    assert ((got - want_g).abs()[normal] <= 4e-7 * want_g.abs()[normal]).all()  # a few float32 ulps
    assert (got[want_g.abs() < 0.99 * tiny] == 0).all() and (want_g.abs() < 0.99 * tiny).any()  # no subnormals
    assert torch.equal(correct[ok], total[ok].argmax(-1) == labels[ok])
    assert not correct[:10].any() and correct[10:20].all()
    assert torch.isnan(losses[20:22]).all() and torch.isnan(g[20:22]).all()
    assert bool(correct[20]) == (labels[20] == 4)  # torch.argmax picks the NaN
