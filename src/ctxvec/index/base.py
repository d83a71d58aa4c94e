"""The vector index interface every backend implements, and what the backends share.

Why a Protocol and not a base class: backends have nothing to inherit from one another (a FAISS
index, a torch matmul, a set of shards), and search, serving, evaluation and sharding should only
ever see these members. A backend is one file holding one class that has them, plus one entry in
``ctxvec.index.factory.BACKENDS`` (and its name in ``index.backend``).

The contract (``tests/unit/test_index_contract.py`` runs it against every backend):

- ids are the stable int64 chunk ids of ``ctxvec.index.id_map``, never row numbers;
- vectors are L2-normalised and the metric is inner product, so scores are cosines;
- ``search`` answers (Q, k) scores and ids, best first, with id -1 in slots it cannot fill, and
  searches only among ``allowed_ids`` when given (a metadata filter); k is capped at ``count``;
- searching is safe from several threads at once;
- an index is written once (``save``) and never changed afterwards: the pipeline and the
  continual update build a fresh index for every model version.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ctxvec.errors import UserInputError


@runtime_checkable
class VectorIndex(Protocol):
    """A built (or loaded) vector index: what search, serving, evaluation and sharding use."""

    @property
    def count(self) -> int:
        """Vectors the index answers with."""
        ...

    @property
    def dim(self) -> int: ...

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries (Q, D) -> (scores (Q, k), ids (Q, k)), best first; missing slots have id -1.
        ``allowed_ids``: search only among these ids; None: among all of them."""
        ...

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Bool mask: which of ``ids`` the index holds."""
        ...

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (N, D) (a compressed index: their approximation);
        KeyError for an id the index does not hold."""
        ...

    def live_ids(self) -> np.ndarray:
        """Every id the index answers with, sorted."""
        ...

    def params(self) -> dict[str, int]:
        """The search tunables this index has and their values (e.g. ``nprobe`` for IVF,
        ``ef_search`` for HNSW; none for exact search). They are the ones its recall was
        measured with, and are saved with it."""
        ...

    def set_params(self, **values: int) -> None:
        """Set tunables by name; names this index does not have are ignored, so one config
        (``index.nprobe``, ``index.ef_search``) serves every backend."""
        ...

    def describe(self) -> dict[str, str]:
        """What it is, for manifests and ``/info``: ``backend``, ``factory`` (what was built:
        a FAISS factory string, ``exact``), ``family``, ``build_device`` and ``device`` (where
        it searches, e.g. ``cpu (faiss)``)."""
        ...

    def to_gpus(self) -> bool:
        """Also search on the GPUs this backend can use, where it can; False if it stays on the
        CPU (the caller may then fall back to exact search on torch: ``factory.serve_on``)."""
        ...

    def save(self, folder: Path) -> None:
        """Write the index into ``folder``; each file atomically (the folder as a whole is made
        atomic by ``Workspace.stage_dir``)."""
        ...


def check_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    """Queries as a C-contiguous float32 (Q, D) array; a wrong dimension is the caller's
    mistake, told as such."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if queries.shape[1] != dim:
        raise UserInputError(f"query dimension {queries.shape[1]} != index dimension {dim}")
    return queries


def check_vectors(vectors: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectors (N, D) float32 and their ids (N,) int64, each id once: what every build takes."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if vectors.ndim != 2 or ids.ndim != 1 or len(vectors) != len(ids):
        raise ValueError(f"vectors {vectors.shape} and ids {ids.shape} do not line up")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("duplicate ids: every vector needs its own id")
    return vectors, ids


def sorted_contains(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Bool mask of ``ids`` found in ``sorted_ids`` (binary search: O(m log n))."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(sorted_ids) == 0:
        return np.zeros(ids.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return sorted_ids[pos] == ids


def topk_inner_product(
    queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product of queries (Q, D) over vectors (N, D) carrying ``ids``;
    padded with id -1 and score -inf when N < k."""
    q = len(queries)
    scores_out = np.full((q, k), -np.inf, dtype=np.float32)
    ids_out = np.full((q, k), -1, dtype=np.int64)
    if len(vectors) == 0:
        return scores_out, ids_out
    scores = queries @ vectors.T  # (Q, N)
    take = min(k, len(vectors))
    top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    scores_out[:, :take] = np.take_along_axis(top_scores, order, axis=1)
    ids_out[:, :take] = ids[np.take_along_axis(top, order, axis=1)]
    return scores_out, ids_out


def atomic_file(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write`` under a temporary name, then rename it into place."""
    # The temporary name keeps the suffix: np.save would otherwise append ".npy".
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
