"""Train and fill IVF indexes (IVF-Flat, IVF-PQ, IVF-SQ) on a GPU; save them as CPU indexes.

Why: past a few million vectors an IVF-PQ build is k-means over the training sample plus one
assignment and PQ encoding pass over every vector, and a GPU does both one to two orders of
magnitude faster than a CPU. The built index is copied back (``index_gpu_to_cpu``) before it is
saved, so the file is the same kind a CPU build writes, and serving, mmap and removals do not
depend on where it was built. Only with faiss-gpu installed and a GPU present
(``faiss.get_num_gpus() > 0``); the PyPI ``faiss-cpu`` wheel has no GPU code at all.

Choices:
- One GPU builds. With several, ``index_cpu_to_all_gpus`` would make replicas (each training
  its own coarse quantizer, only the first copied back) or shards (each with a different
  quantizer): neither is one coherent index, and one GPU already trains in seconds.
- The classic faiss GPU kernels (not cuVS), whose limits are checked here with a message that
  names them: IVF-PQ codes of 1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64 or 96 bytes
  of 8-bit sub-quantizers. Past 48 bytes the float32 lookup tables (256 x M x 4 bytes) no longer
  fit a block's 48 KiB of shared memory, so they are kept in float16.
- Flat has nothing to train and HNSW has no faiss GPU builder: they are built on the CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import numpy as np

from ctxvec.errors import UserInputError
from ctxvec.index.faiss_lib import faiss

log = logging.getLogger(__name__)

BuildDevice = Literal["cpu", "cuda"]
GPU_PQ_CODE_BYTES = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)
FLOAT32_LUT_MAX_BYTES = 48  # 256 centroids x M sub-quantizers x 4 bytes <= 48 KiB


def gpu_count() -> int:
    return int(faiss.get_num_gpus())


def resolve_build_device(requested: str, index: faiss.Index) -> BuildDevice:
    """Where ``index`` (untrained, from the factory) is built: ``index.build_device`` applied.

    ``auto``: the GPU for an IVF index the GPU can build, when faiss sees one; the CPU otherwise.
    ``cuda``: the GPU, and an error (not a silent fall-back) without one or for an IVF index it
    cannot build; a Flat or HNSW index is built on the CPU either way (nothing to accelerate).
    """
    if requested == "cpu":
        return "cpu"
    if requested == "cuda" and gpu_count() == 0:
        raise UserInputError("index.build_device=cuda, but faiss sees no GPU (faiss-gpu is not "
                             "installed, or no GPU is visible): use index.build_device=auto or cpu")
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None or gpu_count() == 0:
        return "cpu"
    problem = gpu_limit(index)
    if problem is None:
        return "cuda"
    if requested == "cuda":
        raise UserInputError(f"index.build_device=cuda: {problem}; use index.build_device=auto "
                             "(builds it on the CPU) or another index.factory")
    log.info("index: built on the CPU: %s", problem)
    return "cpu"


def gpu_limit(index: faiss.Index) -> str | None:
    """Why the faiss GPU kernels cannot build this IVF index, or None when they can."""
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    if isinstance(ivf, faiss.IndexIVFPQ):
        if ivf.pq.nbits != 8:
            return f"GPU IVF-PQ needs 8-bit sub-quantizers, not {ivf.pq.nbits}"
        if ivf.code_size not in GPU_PQ_CODE_BYTES:
            return (f"GPU IVF-PQ takes codes of {', '.join(map(str, GPU_PQ_CODE_BYTES))} bytes, "
                    f"not {ivf.code_size}")
    elif not isinstance(ivf, faiss.IndexIVFFlat | faiss.IndexIVFScalarQuantizer):
        return f"faiss has no GPU version of {type(ivf).__name__}"
    return None


def cloner_options(index: faiss.Index) -> faiss.GpuMultipleClonerOptions:
    """Cloner options for building ``index``: float16 lookup tables where float32 ones would
    not fit shared memory, 64-bit ids kept on the GPU, the classic kernels."""
    co = faiss.GpuMultipleClonerOptions()
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    co.useFloat16 = isinstance(ivf, faiss.IndexIVFPQ) and ivf.code_size > FLOAT32_LUT_MAX_BYTES
    co.indicesOptions = faiss.INDICES_64_BIT  # our ids are 63-bit hashes
    if hasattr(co, "use_cuvs"):
        co.use_cuvs = False
    return co


def build_on_gpu(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray,
                 train: Callable[[faiss.Index], None]) -> faiss.Index:
    """Train ``index`` (an untrained CPU IVF index) with ``train`` (which samples and calls
    ``.train``) and add ``vectors`` with ``ids``, on GPU 0; returns the filled CPU copy, with a
    hashtable direct map as CPU builds have (remove and reconstruct by id)."""
    ivf = faiss.extract_index_ivf(index)
    ivf.set_direct_map_type(faiss.DirectMap.NoMap)  # a CPU-only structure: rebuilt below
    co = cloner_options(index)
    try:
        gpu = faiss.index_cpu_to_all_gpus(index, co, ngpu=1)
    except RuntimeError as e:
        raise UserInputError(f"faiss cannot build this index on the GPU: "
                             f"{str(e).strip().splitlines()[-1]}") from None
    log.info("index: building on the GPU%s", " (float16 lookup tables)" if co.useFloat16 else "")
    train(gpu)
    gpu.add_with_ids(vectors, ids)
    cpu = faiss.index_gpu_to_cpu(gpu)
    del gpu  # frees the GPU memory now, not when the collector gets to it
    faiss.extract_index_ivf(cpu).set_direct_map_type(faiss.DirectMap.Hashtable)
    return cpu
