"""Stage folders on an S3-compatible object store, or any filesystem pyarrow or fsspec reaches.

When ``CTXVEC_HOME`` is a URI (``s3://bucket/prefix``, ``gs://...``, ``file:///...``) the
workspace keeps a local cache folder for the code that needs local files (FAISS, training) and
publishes each stage folder under ``snapshots/``, ``tokenizers/``, ``embeddings/`` and
``indexes/`` to the same key under the URI, so that another machine can read it.

Object stores have no rename, so the local "stage, then rename into place" does not carry over.
Here the commit marker is explicit: a remote stage folder is complete exactly when its
``manifest.json`` exists. ``publish`` first deletes the old manifest (from then on readers see
the folder as incomplete, never a mix of two versions), removes the rest of the old folder,
uploads every other file, and uploads ``manifest.json`` last. Readers never use a folder without
a manifest, and ``download`` re-reads the manifest when it is done, to notice a publish that ran
while it copied.

S3 is reached through ``pyarrow.fs.S3FileSystem`` with the standard AWS environment: the endpoint
from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (MinIO, Ceph, moto...), the region from
``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (looked up from the bucket on AWS itself), credentials
from the usual chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, profiles, instance
roles). Other schemes go through ``pyarrow.fs.FileSystem.from_uri``, and those pyarrow lacks
through fsspec (wrapped in pyarrow's ``FSSpecHandler``, so there is one code path).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
from tqdm.auto import tqdm

from ctxvec.errors import UserInputError
from ctxvec.faults import crash_point

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# The workspace folders whose stage folders are published; runs/, packed/ and caches stay local.
PUBLISHED_STAGES = ("snapshots", "tokenizers", "embeddings", "indexes")
TRANSFER_THREADS = 8
CHUNK = 8 << 20
CONNECT_TIMEOUT_S = 5.0
S3_ATTEMPTS = 3  # per request: an unreachable endpoint fails in seconds, not minutes
PROGRESS_MIN_BYTES = 32 << 20  # a progress bar for transfers at least this big
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class StoreError(UserInputError):
    """The workspace URI names no usable store (bad scheme, unreachable endpoint, no bucket,
    no access), or a stage folder that is not there: the user fixes it, the CLI exits 2."""


class IncompleteStageError(StoreError):
    """A remote stage folder without ``manifest.json``: its publish was interrupted."""


def is_uri(home: str | Path) -> bool:
    """Whether a workspace location is a URI (``scheme://...``) rather than a local path."""
    return bool(_URI.match(str(home)))


def normalize_uri(uri: str) -> str:
    """The URI without trailing slashes, so that keys join onto it one way only."""
    out = uri.rstrip("/")
    if not urllib.parse.urlsplit(out).netloc and not out.lower().startswith("file:"):
        raise StoreError(f"{uri}: no bucket or host in the workspace URI: use e.g. "
                         "s3://BUCKET/PREFIX")
    return out


@dataclass(frozen=True)
class ObjectStore:
    """One workspace URI on its filesystem: ``base`` is the URI's location in ``fs`` terms
    (``bucket/prefix`` for S3). Keys (``indexes/v3``) are relative to it."""

    uri: str
    fs: pafs.FileSystem
    base: str
    endpoint: str | None = None

    def uri_of(self, key: str) -> str:
        return f"{self.uri}/{key}"

    def _path(self, key: str) -> str:
        return f"{self.base}/{key}" if key else self.base

    @property
    def _needs_dirs(self) -> bool:
        """Filesystems with real folders (local, NFS, HDFS) need parents made before a write;
        object stores do not, and making them would only add marker objects."""
        return self.fs.type_name not in ("s3", "gcs")

    # --- reading ------------------------------------------------------------------------------

    def manifest(self, key: str) -> bytes | None:
        """The ``manifest.json`` of a stage folder, or None when the folder is not committed."""
        try:  # one request, not a check and then a read
            with self.fs.open_input_stream(f"{self._path(key)}/{MANIFEST}") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def has_files(self, key: str) -> bool:
        sel = pafs.FileSelector(self._path(key), recursive=True, allow_not_found=True)
        return any(i.type == pafs.FileType.File for i in self.fs.get_file_info(sel))

    def committed(self, kind: str) -> list[str]:
        """Names of the committed stage folders of one kind (``snapshots``), sorted; a folder
        without a manifest (an interrupted publish) is left out. One recursive listing, not a
        request per folder."""
        prefix = f"{self._path(kind)}/"
        sel = pafs.FileSelector(self._path(kind), recursive=True, allow_not_found=True)
        names = set()
        for info in self.fs.get_file_info(sel):
            rel = info.path[len(prefix):] if info.path.startswith(prefix) else ""
            name, _, rest = rel.partition("/")
            if info.type == pafs.FileType.File and rest == MANIFEST and not name.startswith("."):
                names.add(name)
        return sorted(names)

    def download(self, key: str, into: Path, manifest: bytes) -> int:
        """Copy a committed stage folder into the empty local folder ``into``; ``manifest`` is
        its manifest as read before (written last, from those bytes). -> bytes copied.

        Raises if the folder was re-published meanwhile (its manifest changed or vanished): the
        files copied may then mix two versions, and the caller discards them."""
        src = self._path(key)
        infos = [i for i in self.fs.get_file_info(pafs.FileSelector(src, recursive=True))
                 if i.type == pafs.FileType.File and i.path != f"{src}/{MANIFEST}"]
        total = sum(i.size or 0 for i in infos)

        def copy(info: pafs.FileInfo) -> int:
            dst = into / info.path[len(src) + 1:]
            dst.parent.mkdir(parents=True, exist_ok=True)
            with self.fs.open_input_stream(info.path) as fin, open(dst, "wb") as fout:
                shutil.copyfileobj(fin, fout, CHUNK)
            return info.size or 0

        t0 = time.perf_counter()
        _transfer(copy, infos, total, f"fetch {key}")
        if self.manifest(key) != manifest:
            raise StoreError(f"{self.uri_of(key)} was re-published while it was being fetched: "
                             "try again")
        (into / MANIFEST).write_bytes(manifest)
        _log_transfer("fetched", self.uri_of(key), len(infos) + 1, total, t0)
        return total

    # --- writing ------------------------------------------------------------------------------

    def publish(self, local_dir: Path, key: str) -> None:
        """Upload a complete local stage folder to ``key``, replacing what is there: old
        manifest out first, then the old files, the new files, and the new manifest last."""
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        manifest = local_dir / MANIFEST
        if manifest not in files:
            raise ValueError(f"{local_dir} has no {MANIFEST}: a stage folder is published only "
                             "with its manifest, which marks it complete")
        dest = self._path(key)
        t0 = time.perf_counter()
        # 1. retract: from here on readers see the folder as incomplete, never a mix
        self._delete_file(f"{dest}/{MANIFEST}")
        # 2. what an older or interrupted publish left behind
        self.fs.delete_dir_contents(dest, missing_dir_ok=True)
        # 3. every other file; 4. the manifest, last
        others = [f for f in files if f != manifest]
        total = sum(f.stat().st_size for f in files)

        def upload(f: Path) -> int:
            self._upload(f, f"{dest}/{f.relative_to(local_dir).as_posix()}")
            return f.stat().st_size

        _transfer(upload, others, total, f"publish {key}")
        crash_point("publish-before-manifest")
        self._upload(manifest, f"{dest}/{MANIFEST}", atomic=self._needs_dirs)
        _log_transfer("published", self.uri_of(key), len(files), total, t0)

    def _upload(self, src: Path, dst: str, atomic: bool = False) -> None:
        if self._needs_dirs:
            self.fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
        # An object PUT appears whole or not at all; on a real filesystem the manifest goes
        # through a temporary name, so that a reader never sees it half-written.
        target = f"{dst}.uploading" if atomic else dst
        with open(src, "rb") as fin, self.fs.open_output_stream(target) as fout:
            shutil.copyfileobj(fin, fout, CHUNK)
        if atomic:
            self.fs.move(target, dst)

    def _delete_file(self, path: str) -> None:
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            self.fs.delete_file(path)


def _transfer(fn, items: list, total: int, desc: str) -> None:
    """Run ``fn`` (-> bytes moved) over ``items`` on a few threads (pyarrow's I/O releases the
    GIL), with a byte progress bar on stderr for big transfers."""
    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False,
              disable=total < PROGRESS_MIN_BYTES) as bar, \
            ThreadPoolExecutor(min(TRANSFER_THREADS, max(1, len(items)))) as pool:
        for n in pool.map(fn, items):
            bar.update(n)


def _log_transfer(verb: str, uri: str, files: int, size: int, t0: float) -> None:
    s = time.perf_counter() - t0
    log.info("storage: %s %s (%d files, %.1f MB in %.1fs, %.1f MB/s)", verb, uri, files,
             size / 1e6, s, size / 1e6 / max(s, 1e-6))


# --- opening a store --------------------------------------------------------------------------

_open_stores: dict[tuple, ObjectStore] = {}
_open_lock = threading.Lock()


def open_store(uri: str) -> ObjectStore:
    """The store of a workspace URI, checked once per process (and per endpoint setting): the
    scheme is known, the endpoint answers, the bucket exists and we may read it."""
    uri = normalize_uri(uri)
    key = (uri, *(os.environ.get(k) for k in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL",
                                                "AWS_REGION", "AWS_DEFAULT_REGION")))
    with _open_lock:
        if key not in _open_stores:
            store = _connect(uri)
            _check(store)
            _open_stores[key] = store
        return _open_stores[key]


def _connect(uri: str) -> ObjectStore:
    scheme = uri.split("://", 1)[0].lower()
    if scheme in ("s3", "s3a"):
        return _s3(uri)
    try:
        fs, base = pafs.FileSystem.from_uri(uri)
    except pa.ArrowInvalid:  # a scheme pyarrow lacks: fsspec may know it
        try:
            import fsspec

            ffs, base = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as e:
            raise StoreError(
                f"CTXVEC_HOME={uri}: unknown storage scheme {scheme!r} ({e}); use a local "
                "folder, s3://BUCKET/PREFIX (S3-compatible, endpoint from AWS_ENDPOINT_URL), "
                "or another scheme pyarrow or an installed fsspec package knows") from None
        fs = pafs.PyFileSystem(pafs.FSSpecHandler(ffs))
    except OSError as e:
        raise StoreError(f"CTXVEC_HOME={uri}: cannot open its filesystem: {e}") from None
    return ObjectStore(uri, fs, base.rstrip("/"))


def _s3(uri: str) -> ObjectStore:
    parts = urllib.parse.urlsplit(uri)
    bucket, prefix = parts.netloc, parts.path.strip("/")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region and not endpoint:  # AWS itself: the bucket's own region
        try:
            region = pafs.resolve_s3_region(bucket)
        except OSError as e:
            raise StoreError(f"CTXVEC_HOME={uri}: cannot find bucket {bucket!r} on AWS: {e}; "
                             "for another S3-compatible server set AWS_ENDPOINT_URL") from None
    fs = pafs.S3FileSystem(
        region=region or "us-east-1", endpoint_override=endpoint,
        connect_timeout=CONNECT_TIMEOUT_S,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS),
    )
    return ObjectStore(uri, fs, f"{bucket}/{prefix}" if prefix else bucket, endpoint)


def _check(store: ObjectStore) -> None:
    """Fail now, with the URI and the fix, rather than in the middle of a pipeline run."""
    where = f" at {store.endpoint}" if store.endpoint else ""
    if store.fs.type_name == "s3":
        bucket = store.base.split("/", 1)[0]
        try:
            info = store.fs.get_file_info(bucket)
        except OSError as e:
            raise StoreError(
                f"CTXVEC_HOME={store.uri}: cannot reach the object store{where}: "
                f"{_first_line(e)} (check AWS_ENDPOINT_URL and the AWS_* credentials)") from None
        if info.type == pafs.FileType.NotFound:
            raise StoreError(f"CTXVEC_HOME={store.uri}: bucket {bucket!r} does not exist{where}: "
                             "create it first (e.g. `mc mb` or `aws s3 mb`)")
        return
    try:
        info = store.fs.get_file_info(store.base)
        if info.type == pafs.FileType.NotFound and store._needs_dirs:
            store.fs.create_dir(store.base, recursive=True)
        elif info.type == pafs.FileType.File:
            raise StoreError(f"CTXVEC_HOME={store.uri} is a file, not a folder")
    except OSError as e:
        raise StoreError(f"CTXVEC_HOME={store.uri}: cannot reach it: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
