"""``index.build_device``: IVF indexes trained and filled on a GPU when faiss-gpu sees one.

On the CPU (faiss-cpu, no GPU): ``auto`` builds on the CPU and says so, ``cuda`` is a clear
error, and the GPU kernels' limits are read from the index. With ``-m gpu`` on a machine with
faiss-gpu and a GPU: a GPU-built IVF-PQ index must find about what the CPU-built one finds
(recall@10 against exact search within a few points), and save and load like any other.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from ctxvec.errors import UserInputError
from ctxvec.index.faiss_index import FaissIndex
from ctxvec.index.gpu_build import gpu_limit, resolve_build_device
from ctxvec.index.recall import recall_at_k

no_faiss_gpu = pytest.mark.skipif(faiss.get_num_gpus() > 0, reason="faiss sees a GPU here")


def _clustered(n=4000, d=32, clusters=50, seed=0):
    """Vectors around cluster centres: IVF and PQ have structure to find, as with text."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, d)).astype(
        np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _untrained(factory: str, d: int = 32) -> faiss.Index:
    return faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)


@no_faiss_gpu
def test_auto_builds_on_the_cpu_without_a_gpu_and_cuda_is_an_error():
    x = _clustered(2000)
    ids = np.arange(len(x), dtype=np.int64) * 3 + 1
    # IVF-Flat, not PQ: the same device choice, without 8 k-means runs of PQ training
    index = FaissIndex.build(x, ids, "IVF16,Flat", build_device="auto")
    assert index.build_device == "cpu" and index.count == len(x)
    assert FaissIndex.build(x, ids, "Flat", build_device="cpu").build_device == "cpu"
    with pytest.raises(UserInputError, match=r"index.build_device=cuda, but faiss sees no GPU"):
        FaissIndex.build(x, ids, "IVF16,PQ8", build_device="cuda")
    with pytest.raises(UserInputError, match="faiss sees no GPU"):  # whatever the factory
        resolve_build_device("cuda", _untrained("Flat"))


def test_gpu_limits_are_read_from_the_index():
    assert gpu_limit(_untrained("IVF16,PQ8")) is None  # 8 bytes of 8-bit codes
    assert gpu_limit(_untrained("IVF16,Flat")) is None
    assert gpu_limit(_untrained("IVF16,SQ8")) is None
    assert "not 5" in gpu_limit(_untrained("IVF16,PQ5", d=40))  # 5-byte codes: no GPU kernel
    assert "8-bit" in gpu_limit(_untrained("IVF16,PQ8x4"))
    assert resolve_build_device("cpu", _untrained("IVF16,PQ8")) == "cpu"
    assert resolve_build_device("auto", _untrained("HNSW16")) == "cpu"  # not IVF: CPU anyway


@pytest.mark.gpu
@pytest.mark.parametrize("factory, dim", [("IVF64,PQ16", 64), ("IVF64,PQ64", 128)])
def test_gpu_build_recall_is_close_to_the_cpu_build(factory, dim, tmp_path):
    """IVF64,PQ64 has 64-byte codes: its lookup tables must go float16 to fit shared memory."""
    if faiss.get_num_gpus() == 0:
        pytest.skip("needs faiss-gpu and a GPU")
    x = _clustered(20_000, dim)
    ids = np.arange(len(x), dtype=np.int64) * 7 + 5
    cpu = FaissIndex.build(x, ids, factory, nprobe=16, build_device="cpu")
    gpu = FaissIndex.build(x, ids, factory, nprobe=16, build_device="cuda")
    assert cpu.build_device == "cpu" and gpu.build_device == "cuda"
    assert gpu.count == len(x) and gpu.contains(ids[:100]).all()
    r_cpu = recall_at_k(cpu, x, ids, 300)
    r_gpu = recall_at_k(gpu, x, ids, 300)
    assert r_gpu >= r_cpu - 0.05, (r_cpu, r_gpu)
    assert r_gpu > 0.3  # far above chance: the index was really trained and filled
    # the direct map is back: reconstruct by id works (PQ: the codes' approximation)
    assert gpu.reconstruct(ids[:10]).shape == (10, dim)  # faiss raises without a direct map
    gpu.save(tmp_path)
    loaded = FaissIndex.load(tmp_path)
    assert np.array_equal(loaded.search(x[:20], 10)[1], gpu.search(x[:20], 10)[1])
    assert FaissIndex.build(x, ids, factory, build_device="auto").build_device == "cuda"
