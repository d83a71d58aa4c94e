"""``run_ingest``: sources -> a corpus snapshot (Parquet) + quarantine file + manifest.

The snapshot is written in a staging folder and renamed into place at the end, so an interrupted
ingest leaves no snapshot a reader could pick up. Every record that is not kept is written to
``rejected.jsonl`` with its reason: nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ctxvec.artifacts import Snapshot
from ctxvec.config import CtxvecConfig
from ctxvec.ingest.sources import Record, Rejected, SourceError, expand_sources, read_file
from ctxvec.workspace import Workspace, write_manifest

log = logging.getLogger(__name__)

SNAPSHOT_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("text", pa.string()),
        ("title", pa.string()),
        ("source", pa.string()),
        ("content_hash", pa.string()),
        ("ingested_at", pa.timestamp("us", tz="UTC")),
        ("snapshot", pa.string()),
    ]
)
DOCS_FILE = "docs.parquet"
REJECTED_FILE = "rejected.jsonl"
ROW_GROUP = 2000


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def run_ingest(cfg: CtxvecConfig, ws: Workspace) -> Snapshot:
    started = time.time()
    icfg = cfg.ingest
    if not icfg.sources:
        raise SourceError("ingest.sources is empty: give at least one file, folder or glob")
    files = expand_sources(icfg.sources)
    now = datetime.now(UTC)
    snapshot_id = now.strftime("%Y%m%dT%H%M%S%fZ")
    final = ws.snapshots / snapshot_id
    counts = {"read": 0, "kept": 0, "duplicates": 0, "filtered": 0, "quarantined": 0}
    reasons: dict[str, int] = {}
    seen_hashes: set[str] = set()
    seen_ids: set[str] = set()

    with ws.stage_dir(final) as tmp:
        writer = pq.ParquetWriter(tmp / DOCS_FILE, SNAPSHOT_SCHEMA)
        buf: list[Record] = []
        hashes: list[str] = []

        def flush() -> None:
            if not buf:
                return
            table = pa.table(
                {
                    "doc_id": [r.doc_id for r in buf],
                    "text": [r.text for r in buf],
                    "title": [r.title for r in buf],
                    "source": [r.source for r in buf],
                    "content_hash": list(hashes),
                    "ingested_at": [now] * len(buf),
                    "snapshot": [snapshot_id] * len(buf),
                },
                schema=SNAPSHOT_SCHEMA,
            )
            writer.write_table(table)
            buf.clear()
            hashes.clear()

        with open(tmp / REJECTED_FILE, "w", encoding="utf-8") as rej:

            def reject(r: Rejected) -> None:
                counts[r.kind] += 1
                reasons[r.reason.split(":")[0]] = reasons.get(r.reason.split(":")[0], 0) + 1
                rej.write(json.dumps(r.__dict__, ensure_ascii=False) + "\n")

            done = False
            for path in tqdm(files, desc="ingest", unit="file", leave=False):
                for item in read_file(path, icfg):
                    counts["read"] += 1
                    if isinstance(item, Rejected):
                        reject(item)
                        continue
                    if len(item.text) < max(icfg.min_chars, 1):
                        why = "empty text" if not item.text else f"shorter than {icfg.min_chars}"
                        reject(Rejected(item.source, 0, why, "filtered", item.doc_id))
                        continue
                    h = content_hash(item.text)
                    if h in seen_hashes:
                        counts["duplicates"] += 1
                        rej.write(
                            json.dumps(
                                {"source": item.source, "doc_id": item.doc_id,
                                 "kind": "duplicate", "reason": f"same text as hash {h}"}
                            )
                            + "\n"
                        )
                        continue
                    if item.doc_id in seen_ids:
                        reject(Rejected(item.source, 0, "duplicate doc_id with different text",
                                        "quarantined", item.doc_id))
                        continue
                    seen_hashes.add(h)
                    seen_ids.add(item.doc_id)
                    buf.append(item)
                    hashes.append(h)
                    counts["kept"] += 1
                    if len(buf) >= ROW_GROUP:
                        flush()
                    if icfg.max_docs and counts["kept"] >= icfg.max_docs:
                        done = True
                        break
                if done:
                    log.info("ingest: stopped at ingest.max_docs=%d", icfg.max_docs)
                    break
            flush()
        writer.close()
        if counts["kept"] == 0:
            raise SourceError(
                f"ingest kept no documents from {len(files)} file(s); "
                f"rejections by reason: {reasons or 'none'}"
            )
        write_manifest(
            tmp,
            "ingest",
            started,
            snapshot=snapshot_id,
            sources=[str(f) for f in files],
            counts=counts,
            rejected_by_reason=reasons,
            config=cfg.ingest.model_dump(mode="json"),
        )
    log.info(
        "ingest: snapshot %s: read %d, kept %d, duplicates %d, filtered %d, quarantined %d",
        snapshot_id, counts["read"], counts["kept"], counts["duplicates"],
        counts["filtered"], counts["quarantined"],
    )
    return Snapshot(snapshot_id=snapshot_id, path=str(final), **counts)


def snapshot_docs_path(snapshot_path: str | Path) -> Path:
    return Path(snapshot_path) / DOCS_FILE


def read_texts(snapshot_path: str | Path) -> tuple[list[str], list[str]]:
    """(doc_ids, texts) of a snapshot, in snapshot order."""
    t = pq.read_table(snapshot_docs_path(snapshot_path), columns=["doc_id", "text"])
    return t.column("doc_id").to_pylist(), t.column("text").to_pylist()
