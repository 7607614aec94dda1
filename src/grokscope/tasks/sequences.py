"""Repeated subsequence and skip trigram, the grokking paper's sequence tasks (Nanda et al. 2023,
Appendix D.3, with the layout of Appendix E.2).

Repeated subsequence (`repeated_subsequence`). The paper: "We take a uniform random sequence of
tokens, randomly choose a subsequence to repeat, and train the model to predict the repeated
tokens" (D.3); E.2's example is `7 2 8 3 1 9 3 8 3 1 9 9 2 5 END`, in which `8 3 1 9` occurs a
second time, and a model trained on next-token loss can lower it only with an induction circuit
(a previous-token head in one layer, an induction head in the next). Here a sequence holds
`seq_len` tokens from 0..vocab-1 with a random subsequence s of `sub_len` tokens in it `repeats`
times (2 is the paper's: once, then once again):
- The last copy ends the sequence (positions seq_len - sub_len .. seq_len - 1). The earlier
  copies sit at uniformly random, non-overlapping places before it, with random gaps (possibly
  empty). Because they move, no fixed positional offset predicts the last copy: only induction
  does (find the earlier occurrence of the current token, copy the token after it).
- Scored: the last copy's tokens s_1 .. s_{sub_len-1}, the repeated tokens that anything can
  predict. The logits at position t predict token t + 1, so `label_pos` = seq_len - sub_len ..
  seq_len - 2. s_0 is not scored: the token before it is random, so nothing predicts it.
- Why the scored copy sits at the end, where E.2's example has a few random tokens and END
  after it: the trainer reads the same positions in every example. Tokens after the last scored
  position (the random tail, END) are never attended to by a scored position of a causal model, so
  leaving them out changes nothing the loss reads; the model's input is the sequence without its
  last token (n_ctx = seq_len - 1).
- `distinct: true` (default, our choice; the paper's tokens are uniform): s has distinct tokens
  and the filler is drawn uniformly from the tokens not in s, so each scored token has one
  earlier occurrence of its predecessor and accuracy can reach 100%. With `distinct: false` all
  tokens are uniform, as in the paper, and a filler token equal to a token of s makes some targets
  ambiguous.

Skip trigram (`skip_trigram`). The paper: "a sequence of tokens from 0 to 19, of which exactly one
is greater than or equal to 10, and the model needs to output the token that is >= 10. This can be
solved with learning 10 skip trigrams." `seq_len` tokens, all "small" (0 .. vocab/2 - 1) except one
"big" token (vocab/2 .. vocab - 1) at a uniformly random position; the label, read at the final
position, is the big token, over all `vocab` output classes.

Both: finite data (`n_train` set) is a fixed seeded set; infinite data (`n_train: null`) draws a
fresh batch every step through `TaskData.sample`. The test set is drawn from its own seeded
stream, so a finite and an infinite run of one seed are scored on the same test sequences; with
finite data, a test sequence that also occurs in the train set is replaced by a fresh one (this
matters only for short skip-trigram sequences, where the sequence space is small).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from grokscope.config import ConfigError, RepeatedSubsequenceTask, SkipTrigramTask
from grokscope.tasks.base import Sampler, TaskData
from grokscope.tasks.digits import PROBE_STREAM, TEST_STREAM, TRAIN_STREAM, stream_seed

Draw = Callable[[torch.Generator, int], tuple[Tensor, Tensor]]


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
def unseen(draw: Draw, gen: torch.Generator, count: int, seen: Tensor) -> tuple[Tensor, Tensor]:
    """`count` draws whose inputs are not rows of `seen`. The first `count` draws are kept unless
    they repeat a row of `seen`; each one that does is replaced by a later draw from the same
    stream. With nothing to avoid this is `draw(gen, count)`."""
    known = {tuple(row) for row in seen.tolist()}
    xs, ys, have, ask = [], [], 0, count
    for _ in range(1000):
        if have == count:
            break
        x, y = draw(gen, ask)
        keep = torch.tensor([tuple(row) not in known for row in x.tolist()], dtype=torch.bool)
        xs.append(x[keep][: count - have])
        ys.append(y[keep][: count - have])
        have += len(xs[-1])
        ask = count - have + 8
    else:
        raise ConfigError(f"task.n_test={count}: too few sequences of this length lie outside the "
                          f"{len(known)} train sequences; lengthen task.seq_len or lower task.n_test")
    return torch.cat(xs), torch.cat(ys)


def make(cfg: RepeatedSubsequenceTask | SkipTrigramTask, seed: int) -> TaskData:
    draw: Draw
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
    test_gen = torch.Generator().manual_seed(stream_seed(seed, TEST_STREAM))
    sample: Sampler | None = None
    if cfg.n_train is None:
        sample = draw
        # Train metrics of an infinite-data run are measured on one fixed fresh batch.
        train_x, train_y = draw(torch.Generator().manual_seed(stream_seed(seed, PROBE_STREAM)), cfg.n_test)
    else:
        train_x, train_y = draw(torch.Generator().manual_seed(stream_seed(seed, TRAIN_STREAM)), cfg.n_train)
    seen = train_x if sample is None else train_x[:0]
    test_x, test_y = unseen(draw, test_gen, cfg.n_test, seen)
    return TaskData(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, sample=sample,
                    meta={"task": cfg.name}, **shape)
