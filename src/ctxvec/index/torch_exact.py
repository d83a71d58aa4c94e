"""Exact inner-product search as a matmul and a top-k on a torch device.

Why it exists: the faiss wheel on PyPI is CPU-only, yet one GPU scores millions of vectors
exactly, faster than a CPU approximate index and with recall 1. So when torch sees a GPU and faiss
does not, the searcher serves from this. On ``device="cpu"`` it is the same computation, which is
how the tests hold it against faiss' exact ``Flat`` index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ctxvec.errors import UserInputError

if TYPE_CHECKING:
    from ctxvec.index.faiss_index import FaissIndex

# Queries are scored in slices so that one (queries x vectors) score matrix stays under ~1 GiB.
SCORE_ELEMENTS = 1 << 28


class TorchExactIndex:
    """Vectors (N, D) and their int64 ids on one device; read-only, safe to share by threads."""

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, device: str = "cuda"):
        if vectors.ndim != 2 or len(vectors) != len(ids):
            raise ValueError(f"vectors {vectors.shape} and ids {np.shape(ids)} do not line up")
        self.device = torch.device(device)
        self.vectors = torch.as_tensor(np.ascontiguousarray(vectors, np.float32),
                                       device=self.device)  # (N, D)
        self.ids = torch.as_tensor(np.asarray(ids, np.int64), device=self.device)  # (N,)

    @classmethod
    def from_index(cls, index: FaissIndex, device: str = "cuda") -> TorchExactIndex:
        """The stored vectors of a faiss index (exact for Flat, HNSW and IVF-Flat storage)."""
        ids = index.live_ids()
        return cls(index.reconstruct(ids), ids, device)

    @property
    def count(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @torch.inference_mode()
    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries (Q, D) -> (scores (Q, k), ids (Q, k)) like ``FaissIndex.search``."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise UserInputError(f"query dimension {queries.shape[1]} != index dimension "
                                 f"{self.dim}")
        k = max(1, min(k, self.count))
        mask = None
        if allowed_ids is not None:
            allowed = torch.as_tensor(np.asarray(allowed_ids, np.int64), device=self.device)
            mask = ~torch.isin(self.ids, allowed)  # (N,) True where not allowed
        q = torch.as_tensor(queries, device=self.device)
        step = max(1, SCORE_ELEMENTS // max(1, self.count))
        out_scores, out_ids = [], []
        for start in range(0, len(q), step):
            scores = q[start:start + step] @ self.vectors.T  # (q, N)
            if mask is not None:
                scores[:, mask] = float("-inf")
            top, rows = torch.topk(scores, k, dim=1)  # (q, k), sorted best first
            ids = self.ids[rows]
            ids[torch.isinf(top)] = -1  # filtered out: no result in that slot
            out_scores.append(top.cpu())
            out_ids.append(ids.cpu())
        return torch.cat(out_scores).numpy(), torch.cat(out_ids).numpy()
