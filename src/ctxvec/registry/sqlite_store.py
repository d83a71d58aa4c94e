"""The embedded MLflow store, ``$CTXVEC_HOME/mlflow.db``: built atomically, repaired after a kill,
and moved along with a copied workspace.

MLflow builds its SQLite schema in place, in some 1,700 statements (a ``create_all`` and then
every Alembic migration), and SQLite commits each ``CREATE`` on its own. A process killed in
between left a file that MLflow never opened again (``table ... already exists`` on every later
command, although ``PRAGMA integrity_check`` says ok). Here the schema is built on a file beside
it (``mlflow.db.new-<random>``), checked, and renamed into place, so ``mlflow.db`` is either
absent or complete.

A file that a kill left half-migrated (by an older ctxvec, or by MLflow's own set-up or upgrade)
is rebuilt without losing what it holds: a fresh schema at the revision the file records, its
rows copied in, then MLflow's own migrations up to the head; the file as it was is kept beside it
(``mlflow.db.before-repair-<time>``). An older schema that is merely out of date takes the same
path, which is MLflow's upgrade run on a copy.

A copied or moved workspace carries a database whose artifact locations name the original
folder, so new artifacts went into the original's ``mlartifacts``. When the database is opened,
locations under another workspace's ``mlartifacts`` (and paths under its root in version tags,
such as ``index_uri``) are pointed at this workspace.

All of this runs under an exclusive lock (``mlflow.db.lock``, released by the kernel when its
holder dies). The usual case, a complete database of this workspace, takes one read and no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import logging
import os
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from ctxvec.faults import ENV as CRASH_ENV
from ctxvec.faults import crash_point

log = logging.getLogger(__name__)

DB_NAME = "mlflow.db"
LOCK_NAME = "mlflow.db.lock"
NEW_PREFIX = "mlflow.db.new-"  # a schema being built; removed by the next set-up if left
BACKUP_PREFIX = "mlflow.db.before-repair-"
SQL_CRASH_PREFIX = "mlflow-setup-sql-"  # crash point before the n-th statement of a build
_BATCH_TMP = "_alembic_tmp_"  # Alembic's copy of a table it is rebuilding (SQLite batch mode)
# an experiment location that ctxvec set: <root>/mlartifacts of the workspace that made it
_LOCATION = re.compile(r"^(?P<uri>file://(?P<root>/.+)/mlartifacts)/?$")


class StoreSetupError(RuntimeError):
    """The workspace's MLflow database cannot be opened or repaired; the message says why."""


@dataclass(frozen=True)
class _State:
    tables: frozenset[str]
    revision: str | None  # what alembic_version records
    locations: tuple[str, ...]  # the experiments' artifact locations


def ensure_store(root: Path) -> Path:
    """``root/mlflow.db`` complete at MLflow's current schema and pointing at ``root``'s
    artifacts: built, repaired or relocated first if it is not. -> its path."""
    db = root / DB_NAME
    state = _read_state(db)
    if state is not None and _complete(state) and not _foreign_roots(state, root):
        return db
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / LOCK_NAME):
        _remove_leftovers(root)
        state = _read_state(db)  # again: another process may have done it while we waited
        if state is None:
            _build_new(db)
        elif not _complete(state):
            _repair(db, state)
        state = _read_state(db)
        assert state is not None
        for old_uri, old_root in _foreign_roots(state, root):
            _relocate(db, old_uri, old_root, root)
    return db


# --- reading ---------------------------------------------------------------------------------


def _read_state(db: Path) -> _State | None:
    """What ``db`` holds; None when there is no file (or an empty one)."""
    if not db.is_file() or db.stat().st_size == 0:
        return None
    try:
        # read-write, so that SQLite rolls back the journal of a writer that was killed
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=rw", uri=True,
                                                timeout=60)) as con:
            tables = frozenset(r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"))
            revision = None
            if "alembic_version" in tables:
                row = con.execute("SELECT version_num FROM alembic_version").fetchone()
                revision = row[0] if row else None
            locations: tuple[str, ...] = ()
            if "experiments" in tables:
                locations = tuple(r[0] or "" for r in con.execute(
                    "SELECT artifact_location FROM experiments"))
    except sqlite3.OperationalError:
        raise  # locked or unreadable for now: not a reason to touch the file
    except sqlite3.DatabaseError as e:
        raise StoreSetupError(f"{db} is not a readable SQLite database ({e}); it was not written "
                              f"by an interrupted set-up. Move it aside to start an empty "
                              "registry, or restore it from a backup") from None
    return _State(tables, revision, locations)


@functools.cache
def _head() -> str:
    """The newest schema revision of the installed MLflow."""
    # lazy: mlflow takes seconds to import; only the registry's own modules import it
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def _complete(state: _State) -> bool:
    """Every table MLflow's models name, at the schema revision this MLflow expects: what
    MLflow checks before it opens a database without touching it."""
    from mlflow.store.db import utils  # lazy: see _head; it also fills Base with every table

    return state.revision == _head() and set(utils.Base.metadata.tables) <= state.tables


def _foreign_roots(state: _State, root: Path) -> list[tuple[str, Path]]:
    """(location URI, workspace root) of each other workspace whose ``mlartifacts`` the
    experiments name: the database was copied or moved from there."""
    found: dict[str, Path] = {}
    for location in state.locations:
        m = _LOCATION.match(location)
        if m is None:
            continue
        old = Path(unquote(m["root"]))
        if old != root and not _same_folder(old, root):
            found[m["uri"]] = old
    return sorted(found.items())


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:  # the other one is gone (moved): not the same
        return False


# --- building --------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes or the process dies
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_leftovers(root: Path) -> None:
    """Schemas whose build was killed (only the lock holder builds, so none is in progress)."""
    for leftover in root.glob(f"{NEW_PREFIX}*"):
        log.info("removing %s, left by an interrupted MLflow set-up", leftover.name)
        leftover.unlink(missing_ok=True)


def _new_path(db: Path) -> Path:
    return db.with_name(f"{NEW_PREFIX}{uuid.uuid4().hex[:12]}")


def _engine(path: Path):
    # lazy: sqlalchemy comes with mlflow and is as slow to import
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(f"sqlite:///{path}", poolclass=NullPool)
    if os.environ.get(CRASH_ENV, "").startswith(SQL_CRASH_PREFIX):  # tests: kill mid-build
        count = itertools.count(1)
        sqlalchemy.event.listen(engine, "before_cursor_execute", lambda *_: crash_point(
            f"{SQL_CRASH_PREFIX}{next(count)}"))
    return engine


def _schema_at(path: Path, revision: str | None) -> None:
    """MLflow's schema on a new file at ``path``, as MLflow builds it (its initial tables, then
    its migrations), up to ``revision`` (None: the initial tables only; "heads": the newest)."""
    # lazy: mlflow takes seconds to import; only the registry's own modules import it
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    engine = _engine(path)
    try:
        InitialBase.metadata.create_all(engine)
        if revision is not None:
            _upgrade(engine, revision)
    finally:
        engine.dispose()


def _upgrade(engine, revision: str) -> None:
    """MLflow's migrations on ``engine`` up to ``revision`` (mlflow.store.db.utils._upgrade_db,
    which goes to the head only)."""
    # lazy: alembic and mlflow take seconds to import
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config

    config = _get_alembic_config(str(engine.url))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def _upgrade_file(path: Path, revision: str) -> None:
    engine = _engine(path)
    try:
        _upgrade(engine, revision)
    finally:
        engine.dispose()


def _check_built(path: Path) -> None:
    state = _read_state(path)
    if state is None or not _complete(state):
        raise StoreSetupError(f"building MLflow's schema in {path} left it incomplete "
                              f"(revision {state.revision if state else None})")


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _build_new(db: Path) -> None:
    """A complete, empty schema renamed into place: a kill leaves at most a ``.new-`` file."""
    new = _new_path(db)
    log.info("creating the MLflow database %s", db)
    try:
        _schema_at(new, "heads")
        _check_built(new)
        _sync(new)
        crash_point("mlflow-setup-before-rename")
        os.replace(new, db)
        _sync(db.parent)
    finally:
        new.unlink(missing_ok=True)


# --- repairing -------------------------------------------------------------------------------


def _repair(db: Path, state: _State) -> None:
    """Rebuild ``db``, which a kill left between two schema revisions (or which is at an older
    one), with every row it holds: a fresh schema at the revision it records, its rows copied
    in, then the migrations to the head. The file as it was stays as a backup."""
    # lazy: mlflow takes seconds to import
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    revision = state.revision
    script = ScriptDirectory.from_config(_get_alembic_config(""))
    if revision is not None and revision not in {r.revision for r in script.walk_revisions()}:
        raise StoreSetupError(f"{db} is at MLflow schema revision {revision}, which this MLflow "
                              "does not know: it was written by a newer MLflow; upgrade mlflow")
    log.warning("%s is incomplete (schema revision %s, not %s): probably a set-up or upgrade "
                "that was killed; rebuilding it with its rows", db, revision, _head())
    new = _new_path(db)
    try:
        _schema_at(new, revision)
        copied = _copy_rows(db, new)
        _upgrade_file(new, "heads")
        _check_built(new)
        _sync(new)
        backup = db.with_name(f"{BACKUP_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-"
                              f"{uuid.uuid4().hex[:4]}")
        _keep_copy(db, backup)  # the old file stays reachable under its own name...
        crash_point("mlflow-repair-before-swap")
        os.replace(new, db)  # ...and mlflow.db is never absent
        _sync(db.parent)
    except Exception as e:
        if isinstance(e, StoreSetupError):
            raise
        raise StoreSetupError(f"{db} is incomplete (schema revision {revision}) and rebuilding "
                              f"it failed ({type(e).__name__}: {e}); it is unchanged. Back it up "
                              f"and run `mlflow db upgrade sqlite:///{db}`") from e
    finally:
        new.unlink(missing_ok=True)
    log.warning("%s rebuilt (%d rows kept); the file as it was is %s", db, copied, backup.name)


def _keep_copy(db: Path, backup: Path) -> None:
    try:
        os.link(db, backup)
    except OSError:  # a file system without hard links
        shutil.copy2(db, backup)


def _copy_rows(src: Path, dst: Path) -> int:
    """Copy every row of ``src`` into the tables of ``dst`` (the columns both have), in one
    transaction; a table that a killed batch migration had moved to ``_alembic_tmp_<name>``
    is read from there. Raises when a table comes out with fewer rows than it went in."""
    total = 0
    with contextlib.closing(sqlite3.connect(f"{dst.as_uri()}?mode=rw", uri=True,
                                            timeout=60)) as con:
        con.execute("ATTACH DATABASE ? AS old", (f"{src.as_uri()}?mode=ro",))
        old_tables = {r[0] for r in con.execute(
            "SELECT name FROM old.sqlite_master WHERE type = 'table'")}
        new_tables = [r[0] for r in con.execute(
            "SELECT name FROM main.sqlite_master WHERE type = 'table' "
            "AND name NOT IN ('alembic_version', 'sqlite_sequence')")]
        with con:
            for table in new_tables:
                source = (table if table in old_tables else f"{_BATCH_TMP}{table}"
                          if f"{_BATCH_TMP}{table}" in old_tables else None)
                if source is None:
                    continue
                total += _copy_table(con, source, table)
    return total


def _copy_table(con: sqlite3.Connection, source: str, table: str) -> int:
    def columns(schema: str, name: str) -> list[str]:
        return [r[1] for r in con.execute(f'PRAGMA {schema}.table_info("{name}")')]

    have = set(columns("old", source))
    cols = ", ".join(f'"{c}"' for c in columns("main", table) if c in have)
    count = con.execute(f'SELECT count(*) FROM old."{source}"').fetchone()[0]
    if not count or not cols:
        return 0
    con.execute(f'INSERT OR REPLACE INTO main."{table}" ({cols}) '
                f'SELECT {cols} FROM old."{source}"')
    now = con.execute(f'SELECT count(*) FROM main."{table}"').fetchone()[0]
    if now < count:
        raise StoreSetupError(f"table {table}: {count} rows in the old file, {now} copied")
    return count


# --- relocating ------------------------------------------------------------------------------


def _relocate(db: Path, old_uri: str, old_root: Path, root: Path) -> None:
    """Point what the database says lives under ``old_root`` (a workspace this one was copied
    or moved from) at ``root``: artifact URIs anywhere in it, artifact paths, and the paths in
    model version tags (``index_uri``). One transaction."""
    new_uri = (root / "mlartifacts").as_uri()
    old_path, new_path = f"{old_root}/mlartifacts", str(root / "mlartifacts")
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con, con:
        changed = 0
        tables = [r[0] for r in con.execute(  # metrics hold numbers under names: no locations
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT IN "
            "('sqlite_sequence', 'metrics', 'latest_metrics')")]
        for table in tables:
            for _, col, kind, *_ in con.execute(f'PRAGMA table_info("{table}")').fetchall():
                if not any(t in kind.upper() for t in ("CHAR", "TEXT", "CLOB")):
                    continue
                changed += con.execute(
                    f'UPDATE "{table}" SET "{col}" = replace("{col}", ?1, ?2) '
                    f'WHERE instr("{col}", ?1) > 0', (old_uri, new_uri)).rowcount
                changed += con.execute(
                    f'UPDATE "{table}" SET "{col}" = ?2 || substr("{col}", length(?1) + 1) '
                    f'WHERE substr("{col}", 1, length(?1) + 1) = ?1 || \'/\'',
                    (old_path, new_path)).rowcount
        changed += con.execute(
            "UPDATE model_version_tags SET value = ?2 || substr(value, length(?1) + 1) "
            "WHERE substr(value, 1, length(?1) + 1) = ?1 || '/' "
            "AND substr(value, 1, length(?2) + 1) != ?2 || '/'",  # a copy inside the original
            (str(old_root), str(root))).rowcount
    log.warning("this workspace's MLflow database came from %s (copied or moved): %d values "
                "now point at %s instead", old_root, changed, root)
