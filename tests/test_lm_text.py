"""Text data: R lazy-load reading, corpus split, cached tokenizers, packed windows, repeated spans."""

from __future__ import annotations

import gzip
import os
import platform
import random
import struct
import zlib
from pathlib import Path

import pytest
import torch

from grokscope.config import ConfigError, TextTask
from grokscope.lm import text
from grokscope.lm.rdata import read_lazyload, unserialize

torch.set_num_threads(1)


# ------------------------------------------------------------------- R's XDR format, written by hand
def _i(v: int) -> bytes:
    return struct.pack(">i", v)


def _chars(s: str | None) -> bytes:
    if s is None:
        return _i(9) + _i(-1)  # NA_character_
    b = s.encode()
    return _i(0x40009) + _i(len(b)) + b  # CHARSXP, ASCII flag in the levels bits


def _strsxp(items: list[str | None]) -> bytes:
    return _i(16) + _i(len(items)) + b"".join(_chars(s) for s in items)


def _named_list(items: dict[str, bytes], names_ref: bool = False) -> bytes:
    names_sym = _i(0x1FF) if names_ref else _i(1) + _chars("names")  # a reference to symbol 1, or the symbol
    return (_i(19 | 1 << 9) + _i(len(items)) + b"".join(items.values())
            + _i(2 | 1 << 10) + names_sym + _strsxp(list(items)) + _i(254))


HEADER = b"X\n" + _i(3) + _i(0x40201) + _i(0x30500) + _i(5) + b"UTF-8"


def write_lazyload(folder: Path, objects: dict[str, list[str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rdb, offsets = b"", {}
    for name, lines in objects.items():
        body = HEADER + _strsxp(lines)
        block = struct.pack(">I", len(body)) + zlib.compress(body)
        offsets[name] = (len(rdb), len(block))
        rdb += block
    variables = _named_list({k: _i(13) + _i(2) + _i(o) + _i(n) for k, (o, n) in offsets.items()})
    # the second `names` symbol is written as a reference, as R does
    index = HEADER + _i(19 | 1 << 9) + _i(2) + variables + _i(254) + _i(2 | 1 << 10) + _i(0x1FF) + _strsxp(
        ["variables", "references"]) + _i(254)
    (folder / "Rdata.rdb").write_bytes(rdb)
    (folder / "Rdata.rdx").write_bytes(gzip.compress(index))


def test_unserialize_vectors_and_na():
    obj = unserialize(HEADER + _strsxp(["EMMA", None, "By Jane Austen"]))
    assert list(obj) == ["EMMA", None, "By Jane Austen"]
    ints = unserialize(HEADER + _i(13) + _i(3) + _i(1) + _i(-(2 ** 31)) + _i(7))
    assert list(ints) == [1, None, 7]


def test_janeaustenr_layout_is_read(tmp_path, monkeypatch):
    books = {name: [name.upper(), "", f"first line of {name}", "second line"] for name in text.AUSTEN_BOOKS}
    write_lazyload(tmp_path / "data", books)
    assert {k: list(v) for k, v in read_lazyload(tmp_path / "data").items()} == books
    monkeypatch.setenv("GROKSCOPE_JANEAUSTENR", str(tmp_path / "data"))
    docs = text.austen_books()
    assert list(docs) == list(text.AUSTEN_BOOKS)
    assert docs["emma"] == "EMMA\n\nfirst line of emma\nsecond line\n"


def test_missing_janeaustenr_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GROKSCOPE_JANEAUSTENR", str(tmp_path / "nothing"))
    monkeypatch.setattr(text, "R_LIB_DIRS", ())
    for var in ("R_LIBS", "R_LIBS_USER", "R_LIBS_SITE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="apt-get install r-cran-janeaustenr"):
        text.austen_books()


# ------------------------------------------------------------------- corpus, tokenizer, cache
def corpus(tmp: Path) -> Path:
    rng = random.Random(0)
    words = "the lord said unto moses and elizabeth bennet replied that mr darcy was proud".split()
    folder = tmp / "corpus"
    folder.mkdir()
    for name in ("one", "two", "three"):
        (folder / f"{name}.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(10))
                                                      for _ in range(80)) + "\n")
    return folder


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_prepare_packs_and_caches(tmp_path, kind):
    folder = corpus(tmp_path)
    task = TextTask(corpus=str(folder), tokenizer=kind, vocab_size=300, cache_dir=str(tmp_path / "cache"),
                    val_book="two")
    data = text.prepare(task)
    docs = text.load_corpus(str(folder))
    train_docs = [docs["one"], docs["three"]]
    assert data.tokenizer.decode(list(map(int, data.train))) == "".join(d + "\n" for d in train_docs)
    assert data.tokenizer.decode(list(map(int, data.val))) == docs["two"] + "\n"  # a whole held-out document
    assert data.val_name == "two" and data.train.dtype.name == "uint16"
    assert str(data.folder).startswith(str(tmp_path / "cache"))
    stamp = os.stat(data.folder / "meta.json").st_mtime_ns
    again = text.prepare(task)
    assert again.folder == data.folder and os.stat(again.folder / "meta.json").st_mtime_ns == stamp
    other = text.prepare(task.model_copy(update={"val_book": "one"}))
    assert other.folder != data.folder
    if kind == "bpe":
        assert data.vocab_size <= 300
        assert len(data.train) < len("".join(train_docs)) / 1.5  # merges compress English text
    else:
        assert set("0123456789abcdef\n") <= set(data.tokenizer._chars)


def test_char_vocabulary_covers_validation_only_characters(tmp_path):
    folder = corpus(tmp_path)
    (folder / "two.txt").write_text("Zoe's café: QUITE new!\n")  # none of Z, Q, U, I, T, E, ', :, é, ! is in training
    task = TextTask(corpus=str(folder), tokenizer="char", cache_dir=str(tmp_path / "cache"), val_book="two")
    data = text.prepare(task)
    assert data.tokenizer.decode(list(map(int, data.val))) == "Zoe's café: QUITE new!\n\n"
    # a corpus whose validation characters all occur in training keeps the training-only vocabulary
    (folder / "two.txt").write_text("the lord said\n")
    same = text.prepare(task)
    docs = text.load_corpus(str(folder))
    train_only = text.train_tokenizer("char", [docs["one"], docs["three"]], 300)
    assert same.tokenizer._chars == train_only._chars


def test_unknown_val_book_and_corpus(tmp_path):
    folder = corpus(tmp_path)
    with pytest.raises(ConfigError, match="val_book"):
        text.prepare(TextTask(corpus=str(folder), tokenizer="char", cache_dir=str(tmp_path), val_book="nope"))
    with pytest.raises(ConfigError, match="task.corpus"):
        text.load_corpus(str(tmp_path / "missing"))


def test_windows_are_slices_and_deterministic():
    stream = torch.randint(0, 1000, (5000,), generator=torch.Generator().manual_seed(0)).numpy().astype("uint16")
    w1 = text.sample_windows(stream, 6, 33, torch.Generator().manual_seed(4))
    w2 = text.sample_windows(stream, 6, 33, torch.Generator().manual_seed(4))
    assert torch.equal(w1, w2) and w1.shape == (6, 33) and w1.dtype == torch.int64
    s = stream.tolist()
    for row in w1.tolist():
        assert any(s[i:i + 33] == row for i in range(len(s) - 33))


def test_repeat_spans_copy_an_earlier_span():
    windows = torch.randint(0, 10_000, (40, 64), generator=torch.Generator().manual_seed(0))
    assert torch.equal(text.repeat_spans(windows, 0.0, torch.Generator().manual_seed(1)), windows)
    out = text.repeat_spans(windows, 1.0, torch.Generator().manual_seed(1))
    changed = 0
    for orig, new in zip(windows, out, strict=True):
        diff = torch.nonzero(orig != new).flatten()
        if len(diff) == 0:
            continue
        changed += 1
        lo, hi = int(diff[0]), int(diff[-1]) + 1
        span = new[lo:hi].tolist()
        # the changed stretch is a copy of an earlier stretch of the window (found in the original)
        o = orig.tolist()
        assert any(o[a:a + len(span)] == span for a in range(0, lo - len(span) + 1))
    assert changed >= 35  # span copies that overwrite identical tokens are vanishingly rare here


def test_repeat_max_len_bounds_the_span():
    windows = torch.randint(0, 10_000, (200, 128), generator=torch.Generator().manual_seed(0))
    for max_len, lo_hi in ((None, (8, 32)), (64, (8, 64)), (500, (8, 64))):  # never more than half the window
        out = text.repeat_spans(windows, 1.0, torch.Generator().manual_seed(1), max_len)
        lengths = [int(d[-1]) - int(d[0]) + 1 for d in (torch.nonzero(o != w).flatten() for o, w in zip(out, windows, strict=True))
                   if len(d)]
        assert lo_hi[0] <= min(lengths) and max(lengths) <= lo_hi[1]
        assert max(lengths) > lo_hi[1] - 8  # the whole range is drawn
    # the default is the old behaviour: resumed and reproduced runs draw the same windows
    assert torch.equal(text.repeat_spans(windows, 1.0, torch.Generator().manual_seed(1)),
                       text.repeat_spans(windows, 1.0, torch.Generator().manual_seed(1), None))


@pytest.mark.slow
def test_default_corpus_from_the_registries():
    docs = text.load_corpus("default")
    kjv = [k for k in docs if k.startswith("kjv_")]
    assert len(kjv) == 66 and docs["kjv_genesis"].splitlines()[5].startswith("In the beginning God created")
    assert all(b in docs for b in text.AUSTEN_BOOKS)
    assert docs["emma"].startswith("EMMA") and docs["emma"].count("\n") == 16235


def test_random_repeated_spans_write_the_same_random_ids_twice():
    # "text" ids below 100; random spans draw from 5,000 ids, so almost all of their ids are >= 100
    windows = torch.randint(0, 100, (60, 128), generator=torch.Generator().manual_seed(0))
    out = text.repeat_spans(windows, 1.0, torch.Generator().manual_seed(1), 32, random_frac=1.0, n_ids=5000)
    assert out.dtype == windows.dtype and int(out.max()) < 5000
    lengths = []
    for orig, new in zip(windows.tolist(), out.tolist(), strict=True):
        changed = {p for p in range(128) if orig[p] != new[p]}
        assert changed, "every window gets a random span"
        src = min(changed)
        found = None
        for length in range(8, 33):  # a source stretch and a later, identical copy cover every change
            for dst in range(src + length, 128 - length + 1):
                cover = set(range(src, src + length)) | set(range(dst, dst + length))
                if new[src:src + length] == new[dst:dst + length] and changed <= cover:
                    found = (length, dst)
                    break
            if found:
                break
        assert found is not None
        length = found[0]
        lengths.append(length)
        # the span is random ids, not the window's text (text ids are < 100)
        assert sum(t >= 100 for t in new[src:src + length]) >= 0.8 * length  # 2% of random ids are < 100
    assert min(lengths) <= 10 and max(lengths) >= 28  # span lengths cover 8-32


def test_random_share_and_the_old_draws():
    windows = torch.randint(0, 100, (400, 128), generator=torch.Generator().manual_seed(0))
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    # random_frac = 0 draws exactly what the function drew before the option existed
    assert torch.equal(text.repeat_spans(windows, 1.0, g(), 64), text.repeat_spans(windows, 1.0, g(), 64, 0.0, 5000))
    half = text.repeat_spans(windows, 1.0, g(), 64, random_frac=0.5, n_ids=5000)
    n_random = int((half >= 100).any(dim=1).sum())
    assert 150 <= n_random <= 250  # about half of the 400 repeated spans are random
    # the other windows copy their own text, as before
    for orig, new in zip(windows, half, strict=True):
        if (new >= 100).any():
            continue
        diff = torch.nonzero(orig != new).flatten()
        if len(diff):
            lo, hi = int(diff[0]), int(diff[-1]) + 1
            o = orig.tolist()
            assert any(o[a:a + hi - lo] == new[lo:hi].tolist() for a in range(0, lo - (hi - lo) + 1))
    with pytest.raises(ValueError, match="n_ids"):
        text.repeat_spans(windows, 1.0, g(), 64, random_frac=0.5)


def test_repeat_random_config_checks():
    from pydantic import ValidationError

    from grokscope import config as C

    base = {"name": "text", "repeat_frac": 1.0}
    t = C.TextTask(**base, repeat_random=0.5, repeat_symbols=400)
    assert t.repeat_random == 0.5 and t.repeat_symbols == 400
    assert C.TextTask().repeat_random == 0.0 and C.TextTask().repeat_symbols == 0  # off by default
    for bad in ({"repeat_random": 1.5}, {"repeat_random": -0.1}, {"repeat_symbols": -1}, {"repeat_symbols": 70000},
                {"repeat_random": 0.5, "repeat_frac": 0.0}, {"repeat_symbols": 10}):
        with pytest.raises(ValidationError):
            C.TextTask(**{**base, **bad})


# ------------------------------------------------------------------- the standard library as a corpus
def fake_stdlib(root: Path) -> Path:
    """A standard-library-shaped folder: sources, test folders, site-packages, a non-ASCII comment."""
    files = {
        "os.py": "import sys\n\ndef walk(top):\n    return top\n",
        "json/__init__.py": "from .decoder import JSONDecoder\n# caf\u00e9 \u2019quoted\u2019\n",
        "json/decoder.py": "class JSONDecoder:\n    def decode(self, s):\n        return s\r\n",
        "test/test_os.py": "import os\n",
        "unittest/test/test_case.py": "x = 1\n",
        "lib2to3/tests/data/fixers.py": "y = 2\n",
        "idlelib/idle_test/htest.py": "z = 3\n",
        "site-packages/thirdparty.py": "w = 4\n",
        "__pycache__/os.cpython-311.py": "junk\n",
        "README.txt": "not python\n",
    }
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(body.encode())
    return root


def test_stdlib_sources_skip_tests_and_are_ascii(tmp_path):
    root = fake_stdlib(tmp_path / "lib")
    docs = text.stdlib_sources(root)
    assert list(docs) == ["stdlib/json/__init__.py", "stdlib/json/decoder.py", "stdlib/os.py"]
    assert docs["stdlib/json/__init__.py"].endswith("# caf\\xe9 \\u2019quoted\\u2019\n")  # kept as ASCII escapes
    assert all(t.isascii() for t in docs.values()) and "\r" not in docs["stdlib/json/decoder.py"]
    assert text.stdlib_sources(root) == docs  # deterministic
    with pytest.raises(ConfigError, match="GROKSCOPE_STDLIB"):
        text.stdlib_sources(tmp_path / "empty")


def test_stdlib_hash_follows_the_file_set(tmp_path):
    root = fake_stdlib(tmp_path / "lib")
    before = text.corpus_sha256(text.stdlib_sources(root))
    assert text.corpus_sha256(text.stdlib_sources(root)) == before
    (root / "test" / "test_new.py").write_text("ignored = 1\n")  # a new test changes nothing
    assert text.corpus_sha256(text.stdlib_sources(root)) == before
    (root / "abc.py").write_text("class ABC:\n    pass\n")
    added = text.corpus_sha256(text.stdlib_sources(root))
    assert added != before
    (root / "abc.py").rename(root / "abd.py")  # the same text under another name
    assert text.corpus_sha256(text.stdlib_sources(root)) not in (before, added)


def test_this_interpreters_stdlib_is_found_without_its_tests():
    root = text.stdlib_root()
    files = text.stdlib_files(root)
    rel = [f.relative_to(root).parts for f in files]
    assert len(files) > 200 and ("json", "decoder.py") in rel
    assert not any(set(p[:-1]) & {"test", "tests", "idle_test", "site-packages"} for p in rel)


def test_mixed_corpus_honours_the_shares_and_records_the_hash(tmp_path, monkeypatch):
    root = fake_stdlib(tmp_path / "lib")
    for i in range(40):  # enough code that the books part is the scarce one
        (root / f"mod{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x + {j}\n" for j in range(30)))
    monkeypatch.setenv("GROKSCOPE_STDLIB", str(root))
    books = corpus(tmp_path)
    spec = f"{books}+stdlib"
    for shares in ([0.5, 0.5], [0.2, 0.8]):
        task = TextTask(corpus=spec, corpus_shares=shares, tokenizer="char", cache_dir=str(tmp_path / "cache"),
                        val_book="two")
        data = text.prepare(task)
        parts = data.corpus["parts"]
        assert [p["corpus"] for p in parts] == [str(books), "stdlib"]
        for p, want in zip(parts, shares, strict=True):
            assert p["train_share"] == pytest.approx(want, abs=0.01)
        assert parts[0]["train_characters"] == sum(len(t) for k, t in text.load_corpus(str(books)).items() if k != "two")
        assert parts[1]["sha256"] == text.corpus_sha256(text.stdlib_sources(root))
        assert data.corpus["python"] == platform.python_version() and data.corpus["stdlib_root"] == str(root)
        assert data.val_name == "two" and data.corpus["shares"] == shares
        stream = data.tokenizer.decode(list(map(int, data.train)))
        assert "def f" in stream and "return x +" in stream
        again = text.prepare(task)  # deterministic: the same texts, so the same cache folder
        assert again.folder == data.folder and again.corpus == data.corpus
    unmixed = text.prepare(TextTask(corpus=spec, tokenizer="char", cache_dir=str(tmp_path / "cache"), val_book="two"))
    assert unmixed.corpus["parts"][1]["train_documents"] == 43  # everything, no shares


def test_mix_documents_cuts_at_line_ends():
    parts = [{"a": "x" * 9 + "\n"}, {f"d{i}": "abc\n" * 10 for i in range(10)}]
    out = text.mix_documents(parts, [0.25, 0.75])
    assert out[0] == ["x" * 9 + "\n"]  # the scarce part whole: 10 characters are 25%
    assert sum(map(len, out[1])) == 28 and all(t.endswith("\n") for t in out[1])  # 30 wanted, cut at a line end
    assert text.mix_documents(parts, [0.25, 0.75]) == out
    assert text.mix_documents(parts, [1.0, 0.0]) == [["x" * 9 + "\n"], []]


def test_corpus_shares_config_checks():
    with pytest.raises(ValueError, match="one share per part"):
        TextTask(corpus="default+stdlib", corpus_shares=[1.0])
    with pytest.raises(ValueError, match="sum to 1"):
        TextTask(corpus="default+stdlib", corpus_shares=[0.5, 0.6])
    assert TextTask(corpus="default+stdlib", corpus_shares=[0.3, 0.7]).corpus_shares == [0.3, 0.7]
