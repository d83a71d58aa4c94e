"""After training: evaluation, embedding, the index, the registry, queries and the server."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ctxvec.config.base import _Section


class EvaluateConfig(_Section):
    sts: str | None = Field(
        None, description="STS Benchmark TSV; skipped with a logged reason when absent."
    )
    retrieval: str | None = Field(None, description="A BEIR folder (corpus, queries, qrels).")
    retrieval_split: str = "test"
    wic: str | None = Field(None, description="A WiC folder (train/ fits the threshold).")
    wic_split: str = "dev"
    pseudo: bool = Field(
        False, description="Label-free: held-out mined pseudo-queries (the mine stage's) "
        "searched over the mined documents: pseudo_ndcg_at_10, pseudo_mrr_at_10.")
    batch_size: int = Field(64, ge=1)


class WordsConfig(_Section):
    """Context vectors per word occurrence (sense search)."""

    enabled: bool = Field(False, description="Also write one vector per word occurrence.")
    sample_docs: int | None = Field(
        None, ge=1, description="Take word vectors from this many documents (default: all)."
    )
    layers: list[int] = Field(
        [-1], min_length=1,
        description="Hidden layers averaged into a word vector (-1 = last; 0 = embeddings).",
    )
    min_chars: int = Field(3, ge=1, description="Skip shorter words (and punctuation).")
    stopwords: bool = Field(False, description="Keep very common words (the, of, ...).")
    max_per_word: int = Field(
        1000, ge=1, description="Keep at most this many occurrences of one word."
    )


class RayEmbedConfig(_Section):
    """Where and how ``embed.engine: ray`` runs: Ray Data ``map_batches`` over an actor pool."""

    address: str | None = Field(
        None, description="null: start a local Ray inside this process; 'auto': join the cluster "
        "this machine is a node of; 'ray://HOST:10001' (Ray Client) or 'HOST:6379': join that.",
    )
    actors: int | None = Field(
        None, ge=1, description="Embedding actors, each loading the encoder once (default: one "
        "per num_gpus of the cluster's GPUs, else (cluster CPUs - 1) // num_cpus).",
    )
    num_gpus: float | None = Field(
        None, ge=0, description="GPUs per actor (default: 1 when the cluster has GPUs and "
        "train.device is not cpu, else 0).",
    )
    num_cpus: float = Field(
        1.0, gt=0, description="CPUs reserved per actor; also its torch threads on a CPU."
    )
    batch_size: int = Field(
        256, ge=1, description="Documents per map_batches batch; each batch is written as one "
        "Parquet part file, the unit of resume.",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None and v != "auto" and not re.fullmatch(r"(ray://)?[\w.\-]+:\d+", v):
            raise ValueError(f"embed.ray.address {v!r}: use null (a local Ray), 'auto', "
                             "'ray://HOST:10001' or 'HOST:6379'")
        return v


class EmbedConfig(_Section):
    batch_size: int = Field(64, ge=1)
    max_tokens: int | None = Field(
        None, ge=8, description="Chunk window in tokens (default: the model's own limit)."
    )
    stride: int = Field(32, ge=0, description="Tokens shared by consecutive chunks.")
    dtype: Literal["float32", "float16"] = Field("float32", description="Stored vector type.")
    pooling: Literal["model", "mean", "cls", "max"] = Field(
        "model", description="Chunk pooling; 'model' keeps the encoder's own setting."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Compute precision: auto = bf16 on a GPU or a CPU with bf16 units "
        "(AMX/AVX512-BF16), else fp32.",
    )
    shard_docs: int = Field(
        2048, ge=1, description="Documents per output shard (the unit of resume)."
    )
    devices: int | None = Field(
        None, ge=1, description="GPUs to embed on in parallel (default: all visible)."
    )
    words: WordsConfig = WordsConfig()
    engine: Literal["local", "ray"] = Field(
        "local", description="local: this machine (one worker per visible GPU); ray: Ray Data "
        "actors on a Ray cluster (embed.ray), the same embeddings.",
    )
    ray: RayEmbedConfig = RayEmbedConfig()
    threads: int | None = Field(
        None, ge=1, strict=True, description="CPU threads the encoder (torch) computes with, "
        "and FAISS when the same process builds the index; null: the CPUs this process may "
        "use (its CPU affinity, capped by the cgroup CPU quota rounded down, at least 1).",
    )
    # compact vectors: Matryoshka-style truncation (docs/deploy.md, Compact vectors)
    dim: int | None = Field(
        None, ge=8, description="Keep the first DIM components of every vector, then "
        "re-normalise (Matryoshka-style truncation; queries are cut the same way). None: the "
        "encoder's full dimension. Costs recall on models not trained for it (MiniLM: "
        "docs/benchmarks.md).",
    )


class IndexConfig(_Section):
    backend: Literal["faiss", "torch-exact"] = Field(
        "faiss", description="faiss: a FAISS index from index.factory; torch-exact: the vectors, "
        "searched exactly as a matmul (on a GPU when torch sees one) (ctxvec.index.factory).",
    )
    factory: str = Field(
        "auto",
        description="FAISS index_factory string (Flat, HNSW32, IVF1024,PQ48, ...) or 'auto': "
        "exact below auto_exact_max vectors, approximate above.",
    )
    auto_exact_max: int = Field(
        10_000, ge=1, description="Largest index 'auto' keeps exact (Flat); above it IVF, "
        "whose search of 30k vectors cost 1/12 to 1/45 of exact search at recall@10 >= 0.97.")
    recall_sample: int = Field(200, ge=1, description="Queries used to measure recall@10.")
    train_sample: int = Field(
        100_000, ge=1, description="Vectors sampled to train IVF/PQ indexes."
    )
    nprobe: int = Field(32, ge=1, description="IVF lists probed per query.")
    ef_search: int = Field(128, ge=1, description="HNSW candidate list size at query time.")
    mmap: bool = Field(False, description="Memory-map the index file instead of reading it.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Search on a GPU when faiss or torch can use one."
    )
    metadata: list[str] = Field(
        ["source", "title"], description="Document fields kept for --filter KEY=VALUE."
    )
    bm25: bool = Field(True, description="Also build a BM25 index for hybrid search.")
    build_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where IVF indexes are trained and filled: auto = a GPU when faiss "
        "sees one (faiss-gpu), else the CPU; cuda without one is an error.",
    )
    shards: int = Field(
        1, ge=1, description="Indexes, one per corpus shard (documents split by a hash of "
        "doc_id), searched together and merged; 1: one index.",
    )
    # compact vectors: quantised codes searched, float vectors on disk rescore the candidates
    quantize: Literal["none", "int8", "binary"] = Field(
        "none", description="none: index.factory as given; int8: one byte a component (FAISS "
        "SQ8, 4x smaller); binary: one bit a component (its sign, Hamming distance, 32x "
        "smaller). Either keeps the float vectors in a file beside it, memory-mapped, and "
        "rescores each query's best index.rescore candidates exactly from them.",
    )
    rescore: int = Field(
        100, ge=1, description="Candidates per query (at least k) that index.quantize rescores "
        "with the float vectors on disk (docs/benchmarks.md, Compact vectors).",
    )

    @model_validator(mode="after")
    def _compact(self) -> IndexConfig:
        if self.quantize != "none" and self.backend != "faiss":
            raise ValueError(f"index.quantize={self.quantize} needs index.backend=faiss "
                             f"(torch-exact searches the float vectors themselves)")
        if self.quantize != "none" and self.factory not in ("auto", "Flat"):
            raise ValueError(f"index.quantize={self.quantize} scans compact codes and rescores "
                             f"them; it takes index.factory auto or Flat, not "
                             f"{self.factory!r} (for a quantised IVF use e.g. IVF4096,SQ8)")
        return self


class RegistryConfig(_Section):
    model_name: str = "ctxvec-encoder"
    experiment: str = "ctxvec"
    promote: Literal["gate", "always", "never"] = Field(
        "gate", description="Whether a pipeline run moves 'champion' to its version: gate = "
        "only if it is no worse than the champion on this recipe's evaluations (the first "
        "version always), always, never. true means gate, false never.",
    )

    @field_validator("promote", mode="before")
    @classmethod
    def _promote_bool(cls, v: object) -> object:
        """Recipes from before the gate say true or false."""
        return {True: "gate", False: "never"}.get(v, v) if isinstance(v, bool) else v


class QueryConfig(_Section):
    sample: str | None = Field(None, description="Query whose neighbours the run prints last.")
    k: int = Field(5, ge=1)
    rrf_k: int = Field(60, ge=1, description="Reciprocal-rank-fusion constant (hybrid search).")


class ServeConfig(_Section):
    host: str = Field("127.0.0.1", description="Bind address (loopback unless told otherwise).")
    port: int = Field(8000, ge=1, le=65535)
    api_key_env: str = Field(
        "CTXVEC_API_KEY", description="Environment variable holding the API key (unset: open)."
    )
    reload_seconds: float = Field(
        5.0, gt=0, description="How often the server checks whether the champion moved."
    )
    max_batch: int = Field(64, ge=1, description="Queries encoded together under load.")
    max_text_chars: int = Field(20_000, ge=1, description="Longest text a request may send.")
    max_k: int = Field(1000, ge=1)
    allowed_hosts: list[str] | None = Field(
        None, description="Host header names answered (any port); others get a 421. null: "
        "localhost, 127.0.0.1 and [::1] when bound to loopback (against DNS rebinding), any "
        "name otherwise; ['*']: any.",
    )
    max_header_bytes: int = Field(
        32_768, ge=1024, description="Largest request line and headers; over it: a 431 and "
        "the connection closes.",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="Seconds a connection has to send a request's line and "
        "headers, from its first byte (or from connecting); then a 408 and it closes.",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="Seconds a request's body may take to arrive after its "
        "headers; then a 408 and the connection closes.",
    )
    keep_alive_s: int = Field(
        5, ge=1, description="Seconds an idle keep-alive connection stays open after an answer."
    )
    max_connections: int = Field(
        1024, ge=1, description="Open connections (or requests in progress) beyond which a new "
        "request gets a 503.",
    )
    threads: int | None = Field(
        None, ge=1, strict=True, description="CPU threads the query encoder (torch) and the "
        "index search (FAISS) compute with, in ctxvec serve and in ctxvec query searching in "
        "its own process; null: the CPUs this process may use (its CPU affinity, capped by the "
        "cgroup CPU quota rounded down, at least 1).",
    )
