"""n-digit addition, one of the grokking paper's other algorithmic tasks (Nanda et al. 2023, Appendix D.3).

Token encoding (d_vocab = 12): digits 0-9 are themselves, `+` is 10, `=` is 11. A sequence is

    x_1 .. x_n  +  y_1 .. y_n  =  z_0 z_1 .. z_n

with the numbers written most significant digit first, zero-padded to n digits, and the sum
z = x + y written with n + 1 digits, carry (z_0, 0 or 1) first. The model sees the sequence
without its last digit (n_ctx = 3n + 2, teacher forcing) and predicts the n + 1 answer digits:
the logits at the `=` position predict z_0, the logits at z_{j-1} predict z_j. `label_pos` lists
those positions, so the trainer's loss is the mean over the answer positions and its per-position
metrics (`*_loss_pos{j}`) are the paper's per-digit curves (j = 0 is the carry).

Finite data (`n_train` set): a fixed seeded set of distinct pairs; the test set is distinct
pairs not in the train set. Infinite data (`n_train: null`): every step draws fresh uniform
pairs through `TaskData.sample`; the test set is still fixed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grokscope.config import DigitsTask
from grokscope.tasks.base import TaskData

PLUS, EQUALS = 10, 11

# Seeds of the separate random streams of a task, offset from the run seed so that the split does
# not reuse the initialisation's stream (the model is seeded with the run seed itself).
TRAIN_STREAM, TEST_STREAM, PROBE_STREAM = 1, 2, 3


def stream_seed(seed: int, stream: int) -> int:
    return 7_919 * seed + 104_729 * stream


def to_digits(v: Tensor, n: int) -> Tensor:
    """Integers [batch] -> their n decimal digits, most significant first: [batch, n]."""
    powers = 10 ** torch.arange(n - 1, -1, -1)
    return (v[:, None] // powers) % 10


def encode(x: Tensor, y: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Pairs of n-digit numbers -> (inputs [batch, 3n + 2], answer digits [batch, n + 1])."""
    z = to_digits(x + y, n + 1)
    b = len(x)
    seq = torch.cat([to_digits(x, n), torch.full((b, 1), PLUS), to_digits(y, n), torch.full((b, 1), EQUALS), z], dim=1)
    return seq[:, :-1], z


def label_positions(n: int) -> list[int]:
    """Logit positions that predict z_0 .. z_n: the `=` (index 2n + 1) and the first n answer digits."""
    return list(range(2 * n + 1, 3 * n + 2))


def _random_pairs(gen: torch.Generator, count: int, n: int) -> tuple[Tensor, Tensor]:
    top = 10**n
    return torch.randint(0, top, (count,), generator=gen), torch.randint(0, top, (count,), generator=gen)


def _distinct_pairs(gen: torch.Generator, count: int, n: int, exclude: set[int]) -> Tensor:
    """`count` distinct pair codes x * 10^n + y, none in `exclude`; order of first draw."""
    top = 10**n
    if count + len(exclude) > top * top:
        raise ValueError(f"asked for {count} distinct {n}-digit pairs; only {top * top - len(exclude)} exist")
    seen: set[int] = set(exclude)
    out: list[int] = []
    while len(out) < count:
        x, y = _random_pairs(gen, 2 * (count - len(out)) + 8, n)
        for code in (x * top + y).tolist():
            if code not in seen:
                seen.add(code)
                out.append(code)
                if len(out) == count:
                    break
    return torch.tensor(out, dtype=torch.long)


def make(cfg: DigitsTask, seed: int) -> TaskData:
    n = cfg.n_digits
    top = 10**n
    train_codes = (_distinct_pairs(torch.Generator().manual_seed(stream_seed(seed, TRAIN_STREAM)), cfg.n_train, n, set())
                   if cfg.n_train is not None else torch.zeros(0, dtype=torch.long))
    test_codes = _distinct_pairs(torch.Generator().manual_seed(stream_seed(seed, TEST_STREAM)), cfg.n_test, n,
                                 set(train_codes.tolist()))
    test_x, test_y = encode(test_codes // top, test_codes % top, n)

    sample = None
    if cfg.n_train is None:
        def sample(gen: torch.Generator, batch: int) -> tuple[Tensor, Tensor]:
            return encode(*_random_pairs(gen, batch, n), n)

        # Train metrics of an infinite-data run are measured on one fixed fresh batch.
        train_x, train_y = sample(torch.Generator().manual_seed(stream_seed(seed, PROBE_STREAM)), cfg.n_test)
    else:
        train_x, train_y = encode(train_codes // top, train_codes % top, n)
    return TaskData(
        train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
        label_pos=label_positions(n), d_vocab=12, d_vocab_out=10, n_ctx=3 * n + 2, sample=sample,
        meta={"n_digits": n, "tokens": {"+": PLUS, "=": EQUALS}},
    )
