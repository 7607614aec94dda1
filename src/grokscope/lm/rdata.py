"""Read R's lazy-load data databases (``data/Rdata.rdx`` + ``Rdata.rdb``) without R.

An installed R package keeps its data sets in a lazy-load database: ``Rdata.rdx`` is a gzipped
serialized list whose ``variables`` element maps each object name to (offset, length) in
``Rdata.rdb``, and each block there is a 4-byte big-endian length followed by a zlib stream of one
serialized object. This module reads the subset of R's XDR serialization format those files use
(character, integer, double and logical vectors, lists, pairlists of attributes, symbols and
references), enough for Debian's ``r-cran-janeaustenr`` (the copy LM's offline corpus).
``pyreadr`` cannot read the index (it skips lists), so the format is read here.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Any

NILVALUE, SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 254, 1, 2, 9, 10, 13, 14, 16, 19
REFSXP = 255
NA_INT = -(2**31)


class RVector(list):
    """An R vector as a Python list, with its attributes (``names`` etc.) in ``.attrs``."""

    attrs: dict[str, Any]


class _Reader:
    def __init__(self, data: bytes):
        if data[:2] != b"X\n":
            raise ValueError("not an R XDR serialization stream (expected 'X\\n')")
        self.buf, self.pos, self.refs = data, 2, []
        version = self.int()
        self.int()  # writer's R version
        self.int()  # minimal reader version
        if version == 3:
            n = self.int()  # length of the native encoding name, which is skipped
            self.pos += n
        elif version != 2:
            raise ValueError(f"R serialization version {version} is not supported")

    def int(self) -> int:
        (v,) = struct.unpack_from(">i", self.buf, self.pos)
        self.pos += 4
        return v

    def item(self) -> Any:
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind == NILVALUE:
            return None
        if kind == REFSXP:
            idx = flags >> 8 or self.int()
            return self.refs[idx - 1]
        if kind == SYMSXP:
            name = self.item()
            self.refs.append(name)
            return name
        if kind == CHARSXP:
            n = self.int()
            if n == -1:
                return None  # NA_character_
            s = self.buf[self.pos:self.pos + n].decode("utf-8", errors="replace")
            self.pos += n
            return s
        if kind == LISTSXP:  # a pairlist: returned as a dict tag -> value
            out: dict[str, Any] = {}
            while kind == LISTSXP:
                if has_attr:
                    self.item()
                tag = self.item() if has_tag else str(len(out))
                out[tag] = self.item()
                flags = self.int()
                kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
            if kind != NILVALUE:
                raise ValueError(f"pairlist ended with SEXP type {kind}")
            return out
        if kind in (LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP):
            n = self.int()
            if kind in (LGLSXP, INTSXP):
                vals = list(struct.unpack_from(f">{n}i", self.buf, self.pos))
                vals = [None if v == NA_INT else v for v in vals]
                self.pos += 4 * n
            elif kind == REALSXP:
                vals = list(struct.unpack_from(f">{n}d", self.buf, self.pos))
                self.pos += 8 * n
            else:
                vals = [self.item() for _ in range(n)]
            vec = RVector(vals)
            vec.attrs = self.item() if has_attr else {}
            return vec
        raise ValueError(f"R object of SEXP type {kind} is not supported by this reader")


def unserialize(data: bytes) -> Any:
    """One R object from an (uncompressed) XDR serialization stream."""
    return _Reader(data).item()


def named(vec: RVector) -> dict[str, Any]:
    """An R list with names as a dict."""
    return dict(zip(vec.attrs.get("names", []), vec, strict=True))


def read_lazyload(folder: str | Path) -> dict[str, Any]:
    """Every object of a lazy-load database ``folder/Rdata.{rdx,rdb}`` by name."""
    folder = Path(folder)
    index = named(unserialize(gzip.decompress((folder / "Rdata.rdx").read_bytes())))
    variables = named(index["variables"])
    rdb = (folder / "Rdata.rdb").read_bytes()
    out = {}
    for name, (offset, length) in variables.items():
        block = rdb[offset:offset + length]
        out[name] = unserialize(zlib.decompress(block[4:]))
    return out
