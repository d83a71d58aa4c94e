"""Embedding a model once: an embeddings folder that already holds what is asked for is reused,
and re-embedding a version keeps its word vectors (and so its sense index).

The pipeline's embed stage is keyed by its upstream records and cached by the Prefect flows, but
``ctxvec embed --model models:/ctxvec-encoder/1 --index`` has no such records: it used to embed
the corpus again from scratch, with the default recipe's ``embed.words.enabled: false``, and the
index it then rebuilt had no ``senses/``, so sense search for that version exited 2.

Every embed that goes through here (the pipeline's embed stage, ``ctxvec embed``, the deploy of
the continual update) leaves a request record next to the folder it wrote,
``embeddings/.v<N>.request.json``: the model (a registry version with its MLflow run, or a
folder's label and file fingerprint), the corpus, the embed settings the vectors depend on
(``max_tokens``, ``stride``, ``pooling``, ``precision``, ``dtype``; not ``batch_size``, devices
or the engine) and the word-vector settings, plus a hash of the folder's manifest, so a record
whose folder was replaced since no longer counts. A later request for the same model, corpus and
vector settings reuses the folder; asking for no word vectors is satisfied by a folder that has
them. When a version must be embedded again and its folder held word vectors, the new request
takes the same word settings, so its index keeps a sense index.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ctxvec.artifacts import Embeddings, Snapshot
from ctxvec.config import CtxvecConfig
from ctxvec.embed.corpus import run_embed
from ctxvec.stages import keys
from ctxvec.workspace import Workspace, read_json, sha256_file, write_json

log = logging.getLogger(__name__)

VECTOR_SETTINGS = ("max_tokens", "stride", "pooling", "precision", "dtype")
WORD_SETTINGS = ("sample_docs", "layers", "min_chars", "stopwords", "max_per_word")


def request_path(ws: Workspace, version: str) -> Path:
    return ws.embeddings / f".v{version}.request.json"


def model_identity(version: str, model_dir: str | Path, name: str | None = None,
                   run_id: str | None = None) -> dict[str, Any]:
    """What names the weights: a registry version and the MLflow run that made it (versions
    never change), else the label and a fingerprint of the folder's files."""
    if name:
        return {"name": name, "version": version, "run_id": run_id}
    return {"label": version, "files": keys.fingerprint([model_dir])}


def embed_request(cfg: CtxvecConfig, ws: Workspace, snap: Snapshot,
                  model: dict[str, Any]) -> dict[str, Any]:
    e = cfg.embed
    return {"model": model, "corpus": [ws.uri_for(c) for c in snap.corpus],
            "vectors": {k: getattr(e, k) for k in VECTOR_SETTINGS},
            "words": ({k: getattr(e.words, k) for k in WORD_SETTINGS} if e.words.enabled
                      else None)}


def finished(ws: Workspace, version: str, request: dict[str, Any]) -> Embeddings | None:
    """The version's embeddings folder, if a finished embed of the same request wrote it."""
    folder = ws.embeddings / f"v{version}"
    manifest, recorded = folder / "manifest.json", request_path(ws, version)
    if not (manifest.is_file() and recorded.is_file()):
        return None
    done = read_json(recorded)
    if done.get("manifest") != sha256_file(manifest):  # the folder was written again since
        return None
    before = done.get("request", {})
    if any(before.get(k) != request[k] for k in ("model", "corpus", "vectors")):
        return None
    if request["words"] is not None and before.get("words") != request["words"]:
        return None
    m = read_json(manifest)
    return Embeddings(str(folder), m["rows"], m["docs"], m["dim"], version)


def keep_words(cfg: CtxvecConfig, ws: Workspace, version: str) -> CtxvecConfig:
    """``cfg`` asking for the word vectors the version's embeddings hold now, when it asks for
    none: embedding it again must not take its sense index away."""
    manifest = ws.embeddings / f"v{version}" / "manifest.json"
    words = read_json(manifest).get("words") if manifest.is_file() else None
    if cfg.embed.words.enabled or not words:
        return cfg
    kept = {k: words[k] for k in WORD_SETTINGS if k in words}
    log.info("embed: version %s has word vectors (its sense index); making them again with "
             "the same settings (%s)", version, kept)
    wcfg = cfg.embed.words.model_copy(update={"enabled": True, **kept})
    return cfg.model_copy(update={"embed": cfg.embed.model_copy(update={"words": wcfg})})


def embed_once(cfg: CtxvecConfig, ws: Workspace, snap: Snapshot, model_dir: str | Path,
               version: str, model: dict[str, Any]) -> Embeddings:
    """The corpus embedded with one model: the finished folder of the same request, else a new
    embed (keeping the version's word vectors), recorded for the next request."""
    request = embed_request(cfg, ws, snap, model)
    done = finished(ws, version, request)
    if done is not None:
        log.info("embed: %s already holds this model's vectors of this corpus with these "
                 "settings; reusing it", done.path)
        return done
    cfg = keep_words(cfg, ws, version)
    emb = run_embed(cfg, ws, snap, str(model_dir), version)
    write_json(request_path(ws, version),
               {"request": embed_request(cfg, ws, snap, model),
                "manifest": sha256_file(Path(emb.path) / "manifest.json")})
    return emb
