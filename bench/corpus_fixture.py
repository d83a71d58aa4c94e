"""A workspace holding the whole Wikipedia corpus as one snapshot, built once per benchmark."""

from __future__ import annotations

import logging
from pathlib import Path

from measure import SHARED_DATA

from ctxvec.artifacts import Snapshot
from ctxvec.config import load_config
from ctxvec.ingest.snapshot import run_ingest
from ctxvec.workspace import Workspace

CORPUS = SHARED_DATA / "enwiki-wikiextractor"


def wiki_snapshot(home: Path, workers: int = 2) -> tuple[Workspace, Snapshot]:
    logging.getLogger("ctxvec").setLevel(logging.WARNING)
    ws = Workspace(home).ensure()
    cfg = load_config(None, [f"ingest.sources=[{CORPUS}]", f"ingest.workers={workers}"])
    return ws, run_ingest(cfg, ws)
