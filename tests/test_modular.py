"""The modular arithmetic task: labels by hand, a deterministic and disjoint split."""

from __future__ import annotations

import pytest
import torch

from grokscope import config as C
from grokscope.tasks import make_task
from grokscope.tasks.modular import all_pairs, labels


def test_mainline_split_sizes_match_paper():
    t = make_task(C.resolve({}))
    assert len(t.train_x) == 3830 and len(t.test_x) == 8939
    assert t.d_vocab == 114 and t.d_vocab_out == 113 and t.n_ctx == 3 and t.label_pos == [2]
    assert (t.train_x[:, 2] == 113).all()


def test_split_is_deterministic_disjoint_and_complete():
    a = make_task(C.resolve({}, ["task.p=31", "seed=3"]))
    b = make_task(C.resolve({}, ["task.p=31", "seed=3"]))
    c = make_task(C.resolve({}, ["task.p=31", "seed=4"]))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)
    key = lambda x: set((x[:, 0] * 31 + x[:, 1]).tolist())  # noqa: E731
    assert key(a.train_x).isdisjoint(key(a.test_x))
    assert key(a.train_x) | key(a.test_x) == set(range(31 * 31))


@pytest.mark.parametrize(("op", "a", "b", "want"), [
    ("add", 5, 9, 3), ("sub", 2, 5, 8), ("mul", 3, 4, 1), ("div", 1, 2, 6),  # 2*6 = 12 = 1 mod 11
    ("poly", 2, 3, (4 + 6 + 9) % 11),
])
def test_labels_by_hand(op, a, b, want):
    assert int(labels(torch.tensor([a]), torch.tensor([b]), 11, op)[0]) == want


def test_division_excludes_zero_divisor():
    t = make_task(C.resolve({}, ["task.p=13", "task.op=div"]))
    assert (t.train_x[:, 1] != 0).all() and (t.test_x[:, 1] != 0).all()
    assert len(t.train_x) + len(t.test_x) == 13 * 12
    x, y = t.train_x, t.train_y[:, 0]
    assert ((y * x[:, 1]) % 13 == x[:, 0]).all()


def test_random_table_is_fixed_by_seed():
    a, b = all_pairs(31)
    one = labels(a, b, 31, "rand", seed=1)
    assert torch.equal(one, labels(a, b, 31, "rand", seed=1))
    assert one.min() >= 0 and one.max() < 31
    assert not torch.equal(one, labels(a, b, 31, "rand", seed=2))  # another seed, another table
    # not a disguised operation: it agrees with a + b about as often as chance (1 in 31) and uses
    # every label
    assert (one == labels(a, b, 31, "add")).double().mean() < 0.1
    assert len(torch.unique(one)) == 31
