"""Nearest-neighbour search served by one registered model version and its own index.

A ``Searcher`` is built from a registry reference (``models:/ctxvec-encoder@champion``) or, best, a
``ModelVersion`` its caller already resolved: it reads the registry at most once (none for a
version already resolved and downloaded), loads that version's encoder and the index whose
manifest names the same version, and refuses a mismatched pair. It answers a text, a stored
document's id or a raw vector; metadata filters restrict any of them; a text query can also be
hybrid (dense + BM25, fused by reciprocal rank). Chunk hits are folded into document hits (best
chunk per document).

The search parameters (nprobe, efSearch) are the index's own, those its manifest's recall@10 was
measured with, so the recall a manifest claims is the recall served.

A Searcher is shared by the threads of the HTTP server: everything it holds is read-only after
``__init__`` and every call keeps its state in locals. The one exception is the tokenizer (a
Rust object that HF mutates on every call to set truncation), which a lock serialises.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from ctxvec.config import CtxvecConfig
from ctxvec.embed.precision import follow_recorded, recorded
from ctxvec.embed.truncate import query_dim, truncate
from ctxvec.errors import UserInputError
from ctxvec.index.bm25 import BM25Index
from ctxvec.index.factory import open_index, serve_on
from ctxvec.index.fusion import fusion_depth, reciprocal_rank_fusion
from ctxvec.index.id_map import Filters, IdMap
from ctxvec.ingest.corpus import iter_corpus, read_docs
from ctxvec.model.encoder import Encoder
from ctxvec.refs import ModelRef
from ctxvec.registry import ModelVersion, Registry
from ctxvec.workspace import Workspace, read_json

log = logging.getLogger(__name__)

SNIPPET_CHARS = 400
MAX_K = 1000
SNIPPET_CACHE_MAX = 2_000_000  # chunks whose snippets a Searcher keeps in memory (<= ~800 MB)


class SearchError(UserInputError):
    """A query the caller can fix (empty text, bad k, unknown id or filter key, wrong dim)."""


class UnknownDocError(SearchError, LookupError):
    """A document id the index does not hold (HTTP 404)."""


@dataclass(frozen=True)
class Hit:
    doc_id: str
    score: float  # cosine similarity; for a hybrid search, the reciprocal-rank-fusion score
    text: str  # the best chunk's text (at most SNIPPET_CHARS)
    title: str
    chunk: int
    start: int
    end: int
    source: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class Searcher:
    def __init__(self, ws: Workspace, ref: str | ModelRef | ModelVersion,
                 cfg: CtxvecConfig | None = None, registry: Registry | None = None):
        """``ref``: a registry reference (resolved here, one registry read) or the
        ``ModelVersion`` the caller resolved (no read); ``registry``: the workspace's, to share
        its client."""
        cfg = cfg or CtxvecConfig()
        registry = registry or Registry(ws)
        info = registry.resolve(ref)
        self.model_version: ModelVersion = info  # what was resolved: its tags, aliases, run
        self.ref = str(info.ref if isinstance(ref, ModelVersion) else ModelRef.parse(ref))
        index_uri = info.index_uri
        if not index_uri:
            raise SearchError(f"{self.ref} (version {info.version}) has no index: run the "
                              "pipeline")
        self.version = info.version
        self.index_dir = ws.local_dir(index_uri)  # a URI when the workspace is on a store
        self.manifest = read_json(self.index_dir / "manifest.json")
        if str(self.manifest["model_version"]) != info.version:
            raise RuntimeError(
                f"index {index_uri} was built for version {self.manifest['model_version']}, "
                f"not {info.version}: refusing to mix model versions"
            )
        # Queries run in the precision the corpus was embedded in (embed/precision.py); an
        # index too old to record it gets the recipe's, with a warning.
        what = f"index {index_uri}"
        index_precision = recorded(self.manifest.get("precision"))
        # the version resolved above, downloaded once into the workspace cache: no second read
        self.encoder = Encoder.load(registry.local_dir(info), precision=index_precision
                                    or follow_recorded(cfg.embed.precision, None, what))
        if index_precision is not None:  # the check (whatever Encoder.load made of it)
            follow_recorded(self.encoder.precision, index_precision, what)
        # Queries are cut to the window the corpus chunks were embedded with, and pooled as
        # they were, so that a chunk's own text, used as a query, lands on that chunk's vector.
        self.encoder.settings = replace(
            self.encoder.settings, max_length=self.manifest["max_tokens"],
            pooling=self.manifest.get("pooling") or self.encoder.settings.pooling)
        # embed.dim: queries are cut to the dimension the corpus vectors were (the manifest's
        # dim below the encoder's own); a recipe asking for another one is refused
        self.query_dim = query_dim(int(self.manifest.get("dim") or self.encoder.dim),
                                   self.encoder.dim, cfg.embed.dim, what)
        # ``stored``: the index as built (whatever backend, sharded or not), which answers what
        # it holds; ``index``: the one searches run on (``stored``, or an exact copy on a GPU)
        self.stored = open_index(self.index_dir, self.manifest, cfg.index)
        self.stored.live_ids()  # computed once here, not by the first concurrent queries
        self.index = serve_on(self.stored, cfg.index.device)
        self.id_map = IdMap.load(self.index_dir)
        self.bm25 = (BM25Index.load(self.index_dir, mmap=cfg.index.mmap)
                     if BM25Index.exists(self.index_dir) else None)
        self.corpus = [str(ws.local_dir(c)) for c in self.manifest["corpus"]]
        self.rrf_k = cfg.query.rrf_k
        self.max_k = min(cfg.serve.max_k, MAX_K)
        self._tokenizer_lock = threading.Lock()
        # Each hit shows its chunk's text: with the snippets in memory a query reads no Parquet
        # (reading them took ~9 ms of a 25 ms query); past the cap they are read per query.
        self._snippets: np.ndarray | None = None
        self._doc_meta: dict[str, tuple[str, str]] = {}
        if self.stored.count <= SNIPPET_CACHE_MAX:
            self._load_snippets()
        log.info("search: %s -> version %s, %s over %d vectors%s, queries in %s", self.ref,
                 self.version, self.stored.describe()["factory"], self.index.count,
                 " + BM25" if self.bm25 else "", self.encoder.precision)

    # --- public API -------------------------------------------------------------------------

    def info(self) -> dict:
        params = self.stored.params()
        return {
            "version": self.version, "ref": self.ref,
            "factory": self.stored.describe()["factory"],
            "metric": self.manifest.get("metric", "inner_product"), "count": self.index.count,
            "dim": self.stored.dim, "recall_at_10": self.manifest.get("recall_at_10"),
            "nprobe": params.get("nprobe"), "ef_search": params.get("ef_search"),
            "bm25": self.bm25 is not None, "metadata": list(self.id_map.metadata_keys),
            "device": self.index.describe()["device"],
        }

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> L2-normalised query vectors (N, D), exactly as ``search`` embeds a query."""
        with self._tokenizer_lock:
            ids = self.encoder.tokenize(list(texts))
        return truncate(self.encoder.encode_ids(ids), self.query_dim)

    def search(self, text: str, k: int = 10, filters: Filters | None = None,
               hybrid: bool = False) -> list[Hit]:
        if not text or not text.strip():
            raise SearchError("query text is empty")
        self._check_k(k)
        allowed = self._allowed(filters)
        vec = self.embed([text])  # (1, D)
        if hybrid:
            return self._hybrid(text, vec, k, allowed)
        return self._dense(vec, k, allowed)

    def search_vector(self, vec: np.ndarray, k: int = 10,
                      filters: Filters | None = None) -> list[Hit]:
        return self.search_vectors(self._as_query(vec)[None, :], k, filters)[0]

    def search_vectors(self, vecs: np.ndarray, k: int = 10,
                       filters: Filters | None = None) -> list[list[Hit]]:
        """Several query vectors (Q, D) in one index call -> one hit list per query."""
        self._check_k(k)
        allowed = self._allowed(filters)
        queries = np.stack([self._as_query(v) for v in np.atleast_2d(vecs)])
        scores, ids = self._search_chunks(queries, k, allowed)
        ranked = [self._fold(s[None], i[None], k) for s, i in zip(scores, ids, strict=True)]
        docs = None if self._snippets is not None else \
            self._docs([d for r in ranked for d, _, _ in r])  # one corpus read for all
        return [self._hits(r, docs) for r in ranked]

    def search_id(self, doc_id: str, k: int = 10, filters: Filters | None = None) -> list[Hit]:
        """Documents nearest to a stored document (by its best-matching chunks), itself left
        out."""
        self._check_k(k)
        ids = self.id_map.ids_of_doc(doc_id)
        ids = ids[self.stored.contains(ids)]
        if len(ids) == 0:
            raise UnknownDocError(f"unknown document id {doc_id!r}: it is not in the index of "
                              f"version {self.version}")
        allowed = self._allowed(filters)
        return self._dense(self.stored.reconstruct(ids), k, allowed, exclude=doc_id)

    # --- internals --------------------------------------------------------------------------

    def _check_k(self, k: int) -> None:
        if not isinstance(k, int | np.integer) or k < 1 or k > self.max_k:
            raise SearchError(f"k must be between 1 and {self.max_k}, got {k}")

    def _allowed(self, filters: Filters | None) -> np.ndarray | None:
        try:
            return self.id_map.allowed_ids(filters)
        except UserInputError as e:
            raise SearchError(str(e)) from None

    def _as_query(self, vec: np.ndarray) -> np.ndarray:
        v = np.asarray(vec, dtype=np.float32)
        if v.ndim == 2 and v.shape[0] == 1:
            v = v[0]
        if self.query_dim is not None and v.ndim == 1 and v.shape[0] == self.encoder.dim:
            v = truncate(v, self.query_dim)  # the model's full vector, cut as the corpus was
        if v.ndim != 1 or v.shape[0] != self.stored.dim:
            raise SearchError(f"query vector has shape {tuple(v.shape)}; version {self.version} "
                              f"needs {self.stored.dim} dimensions")
        if not np.isfinite(v).all():
            raise SearchError("query vector holds NaN or infinite values")
        norm = float(np.linalg.norm(v))
        if norm == 0.0:
            raise SearchError("query vector is all zeros")
        return v / norm  # scores are cosines whatever the vector's length

    def _search_chunks(self, queries: np.ndarray, k: int, allowed: np.ndarray | None,
                       exclude: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Chunk search wide enough that folding leaves k documents (several chunks may belong
        to one): start at 4 k chunks and widen until k documents or every candidate."""
        limit = self.index.count if allowed is None else min(len(allowed), self.index.count)
        want = k * 4 + (len(queries) if exclude else 0)
        while True:
            scores, ids = self.index.search(queries, want, allowed)
            if want >= limit or all(len(self._fold(s[None], i[None], k, exclude)) >= k
                                    for s, i in zip(scores, ids, strict=True)):
                return scores, ids
            want *= 4

    def _dense(self, queries: np.ndarray, k: int, allowed: np.ndarray | None,
               exclude: str | None = None) -> list[Hit]:
        """All query rows count as one query: each document scores its best chunk match."""
        scores, ids = self._search_chunks(queries, k, allowed, exclude)
        if len(queries) > 1:  # search_id: widen until the union of rows holds k documents
            scores, ids = scores.reshape(1, -1), ids.reshape(1, -1)
        return self._hits(self._fold(scores, ids, k, exclude))

    def _fold(self, scores: np.ndarray, ids: np.ndarray, k: int,
              exclude: str | None = None) -> list[tuple[str, float, int]]:
        """Chunk hits (Q, W) -> the k best documents as (doc_id, score, best chunk's id)."""
        best: dict[str, tuple[float, int]] = {}
        valid = ids >= 0
        rows = self.id_map.rows(ids[valid])
        for s, i, row in zip(scores[valid], ids[valid], rows, strict=True):
            d = self.id_map.doc_ids[row]
            if d != exclude and (d not in best or s > best[d][0]):
                best[d] = (float(s), int(i))
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:k]
        return [(d, s, i) for d, (s, i) in ranked]

    def _hybrid(self, text: str, vec: np.ndarray, k: int,
                allowed: np.ndarray | None) -> list[Hit]:
        if self.bm25 is None:
            raise SearchError(f"hybrid search needs the BM25 part of the index, and version "
                              f"{self.version} was built without it (index.bm25=false)")
        depth = fusion_depth(k)  # chunks each ranking brings to the fusion
        d_scores, d_ids = self.index.search(vec, depth, allowed)
        dense = self._fold(d_scores, d_ids, depth)
        b_scores, b_ids = self.bm25.search(text, depth, allowed)
        lexical = self._fold(b_scores[None], b_ids[None], depth)
        # A document's chunk to show: its best dense chunk, else its best BM25 chunk.
        chunk_of = {d: i for d, _, i in lexical} | {d: i for d, _, i in dense}
        fused = reciprocal_rank_fusion([[d for d, _, _ in dense], [d for d, _, _ in lexical]],
                                       self.rrf_k)[:k]
        return self._hits([(d, s, chunk_of[d]) for d, s in fused])

    def _load_snippets(self) -> None:
        """One pass over the corpus: every chunk's snippet, every document's title and source."""
        m = self.id_map
        order = np.argsort(m.doc_ids, kind="stable")
        sorted_docs = m.doc_ids[order]
        snippets = np.full(len(m.doc_ids), "", dtype=object)
        for batch in iter_corpus(self.corpus, ("doc_id", "text", "title", "source")):
            for d, text, title, source in zip(*(c.to_pylist() for c in batch.columns),
                                              strict=True):
                lo = np.searchsorted(sorted_docs, d, side="left")
                hi = np.searchsorted(sorted_docs, d, side="right")
                if lo == hi:
                    continue
                self._doc_meta[d] = (title or "", source or "")
                for r in order[lo:hi]:
                    snippets[r] = (text or "")[m.starts[r]:m.ends[r]][:SNIPPET_CHARS]
        self._snippets = snippets

    def _docs(self, doc_ids: Sequence[str]) -> dict[str, dict]:
        return read_docs(self.corpus, list(dict.fromkeys(doc_ids)), ("text", "title", "source"))

    def _hits(self, ranked: list[tuple[str, float, int]],
              docs: dict[str, dict] | None = None) -> list[Hit]:
        """(doc_id, score, chunk id) -> hits with the chunk's text, title and source."""
        # every hit's row in one call: per hit, the lookup's numpy overhead was 11% of the
        # batching thread under 32 clients (py-spy, 30k vectors)
        m = self.id_map
        rows = m.rows(np.fromiter((i for _, _, i in ranked), np.int64, len(ranked))).tolist()
        if self._snippets is not None:
            hits = []
            for (d, score, _), row in zip(ranked, rows, strict=True):
                title, source = self._doc_meta.get(d, ("", ""))
                hits.append(Hit(d, score, self._snippets[row], title, int(m.chunks[row]),
                                int(m.starts[row]), int(m.ends[row]), source))
            return hits
        if docs is None:
            docs = self._docs([d for d, _, _ in ranked])
        hits = []
        for (d, score, _), row in zip(ranked, rows, strict=True):
            doc = docs.get(d, {})
            s, e = int(m.starts[row]), int(m.ends[row])
            hits.append(Hit(d, score, (doc.get("text") or "")[s:e][:SNIPPET_CHARS],
                            doc.get("title") or "", int(m.chunks[row]), s, e,
                            doc.get("source") or ""))
        return hits
