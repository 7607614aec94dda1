"""The copy test: layout, uniqueness, tokenisation at the prefix/suffix boundary, scoring."""

from __future__ import annotations

import math
import random

import pytest
import torch

from grokscope.lm.copytest import HEX, build_copy_set, query_lines, score_copy
from grokscope.lm.text import train_tokenizer

torch.set_num_threads(1)


def hexy_text(n: int = 3000, seed: int = 0) -> str:
    """English-like words and hex strings, so BPE learns merges inside hex runs (e.g. 'ab', 'de')."""
    rng = random.Random(seed)
    words = ["the", "bead", "face", "cafe", "deaf", "fade", "add", "bed", "and", "of", "to", "a"]
    return " ".join(rng.choice(words) if rng.random() < 0.6 else "".join(rng.choice(HEX) for _ in range(6))
                    for _ in range(n)) + "\n"


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer("bpe", [hexy_text()], 300)


@pytest.fixture(scope="module")
def char():
    return train_tokenizer("char", ["hello world\n"], 0)


def oracle_logits(tokens: torch.Tensor, vocab: int, k: int = 6) -> torch.Tensor:
    """A perfect copier: at each position, find the last earlier match of the last k tokens and
    predict what followed it; a 'model' that copies perfectly without any learning."""
    n, L = tokens.shape
    out = torch.zeros(n, L, vocab)
    for b in range(n):
        t = tokens[b].tolist()
        for pos in range(k - 1, L):
            key = t[pos - k + 1:pos + 1]
            for j in range(pos - 1, k - 2, -1):
                if t[j - k + 1:j + 1] == key:
                    out[b, pos, t[j + 1]] = 10.0
                    break
    return out


def lines_of(tok, cs, i):
    text = tok.decode(cs.tokens[i].tolist())
    return text.split("\n")


def test_layout_uniqueness_and_query(char):
    cs = build_copy_set(char, context=256, n_samples=12, max_lines=50, n_queries=5, seed=0)
    assert cs.n_lines == (256 - 17) // 19  # 19 characters per line, plus a query of 12 + 5 tokens
    assert cs.query_lines == query_lines(cs.n_lines, 5) and cs.query_lines[-1] == cs.n_lines
    for i in range(12):
        seq = cs.tokens[i][: int(cs.pos[i, cs.mask[i]].max()) + 1].tolist()
        lines = char.decode(seq).split("\n")
        body, query = lines[:-1], lines[-1]
        assert len(body) == cs.n_lines
        assert all(len(ln) == 18 and set(ln) <= set(HEX) for ln in body)
        assert len({ln[:12] for ln in body}) == len(body) and len({ln[12:] for ln in body}) == len(body)
        q = int(cs.query[i])
        assert query == body[q - 1][:17]  # the prefix, then the suffix but its last token (teacher forcing)
        assert char.decode(cs.targets[i][cs.mask[i]].tolist()) == body[q - 1][12:]
        # the logit at pos predicts the token at pos + 1
        for p, t in zip(cs.pos[i][cs.mask[i]].tolist(), cs.targets[i][cs.mask[i]].tolist(), strict=True):
            if p + 1 < len(seq):
                assert seq[p + 1] == t


def test_bpe_lines_never_cross_the_boundary(bpe):
    gen = random.Random(1)
    crossing = 0
    for _ in range(300):
        p = "".join(gen.choice(HEX) for _ in range(12))
        s = "".join(gen.choice(HEX) for _ in range(6))
        ids, pids = bpe.encode(p + s + "\n"), bpe.encode(p)
        crossing += ids[:len(pids)] != pids
    assert crossing > 0  # the case the resampling guards against does happen with this tokenizer
    cs = build_copy_set(bpe, context=200, n_samples=10, max_lines=50, n_queries=4, seed=3)
    for i in range(10):
        valid = int(cs.pos[i, cs.mask[i]].max()) + 1
        seq = cs.tokens[i][:valid].tolist()
        text = bpe.decode(seq)
        body = text.split("\n")[:-1]
        assert len(body) == cs.n_lines and len(seq) <= 200
        # lines encoded one by one equal the whole text encoded at once
        assert bpe.encode("\n".join(body) + "\n") == seq[:len(bpe.encode("\n".join(body) + "\n"))]
        q = int(cs.query[i])
        assert bpe.decode(cs.targets[i][cs.mask[i]].tolist()) == body[q - 1][12:]


def test_perfect_copier_scores_one_and_uniform_scores_zero(char, bpe):
    for tok in (char, bpe):
        cs = build_copy_set(tok, context=160, n_samples=20, max_lines=50, n_queries=4, seed=5)
        res = score_copy(oracle_logits(cs.tokens, tok.vocab_size), cs)
        assert res["copy_acc"] == 1.0 and res["copy_token_acc"] == 1.0
        assert all(res[f"copy_acc_q{q}"] == 1.0 for q in cs.query_lines)
        uniform = score_copy(torch.zeros(*cs.tokens.shape, tok.vocab_size), cs)
        assert uniform["copy_loss"] == pytest.approx(math.log(tok.vocab_size))
        rand = score_copy(torch.randn(*cs.tokens.shape, tok.vocab_size, generator=torch.Generator().manual_seed(0)), cs)
        assert rand["copy_acc"] == 0.0 and rand["copy_token_acc"] < 0.1


def test_teacher_forced_exact_match_equals_greedy_decoding(char):
    """Greedy decoding with a copier that errs on some samples gives the same exact-match count."""
    cs = build_copy_set(char, context=120, n_samples=8, max_lines=50, n_queries=3, seed=7)
    logits = oracle_logits(cs.tokens, char.vocab_size)
    for i in (1, 4):  # break two samples at their third suffix token
        p = int(cs.pos[i, 2])
        logits[i, p] = 0
        logits[i, p, (int(cs.targets[i, 2]) + 1) % char.vocab_size] = 10.0
    tf = score_copy(logits, cs)["copy_acc"]
    greedy_right = 0
    for i in range(8):
        n_suf = int(cs.mask[i].sum())
        start = int(cs.pos[i, 0])
        seq = cs.tokens[i, :start + 1].tolist()
        for _ in range(n_suf):
            lg = oracle_logits(torch.tensor([seq]), char.vocab_size)[0, -1]
            if len(seq) - 1 == int(cs.pos[i, 2]) and i in (1, 4):
                lg = logits[i, len(seq) - 1]
            seq.append(int(lg.argmax()))
        greedy_right += seq[start + 1:] == cs.targets[i, :n_suf].tolist()
    assert tf == greedy_right / 8 == 0.75


def test_random_id_variant(char):
    cs = build_copy_set(char, context=200, n_samples=6, max_lines=50, n_queries=3, seed=2, random_ids=True)
    newline = char.encode("\n")[0]
    for i in range(6):
        valid = int(cs.pos[i, cs.mask[i]].max()) + 1
        seq = cs.tokens[i][:valid].tolist()
        body = seq[:cs.n_lines * 19]
        rows = [body[j * 19:(j + 1) * 19] for j in range(cs.n_lines)]
        assert all(r[-1] == newline and newline not in r[:-1] for r in rows)
        assert len({tuple(r[:12]) for r in rows}) == cs.n_lines
        assert cs.targets[i][cs.mask[i]].tolist() == rows[int(cs.query[i]) - 1][12:18]
    res = score_copy(oracle_logits(cs.tokens, char.vocab_size), cs)
    assert res["copy_acc"] == 1.0


def test_per_token_accuracy_is_that_of_greedy_decoding():
    # A bigram "model" that always predicts token + 1 (mod 10), on hand-made suffixes:
    # A: input 5 6 7 | 9 0: teacher-forced 7 (right), 8 (wrong), 0 (right): 2 of 3; greedy feeds
    #    back its 8 and predicts 9 where 0 is due: 1 of 3.
    # B: input 3 4 5 | 7 7: teacher-forced 5, 6 (wrong), 8 (wrong): 1 of 3; greedy feeds back its 6
    #    and predicts 7, which is right: 2 of 3 (greedy can recover; it is not "wrong after the first error").
    from grokscope.lm.copytest import CopySet, evaluate_copy

    tokens = torch.tensor([[5, 6, 7, 9, 0], [3, 4, 5, 7, 7], [5, 6, 7, 9, 0]])
    pos = torch.tensor([[1, 2, 3]] * 3)
    targets = tokens.gather(1, pos + 1)
    cs = CopySet(tokens, pos, targets, torch.ones(3, 3, dtype=torch.bool), torch.tensor([1, 1, 1]), [1], 1)

    def bigram(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot((x + 1) % 10, 10).float()

    greedy = evaluate_copy(bigram, cs)
    assert greedy["copy_token_acc"] == pytest.approx(4 / 9)
    assert score_copy(bigram(tokens), cs)["copy_token_acc"] == pytest.approx(5 / 9)  # teacher-forced
    assert greedy["copy_acc"] == 0.0


# ------------------------------------------------------------------ the paper's variant (the headline)
def grams(seq: list[int], k: int) -> list[tuple[int, ...]]:
    return [tuple(seq[i:i + k]) for i in range(len(seq) - k + 1)]


def test_paper_variant_layout_lengths_and_unique_prefixes(char):
    from grokscope.lm.copytest import PREFIX_LEN, SUFFIX_LEN

    assert (PREFIX_LEN, SUFFIX_LEN) == (12, 6)
    cs = build_copy_set(char, context=200, n_samples=15, max_lines=50, n_queries=5, seed=0, kind="paper")
    assert cs.n_lines == (200 - 17) // 18  # 18 ids a line, no separator; the query is 12 + 5 ids
    assert cs.query_lines == query_lines(cs.n_lines, 5)
    seen = set()
    for i in range(15):
        valid = int(cs.pos[i, cs.mask[i]].max()) + 1
        seq = cs.tokens[i][:valid].tolist()
        assert len(seq) == 18 * cs.n_lines + 12 + 5
        body = seq[:18 * cs.n_lines]
        lines = [body[j * 18:(j + 1) * 18] for j in range(cs.n_lines)]
        prefixes, suffixes = [tuple(ln[:12]) for ln in lines], [tuple(ln[12:]) for ln in lines]
        assert all(grams(body, 12).count(p) == 1 for p in prefixes)  # once, in no other place of the body
        assert len(set(suffixes)) == cs.n_lines
        q = int(cs.query[i])
        assert seq[18 * cs.n_lines:] == lines[q - 1][:17]  # the prefix again, then the suffix (teacher forcing)
        assert int(cs.mask[i].sum()) == 6 and cs.targets[i].tolist() == lines[q - 1][12:]
        assert [seq[p + 1] for p in cs.pos[i].tolist()[:5]] == lines[q - 1][12:17]
        seen |= set(body)
    assert seen == set(range(char.vocab_size))  # drawn over the whole vocabulary, separators included
    again = build_copy_set(char, context=200, n_samples=15, max_lines=50, n_queries=5, seed=0, kind="paper")
    assert torch.equal(again.tokens, cs.tokens)


def test_paper_lines_keep_prefixes_unique_over_a_tiny_vocabulary():
    from grokscope.lm.copytest import paper_lines

    for seed in range(3):
        lines = paper_lines(3, 40, torch.Generator().manual_seed(seed))
        body = [t for p, s, e in lines for t in p + s + e]
        assert all(len(p) == 12 and len(s) == 6 and e == [] for p, s, e in lines)
        assert all(grams(body, 12).count(tuple(p)) == 1 for p, _, _ in lines)
        assert max(body) == 2 and min(body) == 0


def test_paper_variant_known_answers(char, bpe):
    """An exact copier (matching the last 12 tokens) scores 1.0; one that always answers the
    wrong token scores 0.0; greedy decoding of the copier agrees."""
    from grokscope.lm.copytest import evaluate_copy

    for tok in (char, bpe):
        cs = build_copy_set(tok, context=128, n_samples=20, max_lines=50, n_queries=5, seed=4, kind="paper")
        v = tok.vocab_size
        copier = oracle_logits(cs.tokens, v, k=12)
        res = score_copy(copier, cs)
        assert res["copy_acc"] == res["copy_token_acc"] == 1.0
        assert all(res[f"copy_acc_q{q}"] == 1.0 for q in cs.query_lines)
        assert evaluate_copy(lambda x, v=v: oracle_logits(x, v, k=12), cs, prefix="pcopy")["pcopy_acc"] == 1.0
        never = copier.roll(1, dims=-1)  # the copied token + 1: always wrong where copying is asked for
        res = score_copy(never, cs)
        assert res["copy_acc"] == res["copy_token_acc"] == 0.0
        assert evaluate_copy(lambda x, v=v: oracle_logits(x, v, k=12).roll(1, dims=-1), cs)["copy_acc"] == 0.0


def test_paper_variant_over_the_models_whole_vocabulary():
    """vocab= widens the ids the paper's lines draw from (a model with task.repeat_symbols extra
    ids). Over ~100 characters a one-token match is ambiguous: a copier that follows the last
    token's latest earlier occurrence gets few suffixes right; over 500 ids most; a 12-token
    copier gets every one either way."""
    import string

    tok = train_tokenizer("char", [string.printable], 0)
    v = tok.vocab_size
    narrow = build_copy_set(tok, context=128, n_samples=40, max_lines=50, n_queries=5, seed=4, kind="paper")
    wide = build_copy_set(tok, context=128, n_samples=40, max_lines=50, n_queries=5, seed=4, kind="paper", vocab=v + 400)
    assert int(narrow.tokens.max()) < v <= int(wide.tokens.max()) < v + 400
    for cs in (narrow, wide):
        assert score_copy(oracle_logits(cs.tokens, v + 400, k=12), cs)["copy_acc"] == 1.0
    one = [score_copy(oracle_logits(cs.tokens, v + 400, k=1), cs)["copy_acc"] for cs in (narrow, wide)]
    assert one[0] < 0.3 and one[1] > one[0] + 0.25, one


def test_paper_variant_needs_room_for_two_lines(char):
    with pytest.raises(ValueError, match="too short"):
        build_copy_set(char, context=52, n_samples=2, max_lines=50, n_queries=5, seed=0, kind="paper")
    build_copy_set(char, context=53, n_samples=2, max_lines=50, n_queries=5, seed=0, kind="paper")
    with pytest.raises(ValueError, match="kind"):
        build_copy_set(char, context=128, n_samples=2, max_lines=50, n_queries=5, seed=0, kind="nope")
