"""Read documents out of source files, streaming, one record at a time.

Formats: plain text and Markdown (``.txt``, ``.md``: one document per line, or per file), JSON
lines and JSON arrays (``.jsonl``, ``.json``), CSV and TSV (with a header row), Parquet, and
wikiextractor ``<doc>`` files (detected by content). Each may be compressed: gzip (``.gz``), zstd
(``.zst``), bzip2 (``.bz2``) or xz (``.xz``). A leading UTF-8 byte-order mark is skipped.

Readers yield a ``Record`` per document and a ``Rejected`` per bad input, with the file, the line
and the reason: invalid UTF-8, NUL bytes, malformed JSON or CSV, JSON nested deeper than Python
parses, missing fields, a line or document over ``MAX_DOC_BYTES`` (in every format; it is skipped
as it streams past, never held whole), binary, empty or unreadable files, and files that hold no
document at all. A bad record never stops the rest of its file. A compressed file found truncated
or corrupt once read ends with a ``Damaged``: every record read from it is then void.
"""

from __future__ import annotations

import csv
import errno
import glob
import io
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ctxvec.config import IngestConfig
from ctxvec.errors import UserInputError
from ctxvec.ingest.csvrows import csv_records
from ctxvec.ingest.jsonarray import ArrayError, array_elements
from ctxvec.ingest.streams import READ_ERRORS, base_name, compression, damage_reason, open_bytes

_DOC_OPEN = re.compile(rb'^<doc id="([^"]*)" url="[^"]*" title="([^"]*)">\s*$')
_DOC_CLOSE = b"</doc>"
MAX_LINE_BYTES = 1 << 20  # the longest line of a line-based format
MAX_DOC_BYTES = MAX_LINE_BYTES  # the largest document of any format
MAX_ROW_BYTES = 4 * MAX_LINE_BYTES  # the largest CSV record, all its fields together
_SNIFF = 8192
_DRAIN = 1 << 20
TEXT_SUFFIXES = {".txt", ".md", ".text", ".markdown"}
NUL_REASON = "NUL byte in the text (binary data?)"

__all__ = ["READ_ERRORS", "Damaged", "Record", "Rejected", "SourceError", "base_name",
           "expand_sources", "open_bytes", "read_file"]


@dataclass(frozen=True)
class Record:
    doc_id: str | None  # None: derived from the cleaned content (stable across re-ingests)
    text: str
    title: str
    source: str
    line: int


@dataclass(frozen=True)
class Rejected:
    source: str
    line: int
    reason: str
    kind: str = "quarantined"  # quarantined (bad input) | filtered (policy) | duplicate | ...
    doc_id: str | None = None


@dataclass(frozen=True)
class Damaged(Rejected):
    """The file turned out truncated or corrupt: every record read from it is rejected."""


class SourceError(UserInputError):
    """A source path that names nothing readable."""


def expand_sources(sources: list[str]) -> list[Path]:
    """Files, directories (recursively, hidden entries skipped) and globs -> sorted unique files.

    A broken symlink or a symlink loop inside a folder is listed, so that reading it reports it;
    given as a source itself it is an error."""
    files: list[Path] = []
    for src in sources:
        p = Path(src).expanduser()
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files.extend(f for f in sorted(p.rglob("*")) if _listed(f) and not _hidden(f, p))
        elif p.is_symlink():
            raise SourceError(f"source {src!r} is {_broken_link(p)}")
        else:
            matched = [Path(m) for m in sorted(glob.glob(str(p), recursive=True))]
            matched = [m for m in matched if _listed(m)]
            if not matched:
                raise SourceError(f"source {src!r} matches no file")
            files.extend(matched)
    seen: set[Path] = set()
    unique = []
    for f in files:
        r = Path(os.path.realpath(f))  # unlike Path.resolve, never raises on a symlink loop
        if r not in seen:
            seen.add(r)
            unique.append(r)
    return unique


def _listed(f: Path) -> bool:
    return f.is_file() or (f.is_symlink() and not f.exists())


def _broken_link(p: Path) -> str:
    try:
        os.stat(p)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symlink loop"
    return f"a broken symlink (to {os.readlink(p)!r}, which does not exist)"


def _hidden(f: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in f.relative_to(root).parts)


def detect_format(path: Path, head: bytes) -> str | None:
    suffix = Path(base_name(path)).suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if head.startswith(b"<doc "):
        return "wikiextractor"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".tsv"):
        return suffix[1:]
    if suffix in TEXT_SUFFIXES:
        return "txt"
    return None


def _is_damage(path: Path, error: BaseException) -> bool:
    """A read error of a compressed file's content, not of the file system (which has an
    errno: a missing file, a symlink loop, a permission)."""
    return compression(path) is not None and not (
        isinstance(error, OSError) and error.errno is not None)


def read_file(path: Path, cfg: IngestConfig) -> Iterator[Record | Rejected]:
    """Every record of one file; file-level problems come back as one ``Rejected``."""
    src = str(path)
    try:
        with open_bytes(path) as f:
            head = f.read(_SNIFF)
    except READ_ERRORS as e:
        yield (Damaged(src, 0, damage_reason(e)) if _is_damage(path, e)
               else Rejected(src, 0, f"unreadable file: {e}"))
        return
    if not head:
        yield Rejected(src, 0, "empty file")
        return
    fmt = detect_format(path, head)
    if fmt is None:
        yield Rejected(src, 0, "unsupported format (expected .txt, .md, .jsonl, .json, .csv, "
                       ".tsv, .parquet or wikiextractor <doc> files, optionally .gz, .zst, "
                       ".bz2 or .xz)")
        return
    if fmt != "parquet" and b"\x00" in head:
        yield Rejected(src, 0, "binary file (NUL bytes in a text format)")
        return
    reader = {
        "txt": _read_txt, "jsonl": _read_json, "csv": _read_csv, "tsv": _read_csv,
        "parquet": _read_parquet, "wikiextractor": _read_wikiextractor,
    }[fmt]
    line, n = 0, 0
    try:
        for item in reader(path, src, cfg):
            line, n = item.line, n + 1
            yield item
    except READ_ERRORS as e:
        if _is_damage(path, e):
            yield Damaged(src, line, damage_reason(e))
        else:
            yield Rejected(src, line, f"unreadable after line {line}: {type(e).__name__}: {e}")
        return
    if n == 0:
        yield Rejected(src, 0, "no documents in the file (only white space, or a header)")


def _too_long(size: int) -> str:
    return f"document longer than {MAX_DOC_BYTES} bytes ({size} bytes)"


def _decode(raw: bytes, src: str, lineno: int) -> str | Rejected:
    if len(raw) > MAX_LINE_BYTES:
        return Rejected(src, lineno, f"line longer than {MAX_LINE_BYTES} bytes")
    if b"\x00" in raw:
        return Rejected(src, lineno, NUL_REASON)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Rejected(src, lineno, f"invalid UTF-8 at byte {e.start}")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Numbered raw lines; a line over the limit is returned truncated (and then rejected)."""
    with open_bytes(path) as f:
        lineno = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            lineno += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while (rest := f.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                    pass  # skip the remainder of the over-long line without holding it
            yield lineno, raw


def _read_txt(path: Path, src: str, cfg: IngestConfig) -> Iterator[Record | Rejected]:
    if cfg.txt_mode == "file":
        with open_bytes(path) as f:
            raw = f.read(MAX_DOC_BYTES + 1)
            # the rest of an over-long file is read (to its end, where a compressed one is
            # checked) but not held
            size = len(raw) + sum(len(c) for c in iter(lambda: f.read(_DRAIN), b""))
        if size > MAX_DOC_BYTES:
            yield Rejected(src, 1, _too_long(size))
            return
        text = _decode(raw, src, 1)
        if isinstance(text, Rejected):
            yield text
            return
        stem = Path(base_name(path)).stem
        yield Record(stem, text, stem, src, 1)
        return
    for lineno, raw in _lines(path):
        line = _decode(raw, src, lineno)
        if isinstance(line, Rejected):
            yield line
        elif line.strip():  # blank lines separate documents; they are not documents
            yield Record(None, line, "", src, lineno)


def _from_mapping(obj: dict, src: str, lineno: int, cfg: IngestConfig) -> Record | Rejected:
    text = obj.get(cfg.text_field)
    if not isinstance(text, str):
        return Rejected(src, lineno, f"missing or non-string field {cfg.text_field!r}")
    raw_id = obj.get(cfg.id_field)
    title = obj.get(cfg.title_field)
    return Record(
        str(raw_id) if raw_id not in (None, "") else None, text,
        title if isinstance(title, str) else "", src, lineno,
    )


def _from_json(text: str, src: str, lineno: int, cfg: IngestConfig, what: str
               ) -> Record | Rejected:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return Rejected(src, lineno, f"malformed JSON: {e.msg} at column {e.colno}")
    except RecursionError:
        return Rejected(src, lineno, f"JSON nested too deep (over about "
                        f"{sys.getrecursionlimit()} levels)")
    if not isinstance(obj, dict):
        return Rejected(src, lineno, f"{what} is not an object")
    return _from_mapping(obj, src, lineno, cfg)


def _read_json(path: Path, src: str, cfg: IngestConfig) -> Iterator[Record | Rejected]:
    with open_bytes(path) as f:
        first = f.read(_SNIFF).lstrip()[:1]
    if first == b"[":  # a JSON array of objects, read element by element
        yield from _read_json_array(path, src, cfg)
        return
    for lineno, raw in _lines(path):
        line = _decode(raw, src, lineno)
        if isinstance(line, Rejected):
            yield line
        elif line.strip():
            yield _from_json(line, src, lineno, cfg, "JSON line")


def _read_json_array(path: Path, src: str, cfg: IngestConfig) -> Iterator[Record | Rejected]:
    i = 0
    with open_bytes(path) as f:
        try:
            for i, raw in enumerate(array_elements(f, MAX_DOC_BYTES), start=1):
                if isinstance(raw, int):
                    yield Rejected(src, i, _too_long(raw))
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield Rejected(src, i, f"invalid UTF-8 at byte {e.start}")
                    continue
                yield _from_json(text, src, i, cfg, "JSON array item")
        except ArrayError as e:
            yield Rejected(src, i + 1, f"malformed JSON array: {e}")


def _read_csv(path: Path, src: str, cfg: IngestConfig) -> Iterator[Record | Rejected]:
    delimiter = "\t" if Path(base_name(path)).suffix.lower() == ".tsv" else ","
    csv.field_size_limit(MAX_ROW_BYTES)  # no field is longer than the record that holds it
    header: list[str] | None = None
    with open_bytes(path) as f:
        for lineno, raw in csv_records(f, delimiter, MAX_ROW_BYTES):
            rows = _parse_csv(raw, delimiter)
            if isinstance(rows, str):
                if header is None:
                    yield Rejected(src, lineno, f"unreadable header: {rows}")
                    return
                yield Rejected(src, lineno, rows)
                continue
            for row in rows:
                if header is not None:
                    yield _csv_record(row, header, src, lineno, cfg)
                    continue
                header = row
                if cfg.text_field not in header:
                    yield Rejected(src, lineno, f"header has no column {cfg.text_field!r} "
                                   f"(columns: {', '.join(header)}); set ingest.text_field")
                    return


def _parse_csv(raw: bytes | int, delimiter: str) -> list[list[str]] | str:
    """The rows of one record (one, unless its lines end in a lone CR), or why it is bad."""
    if isinstance(raw, int):
        return f"row longer than {MAX_ROW_BYTES} bytes ({raw} bytes)"
    if b"\x00" in raw:
        return NUL_REASON
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"invalid UTF-8 at byte {e.start}"
    try:
        return [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) if r]
    except csv.Error as e:
        return f"malformed CSV: {e}"


def _csv_record(row: list[str], header: list[str], src: str, lineno: int, cfg: IngestConfig
                ) -> Record | Rejected:
    if len(row) != len(header):
        return Rejected(src, lineno, f"malformed row: {len(row)} fields, "
                        f"header has {len(header)}")
    if any(len(v) > MAX_LINE_BYTES for v in row):
        return Rejected(src, lineno, f"field longer than {MAX_LINE_BYTES} bytes")
    return _from_mapping(dict(zip(header, row, strict=True)), src, lineno, cfg)


def _row_bytes(batch: pa.RecordBatch) -> np.ndarray:
    """The bytes of each row's string and binary cells together."""
    total = np.zeros(batch.num_rows, dtype=np.int64)
    for col in batch.columns:
        t = col.type
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) \
                or pa.types.is_large_binary(t):
            total += pc.fill_null(pc.binary_length(col), 0).to_numpy(zero_copy_only=False)
    return total


def _read_parquet(path: Path, src: str, cfg: IngestConfig) -> Iterator[Record | Rejected]:
    if compression(path) == "zstd":  # a zstd stream cannot seek, and Parquet reads by offsets
        yield Rejected(src, 0, "zstd-compressed Parquet is not supported (Parquet compresses its "
                       "pages itself: give the .parquet file as it is)")
        return
    with open_bytes(path, skip_bom=False) as f:
        pf = pq.ParquetFile(f)
        names = set(pf.schema_arrow.names)
        if cfg.text_field not in names:
            yield Rejected(src, 0, f"no column {cfg.text_field!r} (columns: "
                           f"{', '.join(sorted(names))}); set ingest.text_field")
            return
        cols = [c for c in (cfg.text_field, cfg.id_field, cfg.title_field) if c in names]
        row = 0
        for batch in pf.iter_batches(columns=cols, batch_size=1024):
            sizes = _row_bytes(batch)
            over = sizes > MAX_DOC_BYTES
            # only rows within the limit become Python objects
            small = iter(batch.filter(pa.array(~over)).to_pylist() if over.any()
                         else batch.to_pylist())
            for i in range(batch.num_rows):
                row += 1
                yield (Rejected(src, row, _too_long(int(sizes[i]))) if over[i]
                       else _from_mapping(next(small), src, row, cfg))


def _read_wikiextractor(path: Path, src: str, cfg: IngestConfig) -> Iterator[Record | Rejected]:
    doc_id: str | None = None
    title = ""
    body: list[str] = []
    start = size = 0
    bad: str | None = None
    for lineno, raw in _lines(path):
        if doc_id is None:
            m = _DOC_OPEN.match(raw)
            if m:
                doc_id = f"wiki:{m.group(1).decode('utf-8', 'replace')}"
                title = m.group(2).decode("utf-8", "replace")
                body, start, size, bad = [], lineno, 0, None
            elif raw.strip():
                yield Rejected(src, lineno, "text outside a <doc> element")
            continue
        if raw.rstrip(b"\r\n") == _DOC_CLOSE:
            if bad is not None:
                yield Rejected(src, start, bad, doc_id=doc_id)
            else:
                # The first body line repeats the title; paragraphs follow.
                lines = body[1:] if body and body[0].strip() == title.strip() else body
                yield Record(doc_id, "\n".join(lines), title, src, start)
            doc_id = None
            continue
        size += len(raw)
        if bad is None and size > MAX_DOC_BYTES:
            bad, body = f"document longer than {MAX_DOC_BYTES} bytes", []
        line = _decode(raw, src, lineno)
        if isinstance(line, Rejected):
            bad = bad or f"{line.reason} (line {lineno})"
        elif bad is None:
            body.append(line.rstrip("\r\n"))
    if doc_id is not None:
        yield Rejected(src, start, "unterminated <doc> element (file ends inside it)",
                       doc_id=doc_id)
