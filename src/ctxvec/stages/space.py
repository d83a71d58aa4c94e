"""Where a workspace's disk space goes (``ctxvec workspace du``), and reclaiming what nothing
needs (``ctxvec workspace prune``).

A demo run leaves three byte-identical copies of the encoder's weights: the run folder's
``model/`` (what the stage cache and a re-run of the same recipe point at), the version's MLflow
artifacts (what the registry serves) and the download cache (``cache/models``, where queries and
the server load a version from), plus the checkpoints of the finished training run (weights,
optimizer state and RNG states, one set per kept checkpoint), which only ever serve to resume an
interrupted run. ``prune`` reclaims three things, and nothing else:

- ``checkpoints``: ``runs/<run>/checkpoints`` of runs that finished (their ``manifest.json`` is
  written); an interrupted run, which resumes from them, keeps its own;
- ``duplicate``: weight and tokenizer files (64 KiB and over) under ``runs/*/model``,
  ``mlartifacts`` and ``cache/models`` whose bytes are identical are made hard links of one copy
  (the run folder's where there is one: the stage cache fingerprints its files), so every path
  stays where it was with the same bytes; neither ctxvec nor MLflow writes these files in place;
- ``staging``: folders a killed writer left (``.tmp-*``, and ``.old-*`` whose folder is back),
  which taking the writer lock clears anyway, and downloads into the cache that were cut off more
  than an hour ago. ``.partial-*`` folders are resumable embeddings: kept.

Registered versions (their artifacts, indexes, embeddings), aliases, snapshots, tokenizers,
packed and mined data, the registry and Prefect's state are never removed: the space they take is
listed, not offered. ``prune`` holds the writer lock and checks each item again under it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ctxvec.workspace import STAGED_KINDS, Workspace

MIN_DUPLICATE = 1 << 16  # weight and tokenizer files; smaller ones are not worth a link
STALE_DOWNLOAD_S = 3600  # a download into the cache takes seconds: one older than this was cut


@dataclass(frozen=True)
class Prunable:
    kind: str  # checkpoints | duplicate | staging
    path: str
    bytes: int
    why: str
    keep: str | None = None  # duplicate: the copy it becomes a hard link of

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _on_disk(st: os.stat_result) -> int:
    return st.st_blocks * 512


def _files(top: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Every regular file under ``top`` (links not followed), in name order."""
    for folder, dirs, names in os.walk(top):
        dirs.sort()
        for name in sorted(names):
            p = Path(folder, name)
            st = p.lstat()
            if p.is_file() and not p.is_symlink():
                yield p, st


def _size(top: Path, seen: set | None = None) -> int:
    seen = set() if seen is None else seen
    total = 0
    for _, st in _files(top):
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += _on_disk(st)
    return total


def area_of(parts: tuple[str, ...]) -> str:
    """The area a file belongs to, from its path relative to the workspace root."""
    top = parts[0]
    if any(p.startswith((".tmp-", ".old-")) for p in parts):
        return "staging leftovers"
    if any(p.startswith(".partial-") for p in parts):
        return "interrupted embeddings (resumable)"
    if top == "runs":
        inner = parts[2] if len(parts) > 2 else ""
        return {"checkpoints": "runs: checkpoints", "model": "runs: trained models"}.get(
            inner, "runs: logs and evaluations")
    if top in ("embeddings", "indexes"):
        part = next((p for p in parts[2:3] if p in ("words", "senses", "bm25")), "")
        return {("embeddings", "words"): "embeddings: word vectors",
                ("indexes", "senses"): "indexes: sense indexes",
                ("indexes", "bm25"): "indexes: BM25"}.get(
            (top, part), f"{top}: chunk vectors" if top == "embeddings" else "indexes: vectors")
    if top.startswith("mlflow.db"):
        return "MLflow database"
    return {"mlartifacts": "MLflow artifacts", "cache": "download cache",
            "prefect": "Prefect state", "prefect-results": "stage cache records"}.get(top, top)


def _walk_order(root: Path) -> list[Path]:
    """Top-level entries, run folders first: a file with several names counts where it is
    first met, and the run folder's copy is the one ``prune`` keeps."""
    first = [root / "runs", root / "mlartifacts", root / "cache"]
    return [p for p in first if p.exists()] + sorted(
        p for p in root.iterdir() if p not in first)


# --- what can go ------------------------------------------------------------------------------


def _checkpoints(ws: Workspace) -> list[Prunable]:
    out = []
    for run in sorted(ws.runs.glob("*")) if ws.runs.is_dir() else []:
        folder = run / "checkpoints"
        if folder.is_dir() and (run / "manifest.json").is_file():
            out.append(Prunable("checkpoints", str(folder), _size(folder),
                                f"run {run.name} finished: its checkpoints only resume a run "
                                "that was interrupted"))
    return out


def _staging(ws: Workspace, now: float) -> list[Prunable]:
    out = []
    parents = [ws.root / k for k in STAGED_KINDS]
    parents += [d for d in ws.runs.glob("*") if d.is_dir()] if ws.runs.is_dir() else []
    for parent in (p for p in parents if p.is_dir()):
        for entry in sorted(parent.iterdir()):
            old = entry.name.startswith(".old-") and (
                parent / entry.name[len(".old-"):].rsplit("-", 1)[0]).exists()
            if entry.is_dir() and (entry.name.startswith(".tmp-") or old):
                out.append(Prunable("staging", str(entry), _size(entry),
                                    "a folder a killed writer left"))
    for entry in sorted(ws.model_cache.glob("*/.tmp-*")) if ws.model_cache.is_dir() else []:
        if entry.is_dir() and now - entry.stat().st_mtime > STALE_DOWNLOAD_S:
            out.append(Prunable("staging", str(entry), _size(entry),
                                "a download into the cache that was cut off"))
    return out


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _weight_files(ws: Workspace) -> list[tuple[Path, os.stat_result]]:
    tops = [*sorted(ws.runs.glob("*/model")), ws.mlflow_artifacts, ws.model_cache]
    return [(p, st) for top in tops if top.is_dir() for p, st in _files(top)
            if st.st_size >= MIN_DUPLICATE]


def _duplicates(ws: Workspace) -> list[Prunable]:
    by_size: dict[tuple[int, int], list[tuple[Path, os.stat_result]]] = {}
    for p, st in _weight_files(ws):  # run folders first: their copy is kept
        by_size.setdefault((st.st_dev, st.st_size), []).append((p, st))
    out = []
    for group in by_size.values():
        if len({st.st_ino for _, st in group}) < 2:
            continue
        by_digest: dict[str, list[tuple[Path, os.stat_result]]] = {}
        for p, st in group:
            by_digest.setdefault(_digest(p), []).append((p, st))
        for same in by_digest.values():
            keep, kept_ino = same[0][0], same[0][1].st_ino
            out += [Prunable("duplicate", str(p), _on_disk(st), "the same bytes as the copy "
                             "kept: made a hard link of it", str(keep))
                    for p, st in same[1:] if st.st_ino != kept_ino]
    return out


def prunable(ws: Workspace) -> list[Prunable]:
    return [*_checkpoints(ws), *_duplicates(ws), *_staging(ws, time.time())]


# --- the commands ---------------------------------------------------------------------------


def usage(ws: Workspace) -> dict[str, Any]:
    """The space per area (each file once, however many names it has) and what ``prune``
    would reclaim."""
    root = ws.require().root
    areas: dict[str, list[int]] = {}
    seen: set[tuple[int, int]] = set()
    for top in _walk_order(root):
        tops = [(top, top.lstat())] if top.is_file() else _files(top) if top.is_dir() else []
        for p, st in tops:
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            a = areas.setdefault(area_of(p.relative_to(root).parts), [0, 0])
            a[0] += _on_disk(st)
            a[1] += 1
    items = prunable(ws)
    return {"workspace": ws.home, "root": str(root),
            "total_bytes": sum(b for b, _ in areas.values()),
            "areas": [{"area": k, "bytes": b, "files": n}
                      for k, (b, n) in sorted(areas.items(), key=lambda kv: -kv[1][0])],
            "prunable": [i.to_dict() for i in items],
            "prunable_bytes": sum(i.bytes for i in items)}


def _link(keep: Path, dup: Path) -> bool:
    """Make ``dup`` a hard link of ``keep`` if their bytes are still the same (one rename: a
    reader opens the old file or the link, both with the same bytes)."""
    if not (keep.is_file() and dup.is_file()) or keep.stat().st_size != dup.stat().st_size:
        return False
    if keep.stat().st_ino == dup.stat().st_ino or _digest(keep) != _digest(dup):
        return False
    tmp = dup.with_name(f".{dup.name}.link-{uuid.uuid4().hex[:8]}")
    os.link(keep, tmp)
    os.replace(tmp, dup)
    return True


def _apply(ws: Workspace, item: Prunable) -> bool:
    """Prune one item, checked again (under the writer lock); -> whether its space is free."""
    path = Path(item.path)
    if item.kind == "duplicate":
        assert item.keep is not None
        return _link(Path(item.keep), path)
    if item.kind == "checkpoints" and not (path.parent / "manifest.json").is_file():
        return False
    shutil.rmtree(path, ignore_errors=True)  # staging: taking the lock may have cleared it
    return not path.exists()


def prune(ws: Workspace, dry_run: bool = False) -> dict[str, Any]:
    """Reclaim what ``prunable`` lists (``dry_run``: only say what); -> the items and the bytes
    freed."""
    ws.require()
    items = prunable(ws)
    done = items
    if not dry_run:
        with ws.lock("ctxvec workspace prune"):  # also clears a killed writer's staging
            done = [i for i in items if _apply(ws, i)]
    return {"workspace": ws.home, "dry_run": dry_run, "pruned": [i.to_dict() for i in done],
            "freed_bytes": sum(i.bytes for i in done)}
