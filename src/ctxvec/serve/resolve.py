"""From the model reference a user typed to what a command needs: a local folder, an encoder, a
registry reference that has an index, or the label embeddings carry.

Each of these was written out at every command that takes ``--model``; here each is written once.
The text is parsed once into a ``ModelRef`` (``minilm``, a model folder,
``models:/<name>@<alias>`` or ``models:/<name>/<version>``); only a registry reference opens the
workspace's ``Registry`` (and imports mlflow), so ``minilm`` and folders stay quick.
"""

from __future__ import annotations

from pathlib import Path

from ctxvec.config import CtxvecConfig
from ctxvec.embed.precision import embed_precision, follow_recorded
from ctxvec.model.encoder import Encoder
from ctxvec.model.refs import local_model_dir
from ctxvec.refs import MINILM, ModelRef, ModelRefError
from ctxvec.registry import Registry
from ctxvec.workspace import Workspace, sha256_text


def champion_ref(model_name: str) -> ModelRef:
    """The reference that follows a registered model's champion as it moves."""
    return ModelRef.registered(model_name, alias="champion")


def indexed_ref(ref: str | ModelRef | None, model_name: str) -> ModelRef:
    """The registry reference a search or a server reads (default: ``model_name``'s champion).
    Only registered versions have an index linked to them, so anything else is refused."""
    mref = ModelRef.parse(ref) if ref else champion_ref(model_name)
    if not mref.is_registry:
        raise ModelRefError("--model must be a registry reference (models:/<name>@<alias> or "
                            "models:/<name>/<version>): only registered versions have an index")
    return mref


def model_dir(ws: Workspace, ref: str | ModelRef) -> Path:
    """A local folder with the model's config, weights and tokenizer; a registry version is
    downloaded once into the workspace cache (versions never change)."""
    mref = ModelRef.parse(ref)
    return Registry(ws).local_dir(mref) if mref.is_registry else local_model_dir(mref)


def load_encoder(ws: Workspace, ref: str | ModelRef, **kwargs) -> Encoder:
    """The encoder a reference names, loaded for inference (``kwargs`` go to ``Encoder.load``)."""
    return Encoder.load(model_dir(ws, ref), **kwargs)


def query_encoder(ws: Workspace, ref: str | ModelRef, precision: str = "auto") -> Encoder:
    """The encoder whose vectors are meant for ``ref``'s index (``ctxvec encode``): a registry
    version runs in the precision its corpus is embedded in (``embed/precision.py``; ``auto``
    follows it, the other one is refused); ``minilm`` and folders as ``ctxvec embed`` embeds
    with them by default (``auto``)."""
    mref = ModelRef.parse(ref)
    if not mref.is_registry:
        return Encoder.load(local_model_dir(mref), precision=precision)
    registry = Registry(ws)
    info = registry.resolve(mref)  # once: the folder and the precision of the same version
    precision = follow_recorded(precision, registry.embed_precision(info),
                                f"{info.ref} (version {info.version})")
    return Encoder.load(registry.local_dir(info), precision=precision)


def embed_config(cfg: CtxvecConfig, ws: Workspace, ref: str | ModelRef) -> CtxvecConfig:
    """``cfg`` for embedding the corpus with ``ref`` (``ctxvec embed``): a registry version is
    embedded in the precision it records, so its index matches its pyfunc and its queries;
    ``embed.precision: auto`` follows the record, the other precision is refused before any
    work. ``cfg`` comes back as it is when it gives that precision here already."""
    mref = ModelRef.parse(ref)
    if not mref.is_registry:
        return cfg
    registry = Registry(ws)
    info = registry.resolve(mref)
    precision = follow_recorded(cfg.embed.precision, registry.embed_precision(info),
                                f"{info.ref} (version {info.version})")
    if precision in (cfg.embed.precision, embed_precision(cfg)):
        return cfg
    return cfg.model_copy(update={"embed": cfg.embed.model_copy(update={"precision": precision})})


def embedding_label(ws: Workspace, ref: str | ModelRef, folder: Path) -> str:
    """The ``model_version`` embeddings are labelled with: the registry version number; else a
    name derived from the folder and its weights, so that two different folders never share one
    (an index built from one set of vectors must never be searched with the other's queries)."""
    mref = ModelRef.parse(ref)
    if mref.is_registry:
        return Registry(ws).resolve(mref).version
    if mref.kind == "minilm":
        return MINILM
    weights = sorted(folder.glob("*.safetensors"))
    stamp = ";".join(f"{f.name}:{f.stat().st_size}" for f in weights)
    return f"{folder.name}-{sha256_text(str(folder.resolve()) + stamp)[:8]}"
