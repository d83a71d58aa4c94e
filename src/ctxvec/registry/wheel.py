"""The installed ctxvec as a wheel file, logged with every registered model.

A registered model's pyfunc imports ctxvec, and ctxvec is on no package index: a model whose
requirements said ``ctxvec==0.1.0`` could only be served where ctxvec was installed already
(``mlflow models serve --env-manager local``). So the register logs this wheel as an artifact of
the model and its ``requirements.txt`` names it by a path inside the model folder, which is where
MLflow's environment managers (virtualenv, uv) run ``pip install -r requirements.txt``.

The wheel is written from the code this process runs (the package folders the interpreter
imports ctxvec from: site-packages, or the source tree of an editable install) and the installed
distribution's metadata, so what serves the model is what registered it. Writing it directly
takes a fraction of a second and leaves nothing behind; ``pip wheel`` on the source tree took
seconds per register and wrote ``build/`` and ``*.egg-info`` into the tree, and a regular install
has no source tree to build from. Entries carry a fixed timestamp, so the same code gives the
same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import zipfile
from importlib.metadata import distribution
from pathlib import Path

DIST = "ctxvec"
_TIMESTAMP = (1980, 1, 1, 0, 0, 0)  # the earliest a zip entry can say
_WHEEL = "Wheel-Version: 1.0\nGenerator: ctxvec\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
# installed metadata files copied as they are; RECORD, INSTALLER, direct_url.json describe the
# install rather than the package
_METADATA_FILES = ("METADATA", "entry_points.txt", "top_level.txt", "licenses/LICENSE")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name} of the {DIST} distribution is not importable")
    return Path(next(iter(spec.submodule_search_locations)))


def _package_files(name: str) -> list[tuple[str, Path]]:
    """(path in the wheel, file) for every file of package ``name``, bytecode left out."""
    root = _package_dir(name)
    return [(f"{name}/{f.relative_to(root).as_posix()}", f) for f in sorted(root.rglob("*"))
            if f.is_file() and "__pycache__" not in f.parts and f.suffix not in (".pyc", ".pyo")]


def _record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def build_wheel(out_dir: Path) -> Path:
    """Write ``ctxvec-<version>-py3-none-any.whl`` into ``out_dir`` -> its path."""
    dist = distribution(DIST)
    version = dist.version
    info = f"{DIST}-{version}.dist-info"
    top_level = (dist.read_text("top_level.txt") or DIST).split()
    entries: list[tuple[str, bytes]] = []
    for package in top_level:
        entries += [(arc, f.read_bytes()) for arc, f in _package_files(package)]
    for name in _METADATA_FILES:
        text = dist.read_text(name)
        if text is not None:
            entries.append((f"{info}/{name}", text.encode()))
    entries.append((f"{info}/WHEEL", _WHEEL.encode()))
    record = "\n".join([_record_line(a, d) for a, d in entries] + [f"{info}/RECORD,,"]) + "\n"
    entries.append((f"{info}/RECORD", record.encode()))

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{DIST}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for arcname, data in entries:
            entry = zipfile.ZipInfo(arcname, _TIMESTAMP)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o644 << 16
            zf.writestr(entry, data)
    return path
