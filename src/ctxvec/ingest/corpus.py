"""The corpus: every committed snapshot of a workspace, read as one collection of documents.

Each ingest adds a snapshot holding only what was new, so the corpus as of snapshot S is the union
of snapshots up to S. A document changed at its source comes back with the same ``doc_id`` and
new text in a later snapshot; readers see only its newest version ("latest wins").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ctxvec.workspace import Workspace

DOCS_GLOB = "docs-*.parquet"


def committed_snapshots(ws: Workspace) -> list[Path]:
    """Snapshot folders in creation order; staging folders (dot-names) are not snapshots. In a
    remote workspace the store says which exist (local copies, fetched as needed)."""
    if ws.uri:
        return ws.committed_dirs("snapshots")
    if not ws.snapshots.is_dir():
        return []
    return sorted(p for p in ws.snapshots.iterdir() if p.is_dir() and not p.name.startswith("."))


def corpus_upto(ws: Workspace, snapshot_id: str) -> list[str]:
    paths = [str(p) for p in committed_snapshots(ws) if p.name <= snapshot_id]
    if not paths or Path(paths[-1]).name != snapshot_id:
        raise FileNotFoundError(f"snapshot {snapshot_id} is not in {ws.snapshots}")
    return paths


def doc_files(snapshots: Sequence[str | Path]) -> list[Path]:
    return [f for s in snapshots for f in sorted(Path(s).glob(DOCS_GLOB))]


def iter_corpus(
    snapshots: Sequence[str | Path],
    columns: Sequence[str] = ("doc_id", "text"),
    batch_size: int = 1024,
) -> Iterator[pa.RecordBatch]:
    """Stream the corpus newest snapshot first, each doc_id once (its newest version)."""
    cols = list(dict.fromkeys(["doc_id", *columns]))
    seen: set[str] = set()
    multi = len(snapshots) > 1
    for snap in reversed(list(snapshots)):
        for f in sorted(Path(snap).glob(DOCS_GLOB)):
            for batch in pq.ParquetFile(f).iter_batches(columns=cols, batch_size=batch_size):
                if multi:
                    ids = batch.column(0).to_pylist()
                    keep = [d not in seen for d in ids]
                    seen.update(ids)
                    if not all(keep):
                        batch = batch.filter(pa.array(keep))
                if batch.num_rows:
                    yield batch.select(list(columns))


def iter_texts(snapshots: Sequence[str | Path], limit: int | None = None) -> Iterator[str]:
    n = 0
    for batch in iter_corpus(snapshots, ("text",)):
        for text in batch.column(0).to_pylist():
            yield text
            n += 1
            if limit is not None and n >= limit:
                return


def count_docs(snapshots: Sequence[str | Path]) -> int:
    if len(snapshots) == 1:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in doc_files(snapshots))
    return sum(b.num_rows for b in iter_corpus(snapshots, ("doc_id",)))


def read_docs(
    snapshots: Sequence[str | Path], doc_ids: Sequence[str], columns: Sequence[str]
) -> dict[str, dict]:
    """The newest version of each requested document, as ``{doc_id: {column: value}}``."""
    import pyarrow.compute as pc

    out: dict[str, dict] = {}
    wanted = pa.array(list(doc_ids), pa.string())
    cols = list(dict.fromkeys(["doc_id", *columns]))
    for snap in reversed(list(snapshots)):
        for f in sorted(Path(snap).glob(DOCS_GLOB)):
            t = pq.read_table(f, columns=cols, filters=pc.field("doc_id").isin(wanted))
            for row in t.to_pylist():
                out.setdefault(row["doc_id"], row)
        if len(out) == len(doc_ids):
            break
    return out
