"""Read documents out of source files, streaming, one record at a time.

Formats: plain text and Markdown (``.txt``, ``.md``: one document per line, or per file), JSON
lines and JSON arrays (``.jsonl``, ``.json``), CSV and TSV (with a header row), Parquet, and
wikiextractor ``<doc>`` files (detected by content). Each may be gzip- (``.gz``) or
zstd-compressed (``.zst``).

Readers yield a ``Record`` per document and a ``Rejected`` per bad input (invalid UTF-8, malformed
JSON or CSV, missing fields, lines over 1 MB, binary, empty or unreadable files), with the file, the
line and the reason. A bad record never stops the rest of its file.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ctxvec.config import IngestConfig
from ctxvec.errors import UserInputError

_DOC_OPEN = re.compile(rb'^<doc id="([^"]*)" url="[^"]*" title="([^"]*)">\s*$')
_DOC_CLOSE = b"</doc>"
MAX_LINE_BYTES = 1 << 20
_SNIFF = 8192
_COMPRESSED = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
TEXT_SUFFIXES = {".txt", ".md", ".text", ".markdown"}


def _read_errors() -> tuple[type[BaseException], ...]:
    """What a damaged file raises while it is read: truncated archives, corrupt Parquet."""
    errors: list[type[BaseException]] = [OSError, EOFError, ValueError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


READ_ERRORS = _read_errors()


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


class SourceError(UserInputError):
    """A source path that names nothing readable."""


def expand_sources(sources: list[str]) -> list[Path]:
    """Files, directories (recursively, hidden entries skipped) and globs -> sorted unique files."""
    files: list[Path] = []
    for src in sources:
        p = Path(src).expanduser()
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files.extend(f for f in sorted(p.rglob("*")) if f.is_file() and not _hidden(f, p))
        else:
            matched = [Path(m) for m in sorted(glob.glob(str(p), recursive=True))]
            matched = [m for m in matched if m.is_file()]
            if not matched:
                raise SourceError(f"source {src!r} matches no file")
            files.extend(matched)
    seen: set[Path] = set()
    unique = []
    for f in files:
        r = f.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(r)
    return unique


def _hidden(f: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in f.relative_to(root).parts)


def base_name(path: Path) -> str:
    """The file name without its compression suffix: ``wiki_00.gz`` -> ``wiki_00``."""
    name = path.name
    for suffix in _COMPRESSED:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def open_bytes(path: Path) -> IO[bytes]:
    """A binary stream of the file's decompressed content."""
    kind = _COMPRESSED.get(path.suffix.lower())
    if kind == "gzip":
        return gzip.open(path, "rb")
    if kind == "zstd":
        import zstandard

        raw = open(path, "rb")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return open(path, "rb")


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


def read_file(path: Path, cfg: IngestConfig) -> Iterator[Record | Rejected]:
    """Every record of one file; file-level problems come back as one ``Rejected``."""
    src = str(path)
    try:
        with open_bytes(path) as f:
            head = f.read(_SNIFF)
    except READ_ERRORS as e:
        yield Rejected(src, 0, f"unreadable file: {e}")
        return
    if not head:
        yield Rejected(src, 0, "empty file")
        return
    fmt = detect_format(path, head)
    if fmt is None:
        yield Rejected(src, 0, "unsupported format (expected .txt, .md, .jsonl, .json, .csv, "
                       ".tsv, .parquet or wikiextractor <doc> files, optionally .gz or .zst)")
        return
    if fmt != "parquet" and b"\x00" in head:
        yield Rejected(src, 0, "binary file (NUL bytes in a text format)")
        return
    reader = {
        "txt": _read_txt, "jsonl": _read_json, "csv": _read_csv, "tsv": _read_csv,
        "parquet": _read_parquet, "wikiextractor": _read_wikiextractor,
    }[fmt]
    line = 0
    try:
        for item in reader(path, src, cfg):
            line = item.line
            yield item
    except READ_ERRORS as e:
        yield Rejected(src, line, f"unreadable after line {line}: {type(e).__name__}: {e}")


def _decode(raw: bytes, src: str, lineno: int) -> str | Rejected:
    if len(raw) > MAX_LINE_BYTES:
        return Rejected(src, lineno, f"line longer than {MAX_LINE_BYTES} bytes")
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
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield Rejected(src, 0, f"invalid UTF-8 at byte {e.start}")
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


def _read_json(path: Path, src: str, cfg: IngestConfig) -> Iterator[Record | Rejected]:
    with open_bytes(path) as f:
        first = f.read(_SNIFF).lstrip()[:1]
    if first == b"[":  # a JSON array of objects: parsed whole, so keep such files modest
        with open_bytes(path) as f:
            try:
                items = json.loads(f.read().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                yield Rejected(src, 0, f"malformed JSON array: {e}")
                return
        for i, obj in enumerate(items, start=1):
            yield (_from_mapping(obj, src, i, cfg) if isinstance(obj, dict)
                   else Rejected(src, i, "JSON array item is not an object"))
        return
    for lineno, raw in _lines(path):
        line = _decode(raw, src, lineno)
        if isinstance(line, Rejected):
            yield line
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield Rejected(src, lineno, f"malformed JSON: {e.msg} at column {e.colno}")
            continue
        if not isinstance(obj, dict):
            yield Rejected(src, lineno, "JSON line is not an object")
            continue
        yield _from_mapping(obj, src, lineno, cfg)


def _read_csv(path: Path, src: str, cfg: IngestConfig) -> Iterator[Record | Rejected]:
    delimiter = "\t" if Path(base_name(path)).suffix.lower() == ".tsv" else ","
    csv.field_size_limit(MAX_LINE_BYTES * 4)
    with open_bytes(path) as fb:
        # surrogateescape keeps undecodable bytes visible, so one bad row is rejected alone
        text = io.TextIOWrapper(fb, encoding="utf-8", errors="surrogateescape", newline="")
        reader = csv.reader(text, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        if cfg.text_field not in header:
            yield Rejected(src, 1, f"header has no column {cfg.text_field!r} "
                           f"(columns: {', '.join(header)}); set ingest.text_field")
            return
        try:
            for row in reader:
                lineno = reader.line_num
                if not row:
                    continue
                if len(row) != len(header):
                    yield Rejected(src, lineno, f"malformed row: {len(row)} fields, "
                                   f"header has {len(header)}")
                    continue
                if any(_has_surrogates(v) for v in row):
                    yield Rejected(src, lineno, "invalid UTF-8")
                    continue
                if any(len(v) > MAX_LINE_BYTES for v in row):
                    yield Rejected(src, lineno, f"field longer than {MAX_LINE_BYTES} bytes")
                    continue
                yield _from_mapping(dict(zip(header, row, strict=True)), src, lineno, cfg)
        except csv.Error as e:
            yield Rejected(src, reader.line_num, f"malformed CSV: {e}")


def _has_surrogates(s: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in s)


def _read_parquet(path: Path, src: str, cfg: IngestConfig) -> Iterator[Record | Rejected]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(open_bytes(path))
    names = set(pf.schema_arrow.names)
    if cfg.text_field not in names:
        yield Rejected(src, 0, f"no column {cfg.text_field!r} (columns: {', '.join(sorted(names))})"
                       "; set ingest.text_field")
        return
    cols = [c for c in (cfg.text_field, cfg.id_field, cfg.title_field) if c in names]
    row = 0
    for batch in pf.iter_batches(columns=cols, batch_size=1024):
        for obj in batch.to_pylist():
            row += 1
            yield _from_mapping(obj, src, row, cfg)


def _read_wikiextractor(path: Path, src: str, cfg: IngestConfig) -> Iterator[Record | Rejected]:
    doc_id: str | None = None
    title = ""
    body: list[str] = []
    start = 0
    bad: str | None = None
    for lineno, raw in _lines(path):
        if doc_id is None:
            m = _DOC_OPEN.match(raw)
            if m:
                doc_id = f"wiki:{m.group(1).decode('utf-8', 'replace')}"
                title = m.group(2).decode("utf-8", "replace")
                body, start, bad = [], lineno, None
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
        line = _decode(raw, src, lineno)
        if isinstance(line, Rejected):
            bad = bad or f"{line.reason} (line {lineno})"
            continue
        body.append(line.rstrip("\r\n"))
    if doc_id is not None:
        yield Rejected(src, start, "unterminated <doc> element (file ends inside it)",
                       doc_id=doc_id)
