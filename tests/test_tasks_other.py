"""The grokking paper's other tasks (Nanda et al. 2023, Appendix D.3): data checked by hand, and a tiny model learns each."""

from __future__ import annotations

import pytest
import torch

from grokscope import config as C
from grokscope.store import Run
from grokscope.tasks import digits, make_task, sequences
from grokscope.train.trainer import Trainer


def task_cfg(task: dict, **train) -> C.RunConfig:
    return C.resolve({"task": task, "train": {"steps": 10, **train}})


# ------------------------------------------------------------------------------ digit addition
def test_digit_encoding_by_hand():
    x, y = digits.encode(torch.tensor([12345, 7, 99999]), torch.tensor([99999, 5, 99999]), 5)
    # 12345 + 99999 = 112344; carry first, then the digits, most significant first
    assert x[0].tolist() == [1, 2, 3, 4, 5, 10, 9, 9, 9, 9, 9, 11, 1, 1, 2, 3, 4]
    assert y[0].tolist() == [1, 1, 2, 3, 4, 4]
    # 7 + 5 = 12: zero-padded operands and answer
    assert x[1].tolist() == [0, 0, 0, 0, 7, 10, 0, 0, 0, 0, 5, 11, 0, 0, 0, 0, 1]
    assert y[1].tolist() == [0, 0, 0, 0, 1, 2]
    assert y[2].tolist() == [1, 9, 9, 9, 9, 8]
    # the `=` predicts the carry, each answer digit predicts the next one
    assert digits.label_positions(5) == [11, 12, 13, 14, 15, 16]


def _decode(d: torch.Tensor) -> torch.Tensor:
    return (d * 10 ** torch.arange(d.shape[1] - 1, -1, -1)).sum(1)


@pytest.mark.parametrize("n_train", [50, None])
def test_digit_task_sums_and_splits(n_train):
    t = make_task(task_cfg({"name": "digits", "n_digits": 5, "n_train": n_train, "n_test": 40}))
    assert t.n_ctx == 17 and t.d_vocab == 12 and t.d_vocab_out == 10
    for x, y in ((t.train_x, t.train_y), (t.test_x, t.test_y)):
        assert x.shape[1] == 17 and y.shape[1] == 6
        assert (x[:, 5] == 10).all() and (x[:, 11] == 11).all()
        assert torch.equal(_decode(x[:, :5]) + _decode(x[:, 6:11]), _decode(y))
        assert torch.equal(x[:, 12:], y[:, :5])  # teacher forcing: answer digits fed back in
    codes = lambda x: (_decode(x[:, :5]) * 10**5 + _decode(x[:, 6:11])).tolist()  # noqa: E731
    assert len(set(codes(t.test_x))) == 40
    if n_train is None:
        assert t.n_train is None and t.sample is not None
        g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
        a, b, c = t.sample(g(1), 8), t.sample(g(1), 8), t.sample(g(2), 8)
        assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
        assert torch.equal(_decode(a[0][:, :5]) + _decode(a[0][:, 6:11]), _decode(a[1]))
    else:
        assert t.n_train == 50 and len(set(codes(t.train_x))) == 50
        assert not set(codes(t.train_x)) & set(codes(t.test_x))
    again = make_task(task_cfg({"name": "digits", "n_digits": 5, "n_train": n_train, "n_test": 40}))
    assert torch.equal(again.test_x, t.test_x) and torch.equal(again.train_x, t.train_x)


def test_digit_task_rejects_impossible_sizes():
    with pytest.raises(C.ConfigError, match="n_train"):
        task_cfg({"name": "digits", "n_digits": 1, "n_train": 90, "n_test": 20})


# ------------------------------------------------------------------------------ repeated subsequence
def _induction_oracle(x: torch.Tensor, label_pos: list[int]) -> torch.Tensor:
    """Hand-written induction: the token after the latest earlier occurrence of the current token."""
    out = torch.full((len(x), len(label_pos)), -1)
    for i, row in enumerate(x.tolist()):
        for j, p in enumerate(label_pos):
            earlier = [q for q in range(p) if row[q] == row[p]]
            if earlier:
                out[i, j] = row[earlier[-1] + 1]
    return out


def test_repeated_subsequence_layout():
    cfg = task_cfg({"name": "repeated_subsequence", "n_train": 64, "n_test": 32}).task
    seq, starts = sequences.repeated_sequences(torch.Generator().manual_seed(0), 64, cfg)
    assert seq.shape == (64, 85) and int(seq.max()) < 128
    assert (starts[:, -1] == 85 - 16).all()
    assert (starts[:, 1:] - starts[:, :-1] >= 16).all() and (starts[:, 0] >= 0).all()  # no overlap
    assert len(set(starts[:, 0].tolist())) > 5  # the earlier copies move
    for row, st in zip(seq, starts, strict=True):
        copies = [row[s:s + 16] for s in st.tolist()]
        assert all(torch.equal(c, copies[0]) for c in copies)
        assert len(set(copies[0].tolist())) == 16  # distinct tokens
        mask = torch.ones(85, dtype=torch.bool)
        for s in st.tolist():
            mask[s:s + 16] = False
        assert not set(row[mask].tolist()) & set(copies[0].tolist())  # filler avoids them


def test_repeated_subsequence_labels_are_the_last_copy():
    t = make_task(task_cfg({"name": "repeated_subsequence", "n_train": 64, "n_test": 32}))
    assert t.n_ctx == 84 and t.label_pos == list(range(69, 84)) and t.train_y.shape == (64, 15)
    # logits at p predict token p + 1; the last input token 83 predicts the sequence's last token
    assert torch.equal(t.train_y[:, :-1], t.train_x[:, 70:84])
    # induction alone predicts every scored token; a fixed positional offset does not
    assert torch.equal(_induction_oracle(t.train_x, t.label_pos), t.train_y)
    offset = t.train_x[:, [p - 16 + 1 for p in t.label_pos]]
    assert (offset == t.train_y).float().mean() < 0.5


def test_repeated_subsequence_paper_layout_by_hand():
    """E.2's layout: one subsequence, then the same again; the loss reads the second copy after its first token."""
    cfg = task_cfg({"name": "repeated_subsequence", "vocab": 10, "seq_len": 10, "sub_len": 3, "repeats": 2,
                    "n_train": 4, "n_test": 3}).task
    seq, starts = sequences.repeated_sequences(torch.Generator().manual_seed(0), 3, cfg)
    # checked by hand: [2 3 4] at 4..6 and again at 7..9; [5 2 8] at 1..3, 7..9; [7 8 9] at 3..5, 7..9
    assert seq.tolist() == [[6, 8, 5, 1, 2, 3, 4, 2, 3, 4], [5, 2, 8, 3, 7, 5, 6, 2, 8, 3],
                            [6, 3, 0, 7, 8, 9, 4, 7, 8, 9]]
    assert starts.tolist() == [[4, 7], [1, 7], [3, 7]]
    t = make_task(task_cfg({"name": "repeated_subsequence", "vocab": 10, "seq_len": 10, "sub_len": 3,
                            "repeats": 2, "n_train": 4, "n_test": 3}))
    # the sequence 6 4 9 0 2 3 1 | 4 9 0 (copy of 4 9 0 at 1..3): the input drops the last token; the
    # logits at 7 (token 4) predict 9 and at 8 (token 9) predict 0
    assert t.train_x[0].tolist() == [6, 4, 9, 0, 2, 3, 1, 4, 9] and t.train_y[0].tolist() == [9, 0]
    assert t.label_pos == [7, 8] and t.n_ctx == 9 and t.d_vocab == t.d_vocab_out == 10
    assert torch.equal(_induction_oracle(t.train_x, t.label_pos), t.train_y)


# ------------------------------------------------------------------------------ skip trigram
def test_skip_trigram_by_hand():
    t = make_task(task_cfg({"name": "skip_trigram", "n_train": 200, "n_test": 100}))
    assert t.n_ctx == 16 and t.label_pos == [15] and t.d_vocab_out == 20
    for x, y in ((t.train_x, t.train_y), (t.test_x, t.test_y)):
        assert ((x >= 10).sum(1) == 1).all()  # exactly one big token
        assert torch.equal(x.max(1).values, y[:, 0]) and (y >= 10).all()
    big_pos = (t.train_x >= 10).float().argmax(1)
    assert len(set(big_pos.tolist())) == 16  # every position is used
    assert t.sample is None and t.n_train == 200  # finite data: no sampler
    inf = make_task(task_cfg({"name": "skip_trigram", "n_train": None, "n_test": 10}))
    x, y = inf.sample(torch.Generator().manual_seed(3), 5)
    assert x.shape == (5, 16) and torch.equal(x.max(1).values, y[:, 0])


def test_skip_trigram_by_hand_literal():
    t = make_task(task_cfg({"name": "skip_trigram", "vocab": 20, "seq_len": 6, "n_train": 4, "n_test": 3}))
    # checked by hand: one token >= 10 in each row, and it is the label, read at the last position
    assert t.train_x.tolist() == [[9, 7, 9, 16, 3, 0], [12, 9, 6, 0, 7, 9], [17, 3, 2, 9, 7, 1],
                                  [15, 0, 7, 2, 0, 9]]
    assert t.train_y.tolist() == [[16], [12], [17], [15]] and t.label_pos == [5]


def test_short_skip_trigram_test_set_avoids_the_train_set():
    # 3 tokens: 3 * 10 * 10^2 = 3,000 sequences, so 512 train and 1,024 test draws would share ~170
    t = make_task(task_cfg({"name": "skip_trigram", "seq_len": 3, "n_train": 512, "n_test": 1024}))
    train = {tuple(r) for r in t.train_x.tolist()}
    assert len(t.test_x) == 1024 and not any(tuple(r) in train for r in t.test_x.tolist())
    assert torch.equal(t.test_x.max(1).values, t.test_y[:, 0])


SEQ_TASKS = {
    "repeated_subsequence": {"name": "repeated_subsequence", "vocab": 32, "seq_len": 16, "sub_len": 4, "repeats": 2,
                             "n_test": 64},
    "skip_trigram": {"name": "skip_trigram", "seq_len": 12, "n_test": 64},
    "digits": {"name": "digits", "n_digits": 5, "n_test": 64},
}


@pytest.mark.parametrize("name", list(SEQ_TASKS))
def test_finite_and_infinite_data_are_fixed_by_the_seed(name):
    """One seed fixes the train set, the test set and every fresh batch; another seed changes them all.
    A finite and an infinite run of one seed are scored on the same test set."""
    def make(n_train, seed=0):
        return make_task(C.resolve({"seed": seed, "task": {**SEQ_TASKS[name], "n_train": n_train},
                                    "train": {"steps": 1}}))

    fin, fin_again, fin_other = make(100), make(100), make(100, seed=1)
    assert fin.sample is None and fin.n_train == 100
    assert torch.equal(fin.train_x, fin_again.train_x) and torch.equal(fin.test_x, fin_again.test_x)
    assert not torch.equal(fin.train_x, fin_other.train_x) and not torch.equal(fin.test_x, fin_other.test_x)
    inf, inf_other = make(None), make(None, seed=1)
    assert inf.n_train is None and inf.sample is not None
    assert torch.equal(inf.test_x, fin.test_x) and torch.equal(inf.test_y, fin.test_y)
    assert not torch.equal(inf.test_x, inf_other.test_x)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a, b, c = inf.sample(g(5), 16), inf.sample(g(5), 16), inf.sample(g(6), 16)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    assert a[0].shape == (16, inf.n_ctx) and a[1].shape == (16, len(inf.label_pos))


def test_the_trainer_draws_a_fresh_full_batch_each_step_and_replays_it():
    """Infinite data: `batch_size` fresh rows a step, the same rows when the step is replayed (resume);
    finite data at batch_size >= n_train: the whole train set every step (full batch)."""
    task = {"name": "skip_trigram", "seq_len": 8, "n_test": 32}
    inf = Trainer(C.resolve({"task": {**task, "n_train": None}, "train": {"steps": 5, "batch_size": 48, "threads": 1}}),
                  Run("/nonexistent"), progress=False)
    b0, b0_again, b1 = inf.batch(0), inf.batch(0), inf.batch(1)
    assert b0.x.shape == (48, 8) and torch.equal(b0.x, b0_again.x) and not torch.equal(b0.x, b1.x)
    fin = Trainer(C.resolve({"task": {**task, "n_train": 48}, "train": {"steps": 5, "batch_size": 48, "threads": 1}}),
                  Run("/nonexistent"), progress=False)
    assert torch.equal(fin.batch(0).x, fin.task.train_x) and torch.equal(fin.batch(3).x, fin.task.train_x)
    assert fin.steps_per_epoch == 1


# ------------------------------------------------------------------------------ tiny models learn
TINY = {
    "skip_trigram": ({"name": "skip_trigram", "vocab": 20, "seq_len": 8, "n_train": None, "n_test": 256},
                     {"n_layers": 1, "d_model": 32, "n_heads": 2, "d_head": 16, "attn_only": True}, 1e-2, 100, 0.99),
    "digits": ({"name": "digits", "n_digits": 2, "n_train": None, "n_test": 256},
               {"n_layers": 1, "d_model": 64, "n_heads": 2, "d_head": 32, "d_mlp": 256}, 3e-3, 400, 0.9),
    "repeated_subsequence": ({"name": "repeated_subsequence", "vocab": 32, "seq_len": 20, "sub_len": 5,
                              "repeats": 2, "n_train": None, "n_test": 256},
                             {"n_layers": 2, "d_model": 32, "n_heads": 2, "d_head": 16, "attn_only": True}, 1e-2, 300, 0.95),
}


@pytest.mark.parametrize("name", list(TINY))
def test_tiny_model_learns(name, tmp_path):
    task, model, lr, steps, acc = TINY[name]
    cfg = C.resolve({"task": task, "model": model, "optim": {"lr": lr, "weight_decay": 0.0},
                     "train": {"steps": steps, "batch_size": 64, "eval_every": 50, "checkpoint_every": 1000,
                               "threads": 1}})
    info = Trainer(cfg, Run(tmp_path), progress=False).fit()
    m = Run(tmp_path).metrics()
    assert info["status"] == "completed" and int(m["step"].iloc[-1]) == steps
    assert m["test_acc"].iloc[0] < 0.3 and m["test_acc"].iloc[-1] > acc
    n_label = len(make_task(cfg).label_pos)
    if n_label > 1:  # per-position curves, one per answer position
        assert {f"test_loss_pos{j}" for j in range(n_label)} <= set(m.columns)


def test_finite_minibatch_epochs(tmp_path):
    """A fixed set with a batch size: epochs count passes over it, per-position metrics logged."""
    cfg = C.resolve({"task": {"name": "digits", "n_digits": 2, "n_train": 100, "n_test": 50},
                     "model": {"d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 32},
                     "train": {"epochs": 3, "batch_size": 32, "eval_every": 1, "threads": 1}})
    info = Trainer(cfg, Run(tmp_path), progress=False).fit()
    assert info["total_steps"] == 12 and info["steps_per_epoch"] == 4  # ceil(100 / 32) = 4
    m = Run(tmp_path).metrics()
    assert m["epoch"].iloc[-1] == 3.0 and "train_acc_pos2" in m
