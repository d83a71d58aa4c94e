"""The torch-exact backend: exact inner-product search as a matmul and a top-k on a torch device.

Why it exists: the faiss wheel on PyPI is CPU-only, yet one GPU scores millions of vectors
exactly, faster than a CPU approximate index and with recall 1. So when torch sees a GPU and faiss
does not, the searcher serves any index from a copy of its vectors here (``factory.serve_on``);
and ``index.backend=torch-exact`` stores an index that is nothing but those vectors, for exact
search on whatever device serves it. On ``device="cpu"`` it is the same computation, which is how
the tests hold it against faiss' exact ``Flat`` index.

On disk: ``exact_vectors.npy`` (N, D) float32 and ``exact_ids.npy`` (N,) int64, rows in id
order. ``mmap`` is not offered: the vectors are copied onto the device that searches them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ctxvec.index.base import (
    VectorIndex,
    atomic_file,
    check_queries,
    check_vectors,
    sorted_contains,
)

if TYPE_CHECKING:
    from ctxvec.config import IndexConfig

VECTORS_FILE = "exact_vectors.npy"
IDS_FILE = "exact_ids.npy"
FACTORY = "exact"
# Queries are scored in slices so that one (queries x vectors) score matrix stays under ~1 GiB.
SCORE_ELEMENTS = 1 << 28


class TorchExactIndex:
    """Vectors (N, D) and their int64 ids on one device (a ``VectorIndex``); read-only, safe to
    share by threads."""

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, device: str = "cpu"):
        vectors, ids = check_vectors(vectors, ids)
        order = np.argsort(ids, kind="stable")  # rows in id order: ids are found by bisection
        self._ids = ids[order]  # (N,) sorted, on the host for contains and reconstruct
        self._place(vectors[order], torch.device(device))

    def _place(self, vectors: np.ndarray | torch.Tensor, device: torch.device) -> None:
        self.device = device
        self.vectors = torch.as_tensor(vectors, device=device)  # (N, D)
        self.ids = torch.as_tensor(self._ids, device=device)  # (N,)

    @classmethod
    def from_index(cls, index: VectorIndex, device: str = "cuda") -> TorchExactIndex:
        """The stored vectors of any index (exact for Flat, HNSW and IVF-Flat storage)."""
        ids = index.live_ids()
        return cls(index.reconstruct(ids), ids, device)

    @classmethod
    def from_config(cls, vectors: np.ndarray, ids: np.ndarray,
                    cfg: IndexConfig) -> TorchExactIndex:
        """Built on the CPU; ``to_gpus`` (at serving) moves it to a GPU when torch sees one."""
        return cls(vectors, ids, "cpu")

    @property
    def count(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def params(self) -> dict[str, int]:
        return {}  # exact: nothing to tune

    def set_params(self, **values: int) -> None:
        pass

    def describe(self) -> dict[str, str]:
        return {"backend": "torch-exact", "factory": FACTORY, "family": "flat",
                "build_device": "cpu", "device": f"{self.device.type} (exact, torch)"}

    def live_ids(self) -> np.ndarray:
        return self._ids

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return sorted_contains(self._ids, ids)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        found = self.contains(ids)
        if not found.all():
            raise KeyError(f"id {ids[~found][0]} is not in the index")
        rows = torch.as_tensor(np.searchsorted(self._ids, ids), device=self.device)
        return self.vectors[rows].cpu().numpy()

    def to_gpus(self) -> bool:
        """Move the vectors to the first GPU torch sees; False when it sees none."""
        if self.device.type == "cuda":
            return True
        if not torch.cuda.is_available():
            return False
        self._place(self.vectors, torch.device("cuda"))
        return True

    @torch.inference_mode()
    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries (Q, D) -> (scores (Q, k), ids (Q, k)), as ``VectorIndex.search``."""
        queries = check_queries(queries, self.dim)
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

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        atomic_file(folder / VECTORS_FILE, lambda p: np.save(p, self.vectors.cpu().numpy()))
        atomic_file(folder / IDS_FILE, lambda p: np.save(p, self._ids))

    @classmethod
    def load(cls, folder: Path, factory: str | None = None, mmap: bool = False) -> TorchExactIndex:
        """Read a folder ``save`` wrote, onto the CPU (``mmap`` does not apply: see above)."""
        folder = Path(folder)
        return cls(np.load(folder / VECTORS_FILE), np.load(folder / IDS_FILE), "cpu")
