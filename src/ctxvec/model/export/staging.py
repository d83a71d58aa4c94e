"""Writing an export atomically: into a hidden sibling folder, renamed into place at the end.

A failed or interrupted export never leaves a half-written folder where the user asked for one,
and ``--force`` replaces an old export only once the new one is complete and checked.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from ctxvec.errors import UserInputError


class OutputExistsError(UserInputError):
    """The output folder is there and holds files, and replacing it was not asked for."""


def check_output(out: Path, force: bool) -> Path:
    """The absolute output folder, refused before any work if it is a file, or a folder that
    holds files and ``force`` is off."""
    out = out.expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"--out {out} exists and is not empty: choose another folder, "
                                "or pass --force to replace it")
    return out


def _usual_modes(folder: Path) -> None:
    """Give every file and folder the mode a new one gets here (the umask's): transformers
    writes weights through a private temporary file (mode 0600), which nobody else could read."""
    probe = folder / ".mode-probe"
    probe.touch()
    file_mode = probe.stat().st_mode & 0o777
    probe.unlink()
    dir_mode = folder.stat().st_mode & 0o777  # made by mkdir: umask applied
    for p in folder.rglob("*"):
        p.chmod(dir_mode if p.is_dir() else file_mode)


@contextlib.contextmanager
def staged_dir(out: Path, force: bool) -> Iterator[Path]:
    """A fresh folder next to ``out`` to write the export into; when the block ends without an
    error it becomes ``out`` (an old ``out`` is moved aside first and removed after), otherwise it
    is removed."""
    out = check_output(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    staging = out.parent / f".{out.name}.export-{tag}"
    staging.mkdir()
    try:
        yield staging
        _usual_modes(staging)
        old = None
        if out.exists():  # empty, or --force (checked again: it may have changed meanwhile)
            check_output(out, force)
            old = out.parent / f".{out.name}.replaced-{tag}"
            out.rename(old)
        staging.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful rename
