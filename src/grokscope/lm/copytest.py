"""The context-copying test of Lv et al. 2024 (docs/measures.md, 'Copy test'), scaled to the model's context.

Three variants share one layout and one scorer: a sample is a run of lines, each a 12-token
prefix and a 6-token suffix, with prefixes unique within the sample; then the prefix of line i
is given again and the model must continue with that line's suffix. A sample is correct when
the whole suffix is reproduced by greedy decoding; with teacher forcing that is the same as the
argmax being right at every suffix token (greedy decoding only feeds back tokens that were
right), so one forward pass scores a sample. Per-token accuracy (the share of suffix tokens
greedy decoding produces correctly) differs: after a sample's first wrong token greedy decoding
feeds back its own token, so those samples are decoded on (`greedy_suffix`), one forward pass
per later suffix token. Reported: exact-match accuracy, per-token accuracy and the suffix's
(teacher-forced) cross-entropy, overall and by query line.

- ``paper`` (the headline, metrics keys ``pcopy_*``): the paper's construction. Each line is 18
  token ids drawn uniformly from the whole vocabulary (12 prefix + 6 suffix), and the lines are
  concatenated with nothing between them, as random token subsequences are in the paper. Every
  prefix occurs exactly once as a 12-token run anywhere in the sample's lines (not only among the
  prefixes: also not across a line boundary), so the continuation asked for is unambiguous, and
  suffixes are distinct.
- ``hex`` (``copy_*``): lines of random lowercase hexadecimal written as text, each ended by a
  newline; 12 + 6 characters, so 12 + 6 tokens with the character tokenizer. Suffixes are
  unique too. With BPE a line whose prefix does not end on a token boundary (a token would cross
  the prefix/suffix boundary) is resampled, so that the query is exactly the prefix's tokens.
  Lines are encoded one at a time and joined, which for the byte-level BPE equals encoding the
  whole text (its pre-tokenizer splits before each newline and at letter/digit runs).
- ``ids`` (``rcopy_*``): 12 + 6 random ids (never the newline's) and the newline token.

Scaling: the paper fits 50 lines in a 1024-token context; here a set uses as many lines (up to
`copy_lines`) as fit in the context with the query. Query lines are spread evenly, `copy_queries`
of them (the paper: i = 5, 10, ..., 50); sample j asks for query line j mod the number of queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

PREFIX_LEN, SUFFIX_LEN = 12, 6  # the paper's 12-token prefixes and 6-token suffixes
PREFIX_CHARS, SUFFIX_CHARS = PREFIX_LEN, SUFFIX_LEN  # the hex variant's, one token per character with chars
HEX = "0123456789abcdef"
KINDS = ("paper", "hex", "ids")

# A line: (prefix ids, suffix ids, separator ids after the suffix; empty in the paper's variant).
Line = tuple[list[int], list[int], list[int]]


@dataclass
class CopySet:
    """Padded copy-test inputs and where the suffix is read.

    tokens [n, L] (right-padded with `pad`; causal attention never sees the padding), and per
    sample the positions whose logits predict the suffix tokens: pos [n, S], targets [n, S],
    mask [n, S] (S = the longest suffix in tokens). query [n] is the 1-based query line.
    """

    tokens: Tensor
    pos: Tensor
    targets: Tensor
    mask: Tensor
    query: Tensor
    query_lines: list[int]
    n_lines: int


def _hex(gen: torch.Generator, n: int) -> str:
    return "".join(HEX[i] for i in torch.randint(0, 16, (n,), generator=gen).tolist())


def _hex_lines(tok, n_lines: int, gen: torch.Generator) -> list[Line]:
    """n_lines of (prefix ids, suffix ids, [newline id]) with unique prefixes and suffixes."""
    lines: list[Line] = []
    seen_p: set[str] = set()
    seen_s: set[str] = set()
    while len(lines) < n_lines:
        p, s = _hex(gen, PREFIX_CHARS), _hex(gen, SUFFIX_CHARS)
        if p in seen_p or s in seen_s:
            continue
        ids = tok.encode(p + s + "\n")
        pids = tok.encode(p)
        if ids[:len(pids)] != pids:  # a token crosses the prefix/suffix boundary: resample
            continue
        seen_p.add(p)
        seen_s.add(s)
        rest = ids[len(pids):]
        lines.append((pids, rest[:-1], rest[-1:]))
    return lines


def _random_lines(vocab: int, newline: int, n_lines: int, gen: torch.Generator) -> list[Line]:
    lines: list[Line] = []
    seen_p: set[tuple[int, ...]] = set()
    seen_s: set[tuple[int, ...]] = set()
    while len(lines) < n_lines:
        ids = torch.randint(0, vocab - 1, (PREFIX_CHARS + SUFFIX_CHARS,), generator=gen)
        ids = ids + (ids >= newline).long()  # any id but the newline's
        p, s = tuple(ids[:PREFIX_CHARS].tolist()), tuple(ids[PREFIX_CHARS:].tolist())
        if p in seen_p or s in seen_s:
            continue
        seen_p.add(p)
        seen_s.add(s)
        lines.append((list(p), list(s), [newline]))
    return lines


def paper_lines(vocab: int, n_lines: int, gen: torch.Generator, max_tries: int = 100_000) -> list[Line]:
    """The paper's lines: PREFIX_LEN + SUFFIX_LEN ids uniform over [0, vocab), concatenated.

    A candidate line is kept only if, with it appended, every prefix still occurs exactly once as
    a PREFIX_LEN-token run in the concatenation (so no prefix recurs inside another line or
    across a line boundary) and its suffix differs from the others.
    """
    if vocab < 2:
        raise ValueError("the copy test needs a vocabulary of at least 2 ids")
    k, width = PREFIX_LEN, PREFIX_LEN + SUFFIX_LEN
    lines: list[Line] = []
    body: list[int] = []
    grams: dict[tuple[int, ...], int] = {}  # every k-run of `body` and how often it occurs
    prefixes: set[tuple[int, ...]] = set()
    suffixes: set[tuple[int, ...]] = set()
    for _ in range(max_tries):
        if len(lines) == n_lines:
            return lines
        ids = torch.randint(0, vocab, (width,), generator=gen).tolist()
        p, s = tuple(ids[:k]), tuple(ids[k:])
        ext = body[-(k - 1):] + ids if body else ids
        new = [tuple(ext[i:i + k]) for i in range(len(ext) - k + 1)]  # the k-runs the line adds
        if s in suffixes or p in grams or new.count(p) != 1 or any(g in prefixes for g in new):
            continue
        lines.append((list(p), list(s), []))
        body += ids
        prefixes.add(p)
        suffixes.add(s)
        for g in new:
            grams[g] = grams.get(g, 0) + 1
    if len(lines) == n_lines:
        return lines
    raise ValueError(f"could not draw {n_lines} copy-test lines with unique prefixes over {vocab} ids")


def query_lines(n_lines: int, n_queries: int) -> list[int]:
    """1-based line indices spread evenly, ending at the last line (the paper: 5, 10, ..., 50)."""
    k = min(n_queries, n_lines)
    return sorted({max(1, round(n_lines * (j + 1) / k)) for j in range(k)})


def build_copy_set(tok, context: int, n_samples: int, max_lines: int, n_queries: int, seed: int,
                   random_ids: bool = False, kind: str | None = None, vocab: int | None = None) -> CopySet:
    """A copy-test set for a tokenizer (`encode(str) -> ids`, `vocab_size`), fitted to `context`.

    kind: "paper", "hex" or "ids" (see the module docstring); default "hex", or "ids" with
    random_ids=True (the older spelling). vocab: the ids the paper's lines draw from (default the
    tokenizer's); a model with ids beyond the tokenizer's may be tested over all of them.
    """
    kind = kind or ("ids" if random_ids else "hex")
    if kind not in KINDS:
        raise ValueError(f"copy-test kind {kind!r} is not one of {', '.join(KINDS)}")
    gen = torch.Generator().manual_seed(seed)
    samples: list[list[Line]] = []
    for _ in range(n_samples):
        if kind == "paper":
            samples.append(paper_lines(vocab or tok.vocab_size, max_lines, gen))
        elif kind == "ids":
            samples.append(_random_lines(tok.vocab_size, tok.encode("\n")[0], max_lines, gen))
        else:
            samples.append(_hex_lines(tok, max_lines, gen))
    # As many lines as fit for every sample: its lines, then the longest line less one token (the
    # query: a prefix and its suffix but the last token; for hex and ids lines that leaves one
    # token spare, as the line counts of existing runs always had).
    n_lines = max_lines
    while n_lines > 1:
        fits = all(sum(len(p) + len(s) + len(e) for p, s, e in smp[:n_lines])
                   + max(len(p) + len(s) + len(e) for p, s, e in smp[:n_lines]) - 1 <= context for smp in samples)
        if fits:
            break
        n_lines -= 1
    if n_lines < 2:
        raise ValueError(f"context {context} is too short for the copy test (two lines and a query)")
    qlines = query_lines(n_lines, n_queries)
    rows, pos, tgt, query = [], [], [], []
    for j, smp in enumerate(samples):
        q = qlines[j % len(qlines)]
        body = [t for p, s, e in smp[:n_lines] for t in p + s + e]
        qp, suffix, _ = smp[q - 1]  # the separator after the suffix is not asked for
        seq = body + qp + suffix[:-1]
        start = len(body) + len(qp) - 1  # the logit at this position predicts suffix[0]
        rows.append(seq)
        pos.append(list(range(start, start + len(suffix))))
        tgt.append(suffix)
        query.append(q)
    length, n_suf = max(map(len, rows)), max(map(len, tgt))
    tokens = torch.zeros(n_samples, length, dtype=torch.long)
    p_t = torch.zeros(n_samples, n_suf, dtype=torch.long)
    t_t = torch.zeros(n_samples, n_suf, dtype=torch.long)
    mask = torch.zeros(n_samples, n_suf, dtype=torch.bool)
    for i, (r, p, t) in enumerate(zip(rows, pos, tgt, strict=True)):
        tokens[i, :len(r)] = torch.tensor(r)
        p_t[i, :len(p)] = torch.tensor(p)
        t_t[i, :len(t)] = torch.tensor(t)
        mask[i, :len(t)] = True
    return CopySet(tokens, p_t, t_t, mask, torch.tensor(query), qlines, n_lines)


def score_copy(logits: Tensor, cs: CopySet, greedy: Tensor | None = None) -> dict[str, float]:
    """Exact-match and per-token accuracy and suffix loss from logits [n, L, V] of cs.tokens.

    greedy [n, S]: the suffix tokens greedy decoding produced (`greedy_suffix`); without it the
    teacher-forced argmax stands in (the same exact match, a higher per-token accuracy).
    Keys: copy_acc, copy_token_acc, copy_loss, and copy_acc_q{LINE} per query line.
    """
    idx = cs.pos[..., None].expand(-1, -1, logits.shape[-1])
    lg = logits.gather(1, idx).double()  # [n, S, V]
    pred = lg.argmax(-1) if greedy is None else greedy
    right = (pred == cs.targets) | ~cs.mask
    exact = right.all(-1).double()  # [n]
    nll = lg.logsumexp(-1) - lg.gather(-1, cs.targets[..., None]).squeeze(-1)
    m = cs.mask.double()
    out = {
        "copy_acc": float(exact.mean()),
        "copy_token_acc": float(((pred == cs.targets).double() * m).sum() / m.sum()),
        "copy_loss": float((nll * m).sum() / m.sum()),
    }
    for q in cs.query_lines:
        sel = cs.query == q
        out[f"copy_acc_q{q}"] = float(exact[sel].mean()) if sel.any() else float("nan")
    return out


def _suffix_logits(model, tokens: Tensor, pos: Tensor, batch: int) -> Tensor:
    """model(tokens)'s logits at pos [n, S] only: [n, S, V], in batches."""
    parts = []
    for i in range(0, len(tokens), batch):
        lg = model(tokens[i:i + batch])
        parts.append(lg.gather(1, pos[i:i + batch, :, None].expand(-1, -1, lg.shape[-1])))
    return torch.cat(parts)


@torch.no_grad()
def greedy_suffix(model, cs: CopySet, first: Tensor, batch: int = 64) -> Tensor:
    """The suffix tokens [n, S] greedy decoding produces after each query.

    first [n, S] is the teacher-forced argmax: greedy decoding agrees with it up to and including
    a sample's first wrong token (until then it fed back the true tokens). From there its own
    tokens are written into the suffix's input positions (suffix token j is input pos[:, j] + 1),
    and position j is decoded again, for the samples whose tokens before j went wrong.
    """
    pred = first.clone()
    for j in range(1, pred.shape[1]):
        off = ((pred[:, :j] != cs.targets[:, :j]) & cs.mask[:, :j]).any(-1) & cs.mask[:, j]
        if not off.any():
            continue
        rows = off.nonzero().flatten()
        toks = cs.tokens[rows].clone()
        fed = cs.mask[rows, :j]
        r, c = fed.nonzero(as_tuple=True)
        toks[r, cs.pos[rows][r, c] + 1] = pred[rows][r, c]
        pred[rows, j] = _suffix_logits(model, toks, cs.pos[rows, j:j + 1], batch)[:, 0].argmax(-1)
    return pred


@torch.no_grad()
def evaluate_copy(model, cs: CopySet, batch: int = 64, prefix: str = "copy") -> dict[str, float]:
    """Run `model(tokens) -> logits` over the set in batches and score it, per-token accuracy by
    greedy decoding; keys renamed to `prefix`."""
    lg = _suffix_logits(model, cs.tokens, cs.pos, batch)
    greedy = greedy_suffix(model, cs, lg.argmax(-1), batch)
    # The suffix logits only ([n, S, V]); positions are then simply 0..S-1.
    gathered = CopySet(cs.tokens, torch.arange(cs.pos.shape[1]).expand_as(cs.pos), cs.targets, cs.mask,
                       cs.query, cs.query_lines, cs.n_lines)
    res = score_copy(lg, gathered, greedy)
    return {prefix + k[4:]: v for k, v in res.items()}
