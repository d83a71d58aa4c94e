"""``run_ingest``: sources -> a new corpus snapshot holding only what is new.

1. Expand the sources; skip files already fully ingested with the same size and SHA-256.
2. Workers (one process per core) read, clean, filter and MinHash each file into a part file.
3. One pass in file order drops exact duplicates (content hash, across every earlier snapshot too)
   and near-duplicates (MinHash-LSH, against earlier snapshots too), and writes the kept
   documents as Parquet shards with their signatures (``dedup.py``). What it must remember is
   in a SQLite file in the staging folder, built from the earlier snapshots (``dedup_state.py``),
   so memory stays flat whatever the size of the corpus.
4. The staging folder is renamed into place: an interrupted ingest leaves no snapshot behind.

Every record not kept is in ``rejected.jsonl`` with its file, line, kind and reason.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ctxvec.artifacts import Snapshot
from ctxvec.config import CtxvecConfig
from ctxvec.errors import UserInputError
from ctxvec.ingest.corpus import committed_snapshots, corpus_upto, count_docs
from ctxvec.ingest.dedup import Merger
from ctxvec.ingest.dedup_state import DEDUP_FILE, DedupState
from ctxvec.ingest.near_dup import LshBands
from ctxvec.ingest.sources import SourceError, expand_sources
from ctxvec.ingest.worker import ingest_file, watch_parent
from ctxvec.workspace import Workspace, read_json, sha256_file, write_manifest

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
MINHASH_FILE = "minhash.parquet"
REJECTED_FILE = "rejected.jsonl"
MERGE_BATCH = 1000  # documents decided per look-up of the de-duplication state
COUNT_KEYS = ("read", "kept", "duplicates", "near_duplicates", "filtered", "quarantined")


class _ShardWriter:
    """Kept documents -> docs-00000.parquet, docs-00001.parquet, ... of ``shard_docs`` rows."""

    def __init__(self, folder: Path, shard_docs: int):
        self.folder, self.shard_docs = folder, shard_docs
        self.shard, self.rows_in_shard, self.writer = 0, 0, None

    def write(self, table: pa.Table) -> None:
        while table.num_rows:
            if self.writer is None:
                path = self.folder / f"docs-{self.shard:05d}.parquet"
                self.writer = pq.ParquetWriter(path, SNAPSHOT_SCHEMA)
            room = self.shard_docs - self.rows_in_shard
            head, table = table.slice(0, room), table.slice(room)
            self.writer.write_table(head)
            self.rows_in_shard += head.num_rows
            if self.rows_in_shard >= self.shard_docs:
                self.close()
                self.shard, self.rows_in_shard = self.shard + 1, 0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _previous_files(previous: list[Path]) -> dict[str, tuple[int, str]]:
    """Files fully read by earlier snapshots: path -> (size, SHA-256)."""
    files: dict[str, tuple[int, str]] = {}
    for snap in previous:
        for f in read_json(snap / "manifest.json").get("files", []):
            if f.get("complete"):
                files[f["path"]] = (f["size"], f["sha256"])
    return files


def _dedup_state(path: Path, previous: list[Path], cfg: CtxvecConfig) -> DedupState:
    """The de-duplication state of this ingest, on disk, holding what earlier snapshots hold:
    their content hashes and ids, and the signatures made with the same ``num_perm``."""
    nd = cfg.ingest.near_dup
    state = DedupState(path, LshBands(nd.threshold, nd.num_perm) if nd.enabled else None,
                       cfg.ingest.dedup_cache_mb)
    try:
        for snap in previous:
            manifest_nd = read_json(snap / "manifest.json").get("near_dup") or {}
            state.load_snapshot(snap, manifest_nd.get("num_perm") == nd.num_perm)
    except BaseException:
        state.close()
        raise
    return state


def _fingerprint(f: Path) -> tuple[int, str]:
    """(size, SHA-256) of a file; (-1, "") for a listed file that cannot be read (a broken
    symlink, a symlink loop, no permission), which its reader then reports."""
    try:
        return f.stat().st_size, sha256_file(f)
    except OSError:
        return -1, ""


def _run_workers(paths: list[Path], cfg: CtxvecConfig, tmp: Path) -> Iterator[dict]:
    """Per-file results in file order, computed in parallel when there are several files."""
    dump = cfg.ingest.model_dump(mode="json")
    workers = min(cfg.ingest.workers or os.cpu_count() or 1, len(paths))
    if workers <= 1:
        for i, p in enumerate(paths):
            yield ingest_file(str(p), dump, str(tmp), i)
        return
    # spawn, not fork: the caller may hold threads (Prefect, torch) that fork would copy mid-lock
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=watch_parent,
                             initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(ingest_file, str(p), dump, str(tmp), i)
                   for i, p in enumerate(paths)]
        for fut in futures:
            yield fut.result()


def run_ingest(cfg: CtxvecConfig, ws: Workspace) -> Snapshot:
    started = time.time()
    icfg, nd = cfg.ingest, cfg.ingest.near_dup
    if not icfg.sources:
        raise SourceError("ingest.sources is empty: give at least one file, folder or glob")
    files = expand_sources(icfg.sources)
    previous = committed_snapshots(ws)
    prev_files = _previous_files(previous)
    prints = {str(f): _fingerprint(f) for f in files}
    sizes = {k: size for k, (size, _) in prints.items()}
    shas = {k: sha for k, (_, sha) in prints.items()}
    todo = [f for f in files
            if not (icfg.incremental and prev_files.get(str(f)) == (sizes[str(f)], shas[str(f)]))]
    skipped = len(files) - len(todo)
    if skipped:
        log.info("ingest: %d of %d files unchanged since an earlier snapshot: skipped",
                 skipped, len(files))
    if not todo:
        if not previous:  # pragma: no cover - files exist, so a first ingest always has work
            raise SourceError("nothing to ingest")
        last = previous[-1]
        corpus = [str(p) for p in previous]
        log.info("ingest: nothing new; the corpus stays at snapshot %s", last.name)
        return Snapshot(last.name, str(last), corpus, _corpus_docs(corpus), False,
                        0, 0, 0, 0, 0, 0, skipped, 0)

    now = datetime.now(UTC)
    snapshot_id = now.strftime("%Y%m%dT%H%M%S%fZ")
    final = ws.snapshots / snapshot_id
    counts = dict.fromkeys((*COUNT_KEYS, "deferred"), 0)
    reasons: dict[str, int] = {}
    file_records = []
    with ws.stage_dir(final) as tmp:
        parts = tmp / ".parts"
        parts.mkdir()
        shards = _ShardWriter(tmp, icfg.shard_docs)
        mh_writer = (pq.ParquetWriter(tmp / MINHASH_FILE, pa.schema(
            [("doc_id", pa.string()), ("minhash", pa.list_(pa.uint64(), nd.num_perm))]))
            if nd.enabled else None)
        with (open(tmp / REJECTED_FILE, "w", encoding="utf-8") as rej,
              _dedup_state(parts / DEDUP_FILE, previous, cfg) as state):
            merger = Merger(state, state.bands, nd.threshold, icfg.max_docs, counts, reasons,
                            rej)
            bar = tqdm(total=sum(max(sizes[str(f)], 0) for f in todo), desc="ingest", unit="B",
                       unit_scale=True, leave=False)
            for path, res in zip(todo, _run_workers(todo, cfg, parts), strict=True):
                for key in ("read", "filtered", "quarantined"):
                    counts[key] += res[key]
                for k, v in res["reasons"].items():
                    reasons[k] = reasons.get(k, 0) + v
                with open(res["rejected"], encoding="utf-8") as f:
                    shutil.copyfileobj(f, rej)
                complete, examined = True, 0
                for batch in pq.ParquetFile(res["part"]).iter_batches(batch_size=MERGE_BATCH):
                    keep, n = merger.decide(batch)
                    examined += n
                    complete &= n == batch.num_rows
                    if any(keep):
                        kept = batch.filter(pa.array(keep))
                        shards.write(pa.table({
                            **{c: kept.column(c) for c in ("doc_id", "text", "title", "source",
                                                           "content_hash")},
                            "ingested_at": pa.repeat(pa.scalar(now, SNAPSHOT_SCHEMA.field(
                                "ingested_at").type), kept.num_rows),
                            "snapshot": pa.repeat(pa.scalar(snapshot_id), kept.num_rows),
                        }, schema=SNAPSHOT_SCHEMA))
                        if mh_writer is not None:
                            mh_writer.write_table(pa.table(
                                {"doc_id": kept.column("doc_id"),
                                 "minhash": kept.column("minhash")}, schema=mh_writer.schema))
                    if not complete:
                        break
                # Documents left unexamined at max_docs are not rejected: the file stays
                # incomplete, so the next ingest reads it again and picks them up.
                counts["deferred"] += res["candidates"] - examined
                # a damaged or unreadable file is not complete: the next ingest reads it again
                file_records.append({
                    "path": str(path), "size": sizes[str(path)], "sha256": shas[str(path)],
                    "complete": complete and not res["damaged"] and bool(shas[str(path)]),
                    "read": res["read"], "candidates": res["candidates"],
                    **({"damaged": res["damaged"]} if res["damaged"] else {}),
                })
                bar.update(max(sizes[str(path)], 0))
            bar.close()
            full = merger.full
            corpus_docs = state.corpus_docs()
        shards.close()
        if mh_writer is not None:
            mh_writer.close()
        if counts["kept"] == 0:  # an empty shard keeps the layout uniform for readers
            pq.write_table(SNAPSHOT_SCHEMA.empty_table(), tmp / "docs-00000.parquet")
        shutil.rmtree(parts)
        if full:
            log.info("ingest: stopped at ingest.max_docs=%d", icfg.max_docs)
        corpus = [str(p) for p in previous] + [str(final)]
        write_manifest(
            tmp, "ingest", started,
            snapshot=snapshot_id, previous=[p.name for p in previous],
            counts=counts, by_reason=reasons, skipped_files=skipped, corpus_docs=corpus_docs,
            files=file_records, near_dup=nd.model_dump(mode="json") if nd.enabled else None,
            config=icfg.model_dump(mode="json"),
        )
    log.info(
        "ingest: snapshot %s: read %d, kept %d, duplicates %d, near-duplicates %d, filtered %d, "
        "quarantined %d, deferred %d; corpus now %d documents",
        snapshot_id, *(counts[k] for k in COUNT_KEYS), counts["deferred"], corpus_docs,
    )
    if corpus_docs == 0:
        raise SourceError(
            f"ingest kept no documents from {len(todo)} file(s) (by reason: {reasons or 'none'}); "
            f"see {final / REJECTED_FILE}"
        )
    return Snapshot(snapshot_id, str(final), corpus, corpus_docs, True,
                    *(counts[k] for k in COUNT_KEYS), skipped, counts["deferred"])


def _corpus_docs(corpus: list[str]) -> int:
    """Documents in the corpus up to its last snapshot: as its ingest counted them (without
    reading every id of every snapshot again), or counted for a snapshot made before ingests
    recorded it."""
    known = read_json(Path(corpus[-1]) / "manifest.json").get("corpus_docs")
    return known if isinstance(known, int) else count_docs(corpus)


class NoSnapshotError(UserInputError):
    """The workspace has no corpus yet, or not the snapshot asked for."""


def load_snapshot(ws: Workspace, snapshot_id: str | None = None) -> Snapshot:
    """The record of an existing snapshot (default: the newest), rebuilt from its manifest, so
    that stages run on a corpus ingested earlier get the same record ``run_ingest`` returned."""
    snaps = committed_snapshots(ws)
    if not snaps:
        raise NoSnapshotError(f"no snapshot in {ws.home}: run `ctxvec ingest SOURCE...` first")
    sid = snapshot_id or snaps[-1].name
    try:
        corpus = corpus_upto(ws, sid)
    except FileNotFoundError as e:
        raise NoSnapshotError(str(e)) from None
    counts = read_json(Path(corpus[-1]) / "manifest.json")["counts"]
    return Snapshot(sid, corpus[-1], corpus, _corpus_docs(corpus), False,
                    *(counts.get(k, 0) for k in COUNT_KEYS),
                    skipped_files=0, deferred=counts.get("deferred", 0))


def rejection_reasons(snap: Snapshot) -> dict[str, int]:
    """How many records a newly created snapshot rejected, by reason (none when nothing was new:
    the snapshot named is then an earlier one, whose rejections are not this ingest's)."""
    if not snap.created:
        return {}
    return read_json(Path(snap.path) / "manifest.json")["by_reason"]
