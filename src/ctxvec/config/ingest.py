"""Corpus preparation: ingest, tokenizer and packing sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ctxvec.config.base import _Section


class NearDupConfig(_Section):
    enabled: bool = True
    threshold: float = Field(0.9, gt=0, le=1, description="Jaccard of word shingles.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations.")
    shingle: int = Field(5, ge=1, description="Words per shingle.")


class IngestConfig(_Section):
    sources: list[str] = Field(
        default_factory=list,
        description="Files, directories or globs of .txt, .md, .jsonl, .json, .csv, .tsv, "
        ".parquet or wikiextractor <doc> files (optionally .gz, .zst, .bz2 or .xz). Relative "
        "paths resolve against the recipe's folder.",
    )
    txt_mode: Literal["line", "file"] = "line"
    text_field: str = "text"
    id_field: str = "id"
    title_field: str = "title"
    nfkc: bool = Field(True, description="Unicode NFKC normalisation before hashing.")
    min_chars: int = Field(1, ge=0)
    max_chars: int | None = Field(None, ge=1)
    drop_redirects: bool = True
    near_dup: NearDupConfig = NearDupConfig()
    incremental: bool = Field(
        True, description="Skip files already fully ingested with the same content."
    )
    workers: int | None = Field(None, ge=1, description="Processes over files (default: cores).")
    shard_docs: int = Field(50_000, ge=1, description="Documents per Parquet shard.")
    max_docs: int | None = Field(None, ge=1, description="Stop after this many kept documents.")
    dedup_cache_mb: int = Field(
        64, ge=1, le=65536, description="Page cache (MiB) of the on-disk de-duplication state: "
        "the most it holds in memory at any corpus size.",
    )


class TokenizerConfig(_Section):
    source: Literal["train", "model"] = Field(
        "train", description="'train' learns a vocabulary; 'model' reuses the checkpoint's own."
    )
    kind: Literal["wordpiece", "bpe", "unigram"] = "wordpiece"
    vocab_size: int = Field(8000, ge=100)
    min_frequency: int = Field(2, ge=1)
    normalization: Literal["nfkc", "nfc", "nfd", "none"] = "nfkc"
    lowercase: bool = True
    strip_accents: bool = False
    extra_special_tokens: list[str] = Field(default_factory=list)
    max_docs: int | None = Field(None, ge=1, description="Train on at most this many documents.")
    heldout_every: int = Field(
        50, ge=2, description="Every Nth document is held out to measure the vocabulary."
    )


class PackConfig(_Section):
    mode: Literal["concat", "doc", "pair"] = Field(
        "concat", description="concat: documents joined by [SEP], no padding; doc: one document "
        "per sequence; pair: [CLS] A [SEP] B [SEP] from consecutive sentences.",
    )
    workers: int | None = Field(None, ge=1, description="Processes (default: cores).")
    docs_per_shard: int = Field(2000, ge=1, description="Documents per output shard (rounded "
                                "to whole Parquet row groups).")
