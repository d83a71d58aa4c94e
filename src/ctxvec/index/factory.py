"""Index backends by name (``index.backend``), and the functions that build, open and place them.

Everything above the index package goes through here: ``run_index`` builds with ``build_index``,
the ``Searcher`` opens with ``open_index`` and places with ``serve_on``, retrieval evaluation
searches through ``index_candidates`` (and fuses with BM25 through ``ctxvec.index.hybrid``).
None of them names a backend class, so a new backend is its own module, one entry in
``BACKENDS`` and its name in ``index.backend`` (``ctxvec.config.serving``).

The backends:

- ``faiss`` (default): a FAISS index from ``index.factory`` (Flat, HNSW, IVF-Flat, IVF-PQ,
  IVF-SQ, ...; ``auto`` chooses by size), ``ctxvec.index.faiss_index``;
- ``torch-exact``: the vectors themselves, searched exactly as a matmul on whatever device
  serves them (a GPU when torch sees one), ``ctxvec.index.torch_exact``.

``index.quantize`` (int8, binary) builds a ``faiss`` index of compact codes instead, rescored
from the float vectors on disk (``ctxvec.index.compact``); a folder holding one says so by its
``compact.json``. Either, with ``index.shards`` > 1, is built as one index per corpus shard
(``ctxvec.index.sharded``) and searched as one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ctxvec.config import IndexConfig
from ctxvec.errors import UserInputError
from ctxvec.index import torch_exact
from ctxvec.index.base import VectorIndex
from ctxvec.index.compact import META_FILE as COMPACT_FILE
from ctxvec.index.compact import CompactIndex
from ctxvec.index.faiss_index import INDEX_FILE, FaissIndex
from ctxvec.index.sharded import SHARDS_FILE, ShardedIndex, build_sharded
from ctxvec.index.torch_exact import TorchExactIndex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    """How to build and read one backend's index."""

    build: Callable[[np.ndarray, np.ndarray, IndexConfig], VectorIndex]
    load: Callable[[Path, str | None, bool], VectorIndex]  # (folder, factory, mmap)
    marker: str  # the file whose presence says a folder holds this backend's index
    mmap: bool  # whether ``load`` can map the files instead of reading them


BACKENDS: dict[str, Backend] = {
    "faiss": Backend(FaissIndex.from_config, FaissIndex.load, INDEX_FILE, mmap=True),
    "torch-exact": Backend(TorchExactIndex.from_config, TorchExactIndex.load,
                           torch_exact.VECTORS_FILE, mmap=False),
}


def build_index(cfg: IndexConfig, vectors: np.ndarray, ids: np.ndarray,
                doc_ids: Sequence[str] | None = None) -> tuple[VectorIndex, list[dict] | None]:
    """vectors (N, D) and their ids (N,) -> (the index ``cfg`` asks for, per-shard details).

    With ``index.shards`` > 1 the rows are split by their document (``doc_ids``, one per row)
    and the details list each shard's count, factory, build device and recall@10; None otherwise.
    """
    build = BACKENDS[cfg.backend].build if cfg.quantize == "none" else CompactIndex.from_config
    if cfg.shards > 1:
        if doc_ids is None:
            raise ValueError("a sharded index (index.shards > 1) needs each vector's doc_id")
        return build_sharded(vectors, ids, doc_ids, cfg, lambda v, i: build(v, i, cfg))
    return build(vectors, ids, cfg), None


def open_index(folder: str | Path, manifest: Mapping | None = None,
               cfg: IndexConfig | None = None) -> VectorIndex:
    """The dense index of an index folder, whatever backend built it, sharded or not.

    The files say which (``shards.json``, then each backend's marker file), so folders written
    before ``index.backend`` existed open as they always did. ``manifest``: the folder's
    manifest, whose ``factory`` names what was built; ``cfg``: ``index.mmap`` (where the backend
    can map its files).
    """
    mmap = cfg.mmap if cfg is not None else False
    return _open(Path(folder), (manifest or {}).get("factory"), mmap)


def _open(folder: Path, factory: str | None, mmap: bool) -> VectorIndex:
    if (folder / SHARDS_FILE).is_file():
        # each shard with its own factory, from shards.json (the manifest joins them)
        return ShardedIndex.load(folder, lambda sub, f: _open(sub, f, mmap))
    if (folder / COMPACT_FILE).is_file():
        return CompactIndex.load(folder, factory, mmap)
    for backend in BACKENDS.values():
        if (folder / backend.marker).is_file():
            return backend.load(folder, factory, mmap and backend.mmap)
    markers = ", ".join([SHARDS_FILE, COMPACT_FILE] + [b.marker for b in BACKENDS.values()])
    raise FileNotFoundError(f"no index in {folder}: it holds none of {markers}")


def serve_on(index: VectorIndex, device: str = "auto") -> VectorIndex:
    """The index to search with on ``device`` (``index.device``: auto, cpu or cuda).

    The index itself, on the GPUs its backend can use when there are any (faiss-gpu, or torch
    for ``torch-exact``); otherwise, when torch sees a GPU, exact search as a matmul there on a
    copy of its vectors (``TorchExactIndex``); otherwise the CPU index. ``cuda`` with no GPU at
    all is an error, not a silent fall-back.
    """
    if device == "cpu":
        return index
    if index.to_gpus():
        return index
    if torch.cuda.is_available():
        return TorchExactIndex.from_index(index, "cuda")
    if device == "cuda":
        raise UserInputError("index.device=cuda, but neither faiss nor torch sees a GPU: "
                             "use index.device=auto or cpu")
    return index


def index_candidates(factory: str = "Flat") -> Callable[[np.ndarray, np.ndarray, int], np.ndarray]:
    """For ``ctxvec.evaluate.retrieval``: candidates from a FAISS index built from ``factory``
    as the pipeline builds one -> ``search(doc_vecs (N, D), query_vecs (Q, D), take)`` giving
    candidate rows (Q, take), -1 in empty slots. With ``Flat`` it equals exact search."""

    def search(doc_vecs: np.ndarray, query_vecs: np.ndarray, take: int) -> np.ndarray:
        index = FaissIndex.build(doc_vecs, np.arange(len(doc_vecs), dtype=np.int64), factory)
        return index.search(query_vecs, take)[1]

    return search
