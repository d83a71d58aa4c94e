"""Source files as binary streams of their content: decompressed, checked, without a BOM.

Compressed files (gzip ``.gz``, zstd ``.zst``, bzip2 ``.bz2``, xz ``.xz``) are decompressed as they
are read. Each format checks its data only as it ends (gzip's CRC and length come after the last
byte of content, zstd's checksum after its last block), so a damaged file shows itself only once
records have been read from it: the stream raises ``EOFError`` when the file ends before its
compressed stream does (truncated) and another read error when the check fails (corrupt), and the
reader of the file then rejects every record it took from it (``damage_reason``). A zstd file may
hold several frames (``zstd -T``, or files joined with ``cat``); all of them are read.

A UTF-8 byte-order mark at the start of the content is skipped, whatever the format.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import zstandard

COMPRESSED = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bzip2", ".xz": "xz"}
BOM = b"\xef\xbb\xbf"
# compressed bytes fed to the zstd decoder at a time: small enough that a decompression bomb
# (zstd expands a block by at most ~32,000x) cannot produce more than ~64 MiB in one step
_ZSTD_INPUT = 2048
_OPENERS = {"gzip": gzip.open, "bzip2": bz2.open, "xz": lzma.open}

# What a damaged file raises while it is read: truncated or corrupt archives, corrupt Parquet.
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, ValueError, zlib.error,
                                                 lzma.LZMAError, zstandard.ZstdError)


def compression(path: Path) -> str | None:
    return COMPRESSED.get(path.suffix.lower())


def base_name(path: Path) -> str:
    """The file name without its compression suffix: ``wiki_00.gz`` -> ``wiki_00``."""
    name = path.name
    for suffix in COMPRESSED:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def damage_reason(error: BaseException) -> str:
    """Why a compressed file that failed while being read is rejected, records and all."""
    kind = "truncated" if isinstance(error, EOFError) else "corrupt"
    return f"{kind} compressed file: {type(error).__name__}: {error}"


def open_bytes(path: Path, skip_bom: bool = True) -> IO[bytes]:
    """A binary stream of the file's decompressed content, past a leading UTF-8 BOM."""
    kind = compression(path)
    if kind == "zstd":
        f: IO[bytes] = io.BufferedReader(_ChunkReader(_zstd_chunks(path)))
    elif kind is not None:
        f = _OPENERS[kind](path, "rb")
    else:
        f = open(path, "rb")  # noqa: SIM115 - the caller closes it
    if skip_bom and f.peek(len(BOM))[: len(BOM)] == BOM:  # type: ignore[attr-defined]
        f.read(len(BOM))
    return f


def _zstd_chunks(path: Path) -> Iterator[bytes]:
    """The decompressed content of every zstd frame of the file; ``EOFError`` if it ends inside
    a frame (``ZstdDecompressor.stream_reader`` takes that for a normal end of data)."""
    with open(path, "rb") as raw:
        dobj = None  # the decoder of the frame being read; None between frames
        while data := raw.read(_ZSTD_INPUT):
            while data:
                if dobj is None:
                    dobj = zstandard.ZstdDecompressor().decompressobj()
                out = dobj.decompress(data)
                if out:
                    yield out
                if not dobj.eof:
                    break
                data, dobj = dobj.unused_data, None  # the next frame starts here
        if dobj is not None:
            raise EOFError(f"the file ends inside a zstd frame, after {raw.tell()} bytes")


class _ChunkReader(io.RawIOBase):
    """A raw stream over an iterator of byte chunks (closing it closes the iterator)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self._buf:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buf = memoryview(chunk)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        super().close()
