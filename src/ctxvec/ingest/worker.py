"""One source file -> a part file of cleaned candidate documents, in a worker process.

Workers read, clean, filter, hash and MinHash their file, streaming row groups of
``ROW_GROUP`` documents to ``part-NNNNN.parquet`` and every rejected record to
``rejected-NNNNN.jsonl`` in the staging folder. De-duplication across files happens afterwards, in
one process, in file order, so the result does not depend on which worker finished first.

A compressed file found truncated or corrupt at its end (``Damaged``) is void as a whole: what was
written of it is taken back, and every record read from it is quarantined with the damage as its
reason. Worker processes die with the ingest that started them (``watch_parent``).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ctxvec.config import IngestConfig
from ctxvec.ingest.cleaning import clean_text, filter_reason
from ctxvec.ingest.minhash import Signer
from ctxvec.ingest.sources import Damaged, Record, Rejected, base_name, read_file
from ctxvec.workspace import sha256_text

ROW_GROUP = 1000
_PR_SET_PDEATHSIG = 1  # prctl(2)


_SIGNERS: dict[tuple[int, int], Signer] = {}


def _signer(num_perm: int, shingle: int) -> Signer:
    """One per worker process, so its cache of word hashes serves every file it reads."""
    key = (num_perm, shingle)
    if key not in _SIGNERS:
        _SIGNERS[key] = Signer(num_perm, shingle)
    return _SIGNERS[key]


def part_schema(with_minhash: bool, num_perm: int = 0) -> pa.Schema:
    fields = [
        ("doc_id", pa.string()),
        ("text", pa.string()),
        ("title", pa.string()),
        ("source", pa.string()),
        ("content_hash", pa.string()),
        ("line", pa.int64()),
    ]
    if with_minhash:
        fields.append(("minhash", pa.list_(pa.uint64(), num_perm)))
    return pa.schema(fields)


def content_hash(text: str) -> str:
    return sha256_text(text)[:32]


@dataclass
class FileResult:
    path: str
    part: str
    rejected: str
    read: int = 0
    candidates: int = 0
    filtered: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    damaged: str | None = None  # why the whole file was rejected

    def to_dict(self) -> dict:
        return asdict(self)


def reason_key(reason: str) -> str:
    """Group reasons for the summary: drop the variable part after ':' or '('."""
    return reason.split(":")[0].split(" (")[0].strip()


def ingest_file(path: str, cfg_dump: dict, out_dir: str, file_no: int) -> dict:
    """Process one file; returns a ``FileResult`` as a dict (cheap to send between processes)."""
    cfg = IngestConfig.model_validate(cfg_dump)
    src = Path(path)
    out = Path(out_dir)
    nd = cfg.near_dup
    res = FileResult(path, str(out / f"part-{file_no:05d}.parquet"),
                     str(out / f"rejected-{file_no:05d}.jsonl"))
    schema = part_schema(nd.enabled, nd.num_perm)
    stem = Path(base_name(src)).stem
    buf: list[tuple[Record, str, str]] = []

    with pq.ParquetWriter(res.part, schema) as writer, open(res.rejected, "w") as rej:

        def reject(r: Rejected) -> None:
            if r.kind == "filtered":
                res.filtered += 1
            else:
                res.quarantined += 1
            key = reason_key(r.reason)
            res.reasons[key] = res.reasons.get(key, 0) + 1
            rej.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")

        def flush() -> None:
            if not buf:
                return
            cols = {
                "doc_id": [d for _, _, d in buf],
                "text": [t for _, t, _ in buf],
                "title": [clean_text(r.title, cfg.nfkc) for r, _, _ in buf],
                "source": [r.source for r, _, _ in buf],
                "content_hash": [content_hash(t) for _, t, _ in buf],
                "line": [r.line for r, _, _ in buf],
            }
            if nd.enabled:
                sigs = _signer(nd.num_perm, nd.shingle).signatures(cols["text"])
                cols["minhash"] = pa.FixedSizeListArray.from_arrays(
                    pa.array(sigs.ravel()), nd.num_perm)
            writer.write_table(pa.table(cols, schema=schema))
            buf.clear()

        damaged = None
        for item in read_file(src, cfg):
            if isinstance(item, Damaged):
                damaged = item
                break
            res.read += 1
            if isinstance(item, Rejected):
                reject(item)
                continue
            text = clean_text(item.text, cfg.nfkc)
            why = filter_reason(text, cfg)
            if why is not None:
                reject(Rejected(item.source, item.line, why, "filtered", item.doc_id))
                continue
            doc_id = item.doc_id or f"{stem}:{content_hash(text)[:16]}"
            buf.append((item, text, doc_id))
            res.candidates += 1
            if len(buf) >= ROW_GROUP:
                flush()
        flush()
    if damaged is not None:
        _void(res, damaged, schema)
    return res.to_dict()


def _void(res: FileResult, damaged: Damaged, schema: pa.Schema) -> None:
    """Reject every record read from a damaged file: its documents and its records rejected so
    far become quarantined records with the damage as their reason (one for the file itself if
    none was read), and its part file is emptied."""
    def line(at: int, doc_id: str | None) -> str:
        rej = Rejected(damaged.source, at, damaged.reason, doc_id=doc_id)
        return json.dumps(asdict(rej), ensure_ascii=False) + "\n"

    tmp = res.rejected + ".void"
    with open(tmp, "w", encoding="utf-8") as out:
        with open(res.rejected, encoding="utf-8") as old:
            for raw in old:
                r = json.loads(raw)
                out.write(line(r["line"], r.get("doc_id")))
        for batch in pq.ParquetFile(res.part).iter_batches(columns=["line", "doc_id"]):
            for at, doc_id in zip(*(c.to_pylist() for c in batch.columns), strict=True):
                out.write(line(at, doc_id))
        if res.read == 0:
            out.write(line(damaged.line, damaged.doc_id))
            res.read = 1
    os.replace(tmp, res.rejected)
    pq.write_table(schema.empty_table(), res.part)
    res.candidates = res.filtered = 0
    res.quarantined = res.read
    res.reasons = {reason_key(damaged.reason): res.read}
    res.damaged = damaged.reason


def watch_parent(parent: int) -> None:
    """Initializer of ingest worker processes: end the worker when the ingest that started it
    ends without shutting it down (killed with SIGKILL, a worker would wait for work forever).

    On Linux the kernel signals it (``PR_SET_PDEATHSIG``); everywhere, a thread checks every
    second that its parent is still the ingest."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl
            pass
    if os.getppid() != parent:  # the ingest died before the signal was set up
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), name="ctxvec-parent-watch",
                     daemon=True).start()


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)
