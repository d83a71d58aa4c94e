"""From the model reference a user typed to what a command needs: a local folder, an encoder, a
registry reference that has an index, or the label embeddings carry.

Each of these was written out at every command that takes ``--model``; here each is written once,
so that the switch to typed references (``ModelRef``) and one ``Registry(ws)`` per workspace is
one edit per function. Reference kinds are those of ``ctxvec.model.refs``: ``minilm``, a model
folder, ``models:/<name>@<alias>`` or ``models:/<name>/<version>``.
"""

from __future__ import annotations

from pathlib import Path

from ctxvec.model.encoder import Encoder
from ctxvec.model.refs import MINILM, ModelRefError, is_registry_ref, resolve_model_ref
from ctxvec.registry.store import get_version
from ctxvec.workspace import Workspace, sha256_text


def champion_ref(model_name: str) -> str:
    """The reference that follows a registered model's champion as it moves."""
    return f"models:/{model_name}@champion"


def indexed_ref(ref: str | None, model_name: str) -> str:
    """The registry reference a search or a server reads (default: ``model_name``'s champion).
    Only registered versions have an index linked to them, so anything else is refused."""
    ref = ref or champion_ref(model_name)
    if not is_registry_ref(ref):
        raise ModelRefError("--model must be a registry reference (models:/<name>@<alias> or "
                            "models:/<name>/<version>): only registered versions have an index")
    return ref


def model_dir(ws: Workspace, ref: str) -> Path:
    """A local folder with the model's config, weights and tokenizer; a registry version is
    downloaded once into the workspace cache (versions never change)."""
    return resolve_model_ref(ref, ws.root)


def load_encoder(ws: Workspace, ref: str, **kwargs) -> Encoder:
    """The encoder a reference names, loaded for inference (``kwargs`` go to ``Encoder.load``)."""
    return Encoder.load(model_dir(ws, ref), **kwargs)


def embedding_label(ws: Workspace, ref: str, folder: Path) -> str:
    """The ``model_version`` embeddings are labelled with: the registry version number; else a
    name derived from the folder and its weights, so that two different folders never share one
    (an index built from one set of vectors must never be searched with the other's queries)."""
    if is_registry_ref(ref):
        return get_version(ws, ref).version
    if ref == MINILM:
        return MINILM
    weights = sorted(folder.glob("*.safetensors"))
    stamp = ";".join(f"{f.name}:{f.stat().st_size}" for f in weights)
    return f"{folder.name}-{sha256_text(str(folder.resolve()) + stamp)[:8]}"
