"""The ``faiss`` module, or a message that says which extra installs it.

FAISS is not a core dependency: its CPU build (``faiss-cpu``) and its GPU build
(``faiss-gpu-cu12``) install the same ``faiss`` package, and two builds in one environment
overwrite each other's files (25 in common), which is a known way to break ``import faiss``.
An extra cannot take a core dependency away, so each build is an extra of its own, ``cpu`` or
``gpu``, and exactly one is installed (docs/deploy.md). The index modules import ``faiss`` from
here so that an install with neither says so, instead of a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

from importlib import metadata

from ctxvec.errors import UserInputError

__all__ = ["FaissMissingError", "faiss", "faiss_distributions"]

INSTALL_HINT = ("pip install 'ctxvec[cpu]' (the CPU build, faiss-cpu) or 'ctxvec[gpu]' "
                "(the CUDA 12 build, faiss-gpu-cu12), never both")
FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-gpu", "faiss")


class FaissMissingError(UserInputError):
    """No usable FAISS build in this environment."""


def faiss_distributions() -> list[str]:
    """The FAISS distributions installed here, as ``name==version`` (one, normally)."""
    found = []
    for name in FAISS_DISTRIBUTIONS:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return found


def _import_faiss():
    try:
        import faiss as module
    except ImportError as e:
        installed = faiss_distributions()
        if len(installed) > 1:
            why = (f"several FAISS builds are installed ({', '.join(installed)}) and overwrite "
                   "each other's files: uninstall them all, then")
        elif installed:
            why = f"{installed[0]} is installed but does not import ({e}): reinstall one build,"
        else:
            why = "no FAISS build is installed:"
        raise FaissMissingError(f"ctxvec's indexes need FAISS, and {why} {INSTALL_HINT}") from e
    return module


faiss = _import_faiss()
