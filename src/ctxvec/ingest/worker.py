"""One source file -> a part file of cleaned candidate documents, in a worker process.

Workers read, clean, filter, hash and MinHash their file, streaming row groups of
``ROW_GROUP`` documents to ``part-NNNNN.parquet`` and every rejected record to
``rejected-NNNNN.jsonl`` in the staging folder. De-duplication across files happens afterwards, in
one process, in file order, so the result does not depend on which worker finished first.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ctxvec.config import IngestConfig
from ctxvec.ingest.cleaning import clean_text, filter_reason
from ctxvec.ingest.minhash import Signer
from ctxvec.ingest.sources import Record, Rejected, base_name, read_file
from ctxvec.workspace import sha256_text

ROW_GROUP = 1000


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

        for item in read_file(src, cfg):
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
    return res.to_dict()
