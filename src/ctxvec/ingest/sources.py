"""Read documents out of source files: plain text, JSON lines and wikiextractor ``<doc>`` files.

Readers stream: they yield one ``Record`` per document or one ``Rejected`` per bad input, and
never hold a whole file in memory. A bad record never stops the file; it is reported with the
file, the line and the reason.
"""

from __future__ import annotations

import glob
import gzip
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


@dataclass(frozen=True)
class Record:
    doc_id: str
    text: str
    title: str
    source: str


@dataclass(frozen=True)
class Rejected:
    source: str
    line: int
    reason: str
    kind: str = "quarantined"  # quarantined (bad input) | filtered (a policy said no)
    doc_id: str | None = None


class SourceError(UserInputError):
    """A source path that names nothing readable."""


def expand_sources(sources: list[str]) -> list[Path]:
    """Files, directories (recursively) and globs -> a sorted, de-duplicated list of files."""
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


def _open(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def detect_format(path: Path) -> str:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    suffix = Path(name).suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix in (".txt", ".md", ".text"):
        with _open(path) as f:
            head = f.read(5)
        return "wikiextractor" if head == b"<doc " else "txt"
    with _open(path) as f:
        head = f.read(5)
    if head == b"<doc ":
        return "wikiextractor"
    return "unknown"


def read_file(path: Path, cfg: IngestConfig) -> Iterator[Record | Rejected]:
    fmt = detect_format(path)
    src = str(path)
    if fmt == "txt":
        yield from _read_txt(path, src, cfg)
    elif fmt == "jsonl":
        yield from _read_jsonl(path, src, cfg)
    elif fmt == "wikiextractor":
        yield from _read_wikiextractor(path, src)
    else:
        yield Rejected(src, 0, "unsupported format (expected .txt, .md, .jsonl or <doc> files)")


def _decode(raw: bytes, src: str, lineno: int) -> str | Rejected:
    if len(raw) > MAX_LINE_BYTES:
        return Rejected(src, lineno, f"line longer than {MAX_LINE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Rejected(src, lineno, f"invalid UTF-8 at byte {e.start}")


def _read_txt(path: Path, src: str, cfg: IngestConfig) -> Iterator[Record | Rejected]:
    stem = _stem(path)
    if cfg.txt_mode == "file":
        with _open(path) as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield Rejected(src, 0, f"invalid UTF-8 at byte {e.start}")
            return
        yield Record(stem, text.strip(), stem, src)
        return
    with _open(path) as f:
        for lineno, raw in enumerate(f, start=1):
            line = _decode(raw, src, lineno)
            if isinstance(line, Rejected):
                yield line
                continue
            text = line.strip()
            if not text:
                continue  # blank lines separate documents; they are not documents
            yield Record(f"{stem}:{lineno}", text, "", src)


def _read_jsonl(path: Path, src: str, cfg: IngestConfig) -> Iterator[Record | Rejected]:
    stem = _stem(path)
    with _open(path) as f:
        for lineno, raw in enumerate(f, start=1):
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
            text = obj.get(cfg.text_field)
            if not isinstance(text, str):
                yield Rejected(src, lineno, f"missing or non-string field {cfg.text_field!r}")
                continue
            raw_id = obj.get(cfg.id_field)
            doc_id = str(raw_id) if raw_id is not None else f"{stem}:{lineno}"
            title = obj.get(cfg.title_field)
            yield Record(doc_id, text.strip(), title if isinstance(title, str) else "", src)


def _read_wikiextractor(path: Path, src: str) -> Iterator[Record | Rejected]:
    doc_id: str | None = None
    title = ""
    body: list[str] = []
    start = 0
    bad: str | None = None
    with _open(path) as f:
        for lineno, raw in enumerate(f, start=1):
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
                    text = "\n".join(x for x in (ln.strip() for ln in lines) if x)
                    yield Record(doc_id, text, title, src)
                doc_id = None
                continue
            line = _decode(raw, src, lineno)
            if isinstance(line, Rejected):
                bad = bad or line.reason
                continue
            body.append(line.rstrip("\r\n"))
    if doc_id is not None:
        yield Rejected(src, start, "unterminated <doc> element (file ends inside it)",
                       doc_id=doc_id)


def _stem(path: Path) -> str:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return Path(name).stem
