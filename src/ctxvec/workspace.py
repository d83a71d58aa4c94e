"""The workspace: one folder (``CTXVEC_HOME``) that holds everything a run writes.

Each stage writes into a staging folder and renames it into place when it is complete, so a crash
never leaves a half-written stage where a reader could find it. Every stage folder carries a
``manifest.json`` (config hash, inputs, counts, versions, timings).

``CTXVEC_HOME`` may also be a URI (``s3://bucket/prefix``: ``ctxvec.storage``). ``root`` is then
a local cache folder (``CTXVEC_CACHE``, default ``~/.cache/ctxvec/<hash of the URI>``) where the
code that needs local files works as before; each stage folder of ``snapshots/``,
``tokenizers/``, ``embeddings/`` and ``indexes/`` is uploaded to the same key under the URI before
it is renamed into place, and readers go through ``local_dir``, which takes a local path or a URI
and fetches what the cache lacks. References that outlive the process (the ``index_uri`` tag,
the ``corpus`` and ``embeddings`` of manifests) are written with ``uri_for``: store URIs when the
workspace is remote, so that another machine with an empty cache can follow them.

Writers hold the workspace lock (``Workspace.lock``): a ``flock`` on ``<root>/workspace.lock``,
which the kernel releases when the holder dies, however it dies. Every command that writes stage
folders or registers versions takes it (the stage graph's ``execute``, ``ctxvec ingest``,
``ctxvec tokenizer train``); readers (query, serve) do not. A second writer fails at once with
``WorkspaceBusyError`` naming the holder's pid and command, or waits up to
``$CTXVEC_LOCK_TIMEOUT`` seconds for it. Taking the lock also clears what a killed writer left:
staging folders (``.tmp-*``) are removed and a folder a swap left half-done (``.old-*``) is put
back. The lock is per machine: two machines writing one store URI are not kept apart.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxvec import __version__
from ctxvec.errors import UserInputError
from ctxvec.faults import crash_point
from ctxvec.storage import (
    MANIFEST,
    PUBLISHED_STAGES,
    IncompleteStageError,
    ObjectStore,
    StoreError,
    is_uri,
    normalize_uri,
    open_store,
)

# Schemes MLflow has an artifact repository for: a remote workspace keeps artifacts there.
MLFLOW_ARTIFACT_SCHEMES = ("s3", "gs", "wasbs", "abfss", "hdfs", "file")
DEFAULT_HOME = ".ctxvec"
LOCK_FILE = "workspace.lock"
LOCK_TIMEOUT_ENV = "CTXVEC_LOCK_TIMEOUT"  # seconds a writer waits for the lock (default 0)
# the folders only lock holders stage into: their leftovers are a dead writer's
STAGED_KINDS = ("snapshots", "tokenizers", "packed", "mined", "runs", "embeddings", "indexes")

log = logging.getLogger(__name__)
_held: dict[str, list] = {}  # lock file -> [fd, depth] while this process holds it
_held_guard = threading.Lock()


class WorkspaceBusyError(UserInputError):
    """Another process holds the workspace's writer lock (CLI exit code 2)."""


class WorkspaceNotFoundError(UserInputError):
    """A command that reads a workspace found none where it looked (CLI exit code 2)."""


def _not_found(root: Path) -> str:
    """Where a reader looked, why, and how to point at a workspace (the nearest one above)."""
    named = os.environ.get("CTXVEC_HOME")
    why = (f"CTXVEC_HOME={named}" if named else
           f"CTXVEC_HOME is not set, so {DEFAULT_HOME} in the current folder")
    here = Path.cwd().resolve()
    found = next((p / DEFAULT_HOME for p in (here, *here.parents)
                  if (p / DEFAULT_HOME / "mlflow.db").is_file()), None)
    hint = (f"CTXVEC_HOME={found} (found above this folder)" if found
            else "CTXVEC_HOME=/path/to/workspace (the folder `ctxvec run` wrote)")
    return (f"no ctxvec workspace at {root} ({why}); nothing was created there. Point at the "
            f"workspace to read: {hint}, or run the command from the folder that holds it")


def home_from_env() -> Path:
    """The local root of ``$CTXVEC_HOME``: the folder itself, or the cache of a URI home."""
    return Workspace.from_env().root


def cache_root(uri: str) -> Path:
    """The local cache of a remote workspace: ``$CTXVEC_CACHE``, else one folder per URI under
    ``$XDG_CACHE_HOME/ctxvec`` (``~/.cache/ctxvec``)."""
    if os.environ.get("CTXVEC_CACHE"):
        return Path(os.environ["CTXVEC_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    return base / "ctxvec" / sha256_text(uri)[:12]


@dataclass(frozen=True)
class Workspace:
    root: Path  # local folder; for a remote workspace, its cache
    uri: str | None = None  # the store URI when CTXVEC_HOME is one (s3://bucket/prefix)

    @classmethod
    def from_env(cls) -> Workspace:
        return cls.at(os.environ.get("CTXVEC_HOME", DEFAULT_HOME))

    @classmethod
    def at(cls, home: str | Path) -> Workspace:
        """The workspace a ``CTXVEC_HOME`` value names: a local folder, or a store URI."""
        if is_uri(home):
            uri = normalize_uri(str(home))
            return cls(cache_root(uri), uri)
        return cls(Path(home).expanduser())

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    @property
    def home(self) -> str:
        """What names this workspace to another process: the URI, else the folder."""
        return self.uri or str(self.root)

    @property
    def store(self) -> ObjectStore:
        assert self.uri, "a local workspace has no store"
        return open_store(self.uri)

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

    @property
    def mlflow_artifact_location(self) -> str:
        """Where the embedded MLflow puts artifacts: on the store for a remote workspace (when
        MLflow has an artifact repository for its scheme), so that another machine can download
        the registered models; else the local folder."""
        if self.uri and self.uri.split("://", 1)[0].lower() in MLFLOW_ARTIFACT_SCHEMES:
            return f"{self.uri}/mlartifacts"
        return self.mlflow_artifacts.as_uri()

    def require(self) -> Workspace:
        """This workspace if it exists: a reader must not leave an empty one where it runs."""
        if self.uri:
            return self.ensure()
        if not self.root.is_dir():
            raise WorkspaceNotFoundError(_not_found(self.root))
        return self

    def ensure(self) -> Workspace:
        if self.uri:
            self.store  # noqa: B018 - opening checks scheme, endpoint and bucket, before any write
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    # --- stage folders on the store (a remote workspace); the identity for a local one -------

    def uri_for(self, path: str | Path) -> str:
        """How a stage folder (or a path inside one) is named for other machines: its store URI
        when the workspace is remote, else the path as it is."""
        key = self._stage_key(path)
        return f"{self.uri}/{key}" if key else str(path)

    def local_dir(self, ref: str | Path) -> Path:
        """A local folder for a stage folder reference (a local path or a URI of this
        workspace's store), fetched into the cache when the cache lacks it or holds an older
        version (the manifests differ). Other local paths come back unchanged."""
        key = self._key_of_uri(str(ref)) if is_uri(ref) else self._stage_key(ref)
        if key is None:
            return Path(ref)
        stage, sub = _split_key(key)
        folder = self._fetch(stage)
        return folder / sub if sub else folder

    def stage_manifest(self, ref: str | Path) -> dict[str, Any] | None:
        """The manifest of a committed stage folder (local path or URI), read without fetching
        the folder; None when there is none (absent, or its publish was interrupted)."""
        key = self._key_of_uri(str(ref)) if is_uri(ref) else self._stage_key(ref)
        if key is None:
            path = Path(ref) / MANIFEST
            return read_json(path) if path.is_file() else None
        data = self.store.manifest(key)
        return json.loads(data) if data is not None else None

    def committed_dirs(self, kind: str) -> list[Path]:
        """Local copies of every committed stage folder of one kind (``snapshots``) of a
        remote workspace, in name order; a folder whose publish was interrupted is skipped."""
        return [self._fetch(f"{kind}/{name}") for name in self.store.committed(kind)]

    def _stage_key(self, path: str | Path) -> str | None:
        """``kind/name[/sub]`` for a path inside a published stage folder of a remote
        workspace's cache, else None (local workspace, or a folder that stays local)."""
        if not self.uri or is_uri(path):
            return None
        try:
            rel = Path(os.path.abspath(path)).relative_to(self.root)
        except ValueError:
            return None
        parts = rel.parts
        if len(parts) < 2 or parts[0] not in PUBLISHED_STAGES or parts[1].startswith("."):
            return None
        return rel.as_posix()

    def _key_of_uri(self, uri: str) -> str:
        if not self.uri:
            raise StoreError(f"{uri} is in an object store, but this workspace is the local "
                             f"folder {self.root}: set CTXVEC_HOME to that store's workspace URI")
        uri = uri.rstrip("/")
        key = uri[len(self.uri) + 1:] if uri.startswith(self.uri + "/") else ""
        if not key:
            raise StoreError(f"{uri} is not in this workspace ({self.uri}): set CTXVEC_HOME to "
                             "the workspace that wrote it")
        parts = key.split("/")
        if (parts[0] not in PUBLISHED_STAGES or len(parts) < 2 or parts[1].startswith(".")
                or any(p in ("", ".", "..") for p in parts)):
            raise StoreError(f"{uri} is no stage folder of {self.uri} (one of "
                             f"{', '.join(PUBLISHED_STAGES)})")
        return key

    def _fetch(self, stage: str) -> Path:
        """The cache's copy of one committed stage folder (``indexes/v3``), made current."""
        remote = self.store.manifest(stage)
        final = self.root / stage
        if remote is None:
            uri = self.store.uri_of(stage)
            if self.store.has_files(stage):
                raise IncompleteStageError(
                    f"{uri} is incomplete: it has no {MANIFEST}, so its upload was interrupted; "
                    "run the stage that writes it again")
            raise StoreError(f"{uri} does not exist")
        local = final / MANIFEST
        if local.is_file() and local.read_bytes() == remote:
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".fetch-{final.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            self.store.download(stage, tmp, remote)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _move_into_place(tmp, final)
        return final

    def _publish(self, tmp: Path, final: Path) -> None:
        """Upload a finished staging folder when ``final`` is a published stage folder of a
        remote workspace (before it is renamed into place: a failed upload leaves no local
        folder that claims to be published)."""
        key = self._stage_key(final)
        if key is not None:
            assert "/" not in key.split("/", 1)[1], f"{final} is not a stage folder"
            self.store.publish(tmp, key)

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
            self._publish(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        crash_point(f"before-rename:{self._kind_of(final)}")
        _move_into_place(tmp, final)

    def _kind_of(self, path: Path) -> str:
        """``snapshots`` for a folder under ``<root>/snapshots``; else its parent's name."""
        try:
            return Path(os.path.abspath(path)).relative_to(self.root).parts[0]
        except (ValueError, IndexError):
            return path.parent.name

    @contextlib.contextmanager
    def resumable_dir(self, final: Path, key: str) -> Iterator[Path]:
        """Like ``stage_dir``, but the staging folder survives a failure and is handed back to
        the next attempt with the same ``key`` (a hash of everything its contents depend on), so
        work written into it atomically piece by piece is not done twice."""
        final.parent.mkdir(parents=True, exist_ok=True)
        work = final.parent / f".partial-{final.name}-{key[:16]}"
        work.mkdir(exist_ok=True)
        yield work
        self._publish(work, final)
        _move_into_place(work, final)

    # --- the writer lock ------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, what: str | None = None) -> Iterator[None]:
        """Hold the workspace's writer lock for the block (see the module docstring). Re-entrant
        within a process; ``what`` names the holder in the message another writer gets (default:
        this process's command line). Under torchrun, rank 0 holds it for every rank."""
        if os.environ.get("LOCAL_RANK") is not None and os.environ.get("RANK", "0") != "0":
            yield
            return
        path = self.root / LOCK_FILE
        with _held_guard:
            held = _held.get(str(path))
            if held:
                held[1] += 1
            else:
                self.root.mkdir(parents=True, exist_ok=True)
                _held[str(path)] = [_acquire(path, what or " ".join(sys.argv)), 1]
                try:
                    self.clean_staging()
                except OSError as e:  # a leftover that cannot go is no reason not to write
                    log.warning("workspace: could not clear a killed writer's leftovers: %s", e)
        try:
            yield
        finally:
            with _held_guard:
                held = _held[str(path)]
                held[1] -= 1
                if held[1] == 0:
                    del _held[str(path)]
                    os.close(held[0])  # releases the flock

    def clean_staging(self) -> list[Path]:
        """Clear what killed writers left in the stage folders: staging folders (``.tmp-*``)
        are removed; a folder whose swap was cut between its two renames (``.old-NAME-*`` with
        no ``NAME``) is put back. Only while holding the lock: no live writer stages there
        then. -> the paths removed or restored. ``.partial-*`` folders (resumable work) stay."""
        done: list[Path] = []
        parents = [self.root / k for k in STAGED_KINDS]
        parents += [d for d in (self.root / "runs").glob("*") if d.is_dir()]
        for parent in parents:
            if not parent.is_dir():
                continue
            for entry in sorted(parent.iterdir()):
                if entry.name.startswith(".old-") and entry.is_dir():
                    name = entry.name[len(".old-"):].rsplit("-", 1)[0]
                    if not (parent / name).exists():
                        entry.rename(parent / name)
                        done.append(parent / name)
                        continue
                elif not (entry.name.startswith(".tmp-") and entry.is_dir()):
                    continue
                shutil.rmtree(entry, ignore_errors=True)
                done.append(entry)
        if done:
            log.info("workspace: cleared %d folder(s) a killed writer left: %s", len(done),
                     ", ".join(str(p.relative_to(self.root)) for p in done))
        return done


def _acquire(path: Path, what: str) -> int:
    """Open and flock ``path`` (waiting up to ``$CTXVEC_LOCK_TIMEOUT`` s), then write who holds
    it; -> the descriptor (closing it releases the lock)."""
    try:
        timeout = float(os.environ.get(LOCK_TIMEOUT_ENV) or 0)
    except ValueError:
        raise UserInputError(f"{LOCK_TIMEOUT_ENV} must be a number of seconds, got "
                             f"{os.environ[LOCK_TIMEOUT_ENV]!r}") from None
    deadline = time.monotonic() + timeout
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    said = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise WorkspaceBusyError(
                    f"workspace {path.parent} is in use by {_holder(path)}; run this again when "
                    f"it has finished, or set {LOCK_TIMEOUT_ENV}=SECONDS to wait for it (a "
                    "holder that dies releases the lock by itself)") from None
            if not said:
                log.warning("workspace %s is in use by %s; waiting up to %.0f s", path.parent,
                            _holder(path), timeout)
                said = True
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": what[:500],
              "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
    return fd


def _holder(path: Path) -> str:
    """Who holds the lock, as its holder wrote it."""
    try:
        h = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {h['pid']} on {h['host']} ({h['command']}, since {h['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _split_key(key: str) -> tuple[str, str]:
    """``indexes/v3/senses`` -> (``indexes/v3``, ``senses``): the stage folder, whose manifest
    commits it, and the path inside it."""
    parts = key.split("/")
    return "/".join(parts[:2]), "/".join(parts[2:])


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
    manifest = {
        "stage": stage,
        "ctxvec_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - started, 3),
        **fields,
    }
    write_json(folder / "manifest.json", manifest)
    return manifest
