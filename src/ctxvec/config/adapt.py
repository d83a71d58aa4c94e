"""The ``adapt`` section: label-free training signal mined from the corpus (``ctxvec.adapt``).

Every default is meant for any corpus, not tuned to one: one example per document and signal;
a 20% slice of documents (by a hash of their ids, at most 2,000) held out for the label-free
evaluation, enough pseudo-queries for it to rank models about as consistently as a labelled set
of 1,400 queries does, while the training keeps far more pairs than a run reads; in-batch
negatives only (mined hard negatives are opt-in, with a relative margin that drops candidates
scoring within 5% of the positive, likely unlabelled positives). BM25 alone for the pseudo-query
filter and the negatives by default, because an encoder pass over every document and anchor
costs more than the training itself on two CPU cores; the encoder is one setting away.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ctxvec.config.base import _Section

# held-out documents at most: enough pseudo-queries that the label-free measure ranks models
# about as consistently as 1,406 labelled queries do (docs/adaptation.md), at a fixed cost
HELDOUT_MAX = 2000


class TitleTextConfig(_Section):
    """title <-> text of the same document."""

    max_per_doc: int = Field(1, ge=0, le=1, description="0 turns the signal off.")
    min_title_words: int = Field(2, ge=1, description="Shorter titles make no pair.")


class ICTConfig(_Section):
    """Inverse cloze task: a sentence <-> the sentences around it."""

    max_per_doc: int = Field(1, ge=0, description="0 turns the signal off.")
    keep_prob: float = Field(
        0.1, ge=0, le=1, description="How often the sentence stays in its context (Lee et al.: "
        "0.1, so the model also learns lexical matching).")
    context_words: int = Field(160, ge=8, description="Words of context around the sentence.")


class CropsConfig(_Section):
    """Two independent random word spans of one document."""

    max_per_doc: int = Field(1, ge=0, description="0 turns the signal off.")
    min_ratio: float = Field(0.1, gt=0, le=1, description="Shortest crop, share of the words.")
    max_ratio: float = Field(0.5, gt=0, le=1, description="Longest crop, share of the words.")
    min_words: int = Field(24, ge=4, description="Shorter documents make no crops.")

    @model_validator(mode="after")
    def _ordered(self) -> CropsConfig:
        if self.min_ratio > self.max_ratio:
            raise ValueError(f"adapt.crops.min_ratio={self.min_ratio} exceeds "
                             f"adapt.crops.max_ratio={self.max_ratio}")
        return self


class NeighboursConfig(_Section):
    """Two adjacent passages of one document."""

    max_per_doc: int = Field(1, ge=0, description="0 turns the signal off.")
    passage_words: int = Field(64, ge=8, description="Words per passage.")


class PseudoQueriesConfig(_Section):
    """Queries made from the document itself, kept when a retriever finds the document again."""

    max_per_doc: int = Field(1, ge=0, description="Per kind; 0 turns the signal off.")
    kinds: list[Literal["sentence", "keywords"]] = Field(
        default_factory=lambda: ["sentence", "keywords"],
        description="sentence: one of its sentences; keywords: terms of high BM25 weight.")
    keywords: int = Field(6, ge=1, description="Terms in a keyword query.")
    min_sentence_words: int = Field(6, ge=2)
    max_sentence_words: int = Field(40, ge=2)
    filter: Literal["bm25", "encoder", "either"] = Field(
        "bm25", description="Which retriever must rank the query's document in its top "
        "filter_k: bm25 (no encoder pass while mining), encoder (the starting model) or "
        "either. Held-out queries are always filtered by BM25: no model's preference.")
    filter_k: int = Field(10, ge=1)


class NegativesConfig(_Section):
    """Hard negatives for every training example."""

    sources: list[Literal["bm25", "encoder"]] = Field(
        default_factory=lambda: ["bm25"], description="Where candidates come from: bm25, and "
        "encoder (the starting model's nearest documents: every anchor and document is "
        "encoded while mining, which on a CPU costs more than the training that follows).")
    per_example: int = Field(
        0, ge=0, description="Hard negatives per example; 0 (the default): in-batch negatives "
        "only. Without a cross-encoder to clean them, mined hard negatives are often unlabelled "
        "positives (docs/adaptation.md).")
    candidates: int = Field(30, ge=1, description="Top documents per source considered.")
    margin: float = Field(
        0.05, ge=0, lt=1, description="Drop a candidate scoring above (1 - margin) x the "
        "positive's score: likely an unlabelled positive.")


class AdaptConfig(_Section):
    """Label-free training signal mined from the corpus (the ``mine`` stage)."""

    title_text: TitleTextConfig = TitleTextConfig()
    ict: ICTConfig = ICTConfig()
    crops: CropsConfig = CropsConfig()
    neighbours: NeighboursConfig = NeighboursConfig()
    pseudo_queries: PseudoQueriesConfig = PseudoQueriesConfig()
    negatives: NegativesConfig = NegativesConfig()
    heldout_docs: float = Field(
        0.2, ge=0, description="Documents whose pseudo-queries are held out for evaluation: "
        "below 1 a share (by a hash of doc_id), from 1 a count (a whole number); 0: none.")
    heldout_max: int | None = Field(
        HELDOUT_MAX, ge=1, description="At most this many held-out documents (those of "
        "smallest hash), so that a large corpus's label-free evaluation stays minutes; "
        "null: no cap.")
    max_docs: int | None = Field(
        None, ge=1, description="Mine at most this many documents (a stable hash sample).")
    eval_docs: int | None = Field(
        2000, ge=1, description="Documents the label-free evaluation searches: every held-out "
        "one, and other documents (a stable hash sample) up to this many; null: all of them.")
    max_words: int = Field(256, ge=16, description="Words kept of any stored text.")
    batch_size: int = Field(64, ge=1, description="Texts per encoder batch while mining.")
    max_tokens: int = Field(
        128, ge=16, description="Tokens the encoder reads of a text while mining (ranking "
        "candidates needs the start of a document, not all of it; cost grows with it).")
    seed: int = 0

    @model_validator(mode="after")
    def _whole_count(self) -> AdaptConfig:
        if self.heldout_docs >= 1 and self.heldout_docs != int(self.heldout_docs):
            raise ValueError(f"adapt.heldout_docs={self.heldout_docs}: a share below 1 or a "
                             "whole number of documents")
        return self

    def uses_encoder(self) -> bool:
        """Whether mining needs the starting encoder (filter or negatives)."""
        pq = self.pseudo_queries
        return ((pq.max_per_doc > 0 and pq.filter != "bm25")
                or (self.negatives.per_example > 0 and "encoder" in self.negatives.sources))
