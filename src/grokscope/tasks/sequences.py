"""Repeated subsequence and skip trigram, the grokking paper's sequence tasks (Nanda et al. 2023, Appendix D.3).

Repeated subsequence (`repeated_subsequence`). A sequence of `seq_len` tokens from 0..vocab-1 in
which one random subsequence s of length `sub_len` appears `repeats` times; the model predicts
the repeated tokens by induction (find the earlier occurrence of the current token, copy the token
after it). Layout and scoring, our choices (the paper gives none):
- The last copy ends the sequence (positions seq_len - sub_len .. seq_len - 1); the earlier
  copies sit at random, non-overlapping places before it, with random gaps. Because the earlier
  copies move, no fixed positional offset predicts the last copy: only an induction circuit does.
- Scored: the last copy's tokens s_1 .. s_{sub_len-1}. The logits at position t predict token
  t + 1, so `label_pos` = seq_len - sub_len .. seq_len - 2 (the trainer needs one fixed set of
  positions for every example, which is why the copy the loss reads is the one at a fixed place).
  s_0 is not scored: the token before it is unrelated to it, so nothing predicts it.
- With `distinct: true` (default) the subsequence has distinct tokens and the filler tokens are
  drawn uniformly from the tokens not in it, so every scored token is determined by induction
  and accuracy can reach 100% (with `distinct: false` a repeated token inside s, or a filler
  token equal to a token of s, makes some targets ambiguous).
The model's input is the sequence without its last token (n_ctx = seq_len - 1).

Skip trigram (`skip_trigram`). `seq_len` tokens; all are "small" (0 .. vocab/2 - 1) except exactly
one "big" token (vocab/2 .. vocab - 1) at a uniformly random position; the label, read at the
final position, is the big token, over all `vocab` output classes. A 1-layer attention-only
model solves it with vocab/2 skip trigrams (big token ... last token -> big token).

Both: finite data (`n_train` set) is a fixed seeded set; infinite data (`n_train: null`) draws a
fresh batch every step through `TaskData.sample`. The test set is fixed and seeded apart.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grokscope.config import RepeatedSubsequenceTask, SkipTrigramTask
from grokscope.tasks.base import Sampler, TaskData
from grokscope.tasks.digits import PROBE_STREAM, TEST_STREAM, TRAIN_STREAM, stream_seed


# ----------------------------------------------------------------------------- repeated subsequence
def repeated_sequences(gen: torch.Generator, count: int, cfg: RepeatedSubsequenceTask) -> tuple[Tensor, Tensor]:
    """(tokens [count, seq_len], start of each copy [count, repeats]) laid out as the docstring says."""
    L, m, r, V = cfg.seq_len, cfg.sub_len, cfg.repeats, cfg.vocab
    if cfg.distinct:
        # m distinct tokens: the first m of a random permutation of the vocabulary
        perm = torch.rand(count, V, generator=gen).argsort(dim=1)
        sub = perm[:, :m]
        # filler: uniform over the V - m tokens outside the subsequence
        filler = perm[:, m:].gather(1, torch.randint(0, V - m, (count, L), generator=gen))
    else:
        sub = torch.randint(0, V, (count, m), generator=gen)
        filler = torch.randint(0, V, (count, L), generator=gen)
    # Gaps before and between the copies: r - 1 sorted uniform cut points in the L - r * m free
    # positions; copy k (k < r - 1) starts after cut k and the k copies before it.
    free = L - r * m
    cuts = torch.randint(0, free + 1, (count, r - 1), generator=gen).sort(dim=1).values
    starts = torch.empty(count, r, dtype=torch.long)
    starts[:, : r - 1] = cuts + torch.arange(r - 1) * m
    starts[:, r - 1] = L - m
    seq = filler.clone()
    pos = starts[:, :, None] + torch.arange(m)  # [count, r, m]
    seq.scatter_(1, pos.reshape(count, -1), sub.repeat(1, r))
    return seq, starts


def repeated_label_positions(cfg: RepeatedSubsequenceTask) -> list[int]:
    """Logit positions that predict the last copy's tokens s_1 .. s_{m-1}."""
    return list(range(cfg.seq_len - cfg.sub_len, cfg.seq_len - 1))


def _split_repeated(seq: Tensor, cfg: RepeatedSubsequenceTask) -> tuple[Tensor, Tensor]:
    return seq[:, :-1], seq[:, cfg.seq_len - cfg.sub_len + 1:]


# ----------------------------------------------------------------------------- skip trigram
def skip_trigram_sequences(gen: torch.Generator, count: int, cfg: SkipTrigramTask) -> tuple[Tensor, Tensor]:
    """(tokens [count, seq_len], labels [count, 1]): one big token at a random position."""
    half = cfg.vocab // 2
    seq = torch.randint(0, half, (count, cfg.seq_len), generator=gen)
    where = torch.randint(0, cfg.seq_len, (count, 1), generator=gen)
    big = torch.randint(half, cfg.vocab, (count, 1), generator=gen)
    seq.scatter_(1, where, big)
    return seq, big


# ----------------------------------------------------------------------------- both
def make(cfg: RepeatedSubsequenceTask | SkipTrigramTask, seed: int) -> TaskData:
    if isinstance(cfg, RepeatedSubsequenceTask):
        def draw(gen: torch.Generator, count: int) -> tuple[Tensor, Tensor]:
            return _split_repeated(repeated_sequences(gen, count, cfg)[0], cfg)

        shape = {"label_pos": repeated_label_positions(cfg), "d_vocab": cfg.vocab, "d_vocab_out": cfg.vocab,
                 "n_ctx": cfg.seq_len - 1}
    else:
        def draw(gen: torch.Generator, count: int) -> tuple[Tensor, Tensor]:
            return skip_trigram_sequences(gen, count, cfg)

        shape = {"label_pos": [cfg.seq_len - 1], "d_vocab": cfg.vocab, "d_vocab_out": cfg.vocab,
                 "n_ctx": cfg.seq_len}
    test_x, test_y = draw(torch.Generator().manual_seed(stream_seed(seed, TEST_STREAM)), cfg.n_test)
    sample: Sampler | None = None
    if cfg.n_train is None:
        sample = draw
        # Train metrics of an infinite-data run are measured on one fixed fresh batch.
        train_x, train_y = draw(torch.Generator().manual_seed(stream_seed(seed, PROBE_STREAM)), cfg.n_test)
    else:
        train_x, train_y = draw(torch.Generator().manual_seed(stream_seed(seed, TRAIN_STREAM)), cfg.n_train)
    return TaskData(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, sample=sample,
                    meta={"task": cfg.name}, **shape)
