"""Nearest-neighbour search served by one registered model version and its own index.

A ``Searcher`` is built from a model reference (``models:/ctxvec-encoder@champion`` by default):
it loads that version's encoder and the index whose manifest names the same version, and refuses
a mismatched pair. Chunk hits are folded into document hits (best chunk per document).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ctxvec.errors import UserInputError
from ctxvec.index.build import IDS_FILE
from ctxvec.index.faiss_index import FaissIndex
from ctxvec.ingest.corpus import read_docs
from ctxvec.model.encoder import Encoder
from ctxvec.registry.store import get_version, materialize
from ctxvec.workspace import Workspace, read_json

log = logging.getLogger(__name__)

SNIPPET_CHARS = 400
MAX_K = 1000


class SearchError(UserInputError):
    """A query the caller can fix (empty text, bad k)."""


@dataclass(frozen=True)
class Hit:
    doc_id: str
    score: float
    text: str
    title: str
    chunk: int
    start: int
    end: int

    def to_dict(self) -> dict:
        return asdict(self)


class Searcher:
    def __init__(self, ws: Workspace, ref: str):
        self.ref = ref
        info = get_version(ws, ref)
        index_uri = info.tags.get("index_uri")
        if not index_uri:
            raise SearchError(f"{ref} (version {info.version}) has no index: run the pipeline")
        self.version = info.version
        self.index_dir = Path(index_uri)
        manifest = read_json(self.index_dir / "manifest.json")
        if str(manifest["model_version"]) != info.version:
            raise RuntimeError(
                f"index {index_uri} was built for version {manifest['model_version']}, "
                f"not {info.version}: refusing to mix model versions"
            )
        self.encoder = Encoder.load(materialize(ref, ws.root))
        # Queries are cut to the window the corpus chunks were embedded with, so that a chunk's
        # own text, used as a query, lands on that chunk's vector.
        self.encoder.settings = replace(self.encoder.settings, max_length=manifest["max_tokens"])
        self.index = FaissIndex.load(self.index_dir, manifest["factory"])
        ids = pq.read_table(self.index_dir / IDS_FILE)
        order = np.argsort(ids.column("id").to_numpy())
        self.doc_ids = np.asarray(ids.column("doc_id").to_pylist(), dtype=object)[order]
        self.chunks = ids.column("chunk").to_numpy()[order]
        self.starts = ids.column("start").to_numpy()[order]
        self.ends = ids.column("end").to_numpy()[order]
        self.corpus = manifest["corpus"]
        log.info("search: %s -> version %s, %d vectors", ref, self.version, self.index.count)

    def search(self, text: str, k: int = 10) -> list[Hit]:
        if not text or not text.strip():
            raise SearchError("query text is empty")
        if k < 1 or k > MAX_K:
            raise SearchError(f"k must be between 1 and {MAX_K}, got {k}")
        vec = self.encoder.encode([text])
        return self.search_vector(vec[0], k)

    def search_vector(self, vec: np.ndarray, k: int) -> list[Hit]:
        # Several chunks may belong to one document: widen the chunk search until k documents.
        want = k * 4
        while True:
            scores, ids = self.index.search(vec[None, :], want)
            best: dict[str, tuple[float, int]] = {}
            for s, i in zip(scores[0], ids[0], strict=True):
                if i < 0:
                    continue
                d = self.doc_ids[i]
                if d not in best or s > best[d][0]:
                    best[d] = (float(s), int(i))
            if len(best) >= k or want >= self.index.count:
                break
            want *= 4
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:k]
        texts = self._texts([d for d, _ in ranked])
        hits = []
        for d, (score, i) in ranked:
            text, title = texts.get(d, ("", ""))
            s, e = int(self.starts[i]), int(self.ends[i])
            hits.append(Hit(d, score, text[s:e][:SNIPPET_CHARS], title, int(self.chunks[i]), s, e))
        return hits

    def _texts(self, doc_ids: list[str]) -> dict[str, tuple[str, str]]:
        docs = read_docs(self.corpus, doc_ids, ("text", "title"))
        return {d: (r["text"], r["title"]) for d, r in docs.items()}
