"""The workspace: one folder (``CTXVEC_HOME``) that holds everything a run writes.

Each stage writes into a staging folder and renames it into place when it is complete, so a crash
never leaves a half-written stage where a reader could find it. Every stage folder carries a
``manifest.json`` (config hash, inputs, counts, versions, timings).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_HOME = ".ctxvec"


def home_from_env() -> Path:
    return Path(os.environ.get("CTXVEC_HOME", DEFAULT_HOME)).expanduser().resolve()


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def from_env(cls) -> Workspace:
        return cls(home_from_env())

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    # Where each stage lives; one folder per stage output, named by id.
    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def tokenizers(self) -> Path:
        return self.root / "tokenizers"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    @property
    def indexes(self) -> Path:
        return self.root / "indexes"

    @property
    def model_cache(self) -> Path:
        return self.root / "cache" / "models"

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    def ensure(self) -> Workspace:
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    @contextlib.contextmanager
    def stage_dir(self, final: Path) -> Iterator[Path]:
        """Yield a staging folder that becomes ``final`` only if the block succeeds.

        An existing ``final`` is replaced in one rename-swap, so readers see the old or the new
        folder, never a mix.
        """
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _move_into_place(tmp, final)


    @contextlib.contextmanager
    def resumable_dir(self, final: Path, key: str) -> Iterator[Path]:
        """Like ``stage_dir``, but the staging folder survives a failure and is handed back to
        the next attempt with the same ``key`` (a hash of everything its contents depend on), so
        work written into it atomically piece by piece is not done twice."""
        final.parent.mkdir(parents=True, exist_ok=True)
        work = final.parent / f".partial-{final.name}-{key[:16]}"
        work.mkdir(exist_ok=True)
        yield work
        _move_into_place(work, final)


def _move_into_place(src: Path, final: Path) -> None:
    """Rename ``src`` to ``final``; an existing ``final`` is swapped out first and removed, so
    readers see the old folder or the new one, never a mix."""
    if final.exists():
        old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        final.rename(old)
        src.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        src.rename(final)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_manifest(folder: Path, stage: str, started: float, **fields: Any) -> dict[str, Any]:
    """Write ``folder/manifest.json`` with the fields every stage shares plus its own."""
    from ctxvec import __version__

    manifest = {
        "stage": stage,
        "ctxvec_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - started, 3),
        **fields,
    }
    write_json(folder / "manifest.json", manifest)
    return manifest
