"""The stage cache of the flows: a stage whose inputs did not change is not run again.

The cache key of a stage is the stage's own idempotence key (``Stage.key`` in ``ctxvec.stages``:
its name, config sections, upstream records, fingerprints of the files they point at, and what
else it declares), so whether a stage is already done is decided in one place. A stage's record
is kept as ``<home>/prefect-results/<key>``: a JSON record (``ctxvec.stages.records``) that
ctxvec writes atomically and reads itself. Nothing in the folder is ever unpickled, imported or
handed to Prefect to decode: Prefect's own result files name the serializer that reads them back
(a planted file naming ``pickle`` was unpickled, whatever the task's serializer, and Prefect's
JSON serializer imports classes by name), so its result persistence is off for these tasks. A
hit is reported to Prefect as a ``Completed`` state named ``Cached``.

A record read back is used only if it is valid (a record type of ``ctxvec.artifacts``, every
field of its declared type) and usable (``Stage.usable``: the type the stage returns, naming only
paths inside this workspace, files that exist; for ``register``, the registry still holds the
version, made by the same MLflow run). A file that is not a valid record (a pickle, garbage, a
former ctxvec's Prefect result) is refused and overwritten by the stage's new record. A valid
record that is not usable is superseded: the key moves to a successor key (a hash of the old
one), the stage runs again, and its new record is stored there; the next run follows the same
chain to it.

Not cached: stages without a key (ingest, promote, the sample query, the continual update's
stages) and runs the stage declines to key (training with ``train.resume=false``, a tokenizer
taken from a model). ``PREFECT_TASKS_REFRESH_CACHE=true`` runs every stage again and overwrites
what is cached.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect.settings import PREFECT_TASKS_REFRESH_CACHE

from ctxvec.stages import Stage, records
from ctxvec.stages.keys import digest
from ctxvec.workspace import Workspace, atomic_write_bytes

RESULTS_DIR = "prefect-results"  # under the workspace root
_MAX_SUPERSEDED = 100


def results_dir(ws: Workspace) -> Path:
    return ws.root / RESULTS_DIR


def lookup(stage: Stage, ws: Workspace, key: str,
           log: logging.Logger | logging.LoggerAdapter) -> tuple[Any | None, str]:
    """(the usable record cached under ``key`` or its successors, or None; the key the stage's
    record is to be stored under when there is none)."""
    if PREFECT_TASKS_REFRESH_CACHE.value():
        return None, key
    for _ in range(_MAX_SUPERSEDED):
        path = results_dir(ws) / key
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None, key
        try:
            record = records.loads(blob)
        except records.RecordError as e:
            log.warning("%s: cached record %s refused (%s): running the stage again and "
                        "replacing it", stage.name, path, e)
            return None, key
        if stage.usable(record, ws):
            return record, key
        log.info("%s: the cached record is not this stage's, or points at files or a model "
                 "version that are gone; running the stage again", stage.name)
        key = digest(key, "superseded")
    return None, key


def store(ws: Workspace, key: str, record: Any) -> None:
    """Cache ``record`` under ``key`` (written whole or not at all)."""
    atomic_write_bytes(results_dir(ws) / key, records.dumps(record))
