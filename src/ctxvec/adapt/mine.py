"""``run_mine``: mine label-free training examples and held-out pseudo-queries from a snapshot.

Steps, each batched so that ~10k documents take minutes on two CPU cores (``mine_examples`` is
steps 3 and 4 on any list of documents: the continual update mines its new and replayed
documents with it):

1. read the documents (``adapt.max_docs``: a sample by a hash of doc_id, stable across runs);
2. hold out documents by another hash of doc_id (``adapt.heldout_docs``): none of their pairs is
   trained on, and none is ever a negative; their pseudo-queries, filtered by BM25 alone (no
   model's preference decides what the label-free evaluation asks), go to ``heldout.parquet``;
3. index the documents with BM25 and, when the filter or the negatives ask for it, encode them
   with the starting encoder (one batched pass);
4. the structural signals (title_text, ict, crops, neighbours) and the filtered pseudo-queries of
   the other documents; then hard negatives for all of them;
5. write ``train.parquet``, ``heldout.parquet``, ``docs.parquet`` and ``manifest.json`` into
   ``mined/<key>/`` through ``Workspace.stage_dir`` (atomic). The key is a hash of the adapt
   section, the snapshot's corpus and the starting model, so mining the same corpus again with
   the same settings reuses the folder.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ctxvec.adapt import crops, ict, neighbours, pseudo_queries, title_text
from ctxvec.adapt.negatives import NegativeStats, mine_negatives
from ctxvec.adapt.pseudo_queries import Query
from ctxvec.adapt.search import DocSearch
from ctxvec.adapt.text import Doc, Example, rng_for, stable_hash
from ctxvec.artifacts import MinedData, Snapshot
from ctxvec.config import AdaptConfig, ConfigError, CtxvecConfig
from ctxvec.errors import UserInputError
from ctxvec.ingest.corpus import iter_corpus
from ctxvec.model.encoder import Encoder
from ctxvec.workspace import Workspace, read_json, sha256_text, write_manifest

log = logging.getLogger(__name__)

MINED = "mined"
TRAIN_FILE, HELDOUT_FILE, DOCS_FILE = "train.parquet", "heldout.parquet", "docs.parquet"
_HASH_RANGE = float(2**64)

TRAIN_SCHEMA = pa.schema([("anchor", pa.string()), ("positive", pa.string()),
                          ("negatives", pa.list_(pa.string())), ("signal", pa.string()),
                          ("doc_id", pa.string())])
HELDOUT_SCHEMA = pa.schema([("query", pa.string()), ("doc_id", pa.string()),
                            ("signal", pa.string())])
DOCS_SCHEMA = pa.schema([("doc_id", pa.string()), ("text", pa.string())])


# --- documents and the held-out split -------------------------------------------------------


def read_docs(corpus: list[str], max_docs: int | None) -> list[Doc]:
    """The corpus's documents (each doc_id's newest version); at most ``max_docs`` of them, the
    ones of smallest hash, so the sample is the same whatever order the corpus is read in."""
    docs = [Doc(r["doc_id"], r["title"] or "", r["text"] or "")
            for b in iter_corpus(corpus, ("doc_id", "title", "text")) for r in b.to_pylist()]
    return sorted(hash_sample([d for d in docs if d.text.strip()], max_docs),
                  key=lambda d: d.doc_id)


def hash_sample(docs: list[Doc], n: int | None) -> list[Doc]:
    """At most ``n`` of ``docs`` (in their order): those of smallest hash of doc_id, so the sample
    is the same whatever order the documents come in."""
    if n is None or len(docs) <= n:
        return docs
    keep = {d.doc_id for d in sorted(docs, key=lambda d: stable_hash("sample", d.doc_id))[:n]}
    return [d for d in docs if d.doc_id in keep]


def heldout_mask(doc_ids: list[str], heldout: float, cap: int | None = None) -> np.ndarray:
    """Which documents are held out: a share (< 1) by a hash threshold, so each document's fate
    depends on its id alone; a count (>= 1) as the documents of smallest hash. ``cap``: at most
    that many, the ones of smallest hash (so a large corpus's evaluation stays cheap)."""
    h = np.asarray([stable_hash("heldout", d) for d in doc_ids], dtype=np.float64)
    if heldout <= 0 or not doc_ids:
        return np.zeros(len(doc_ids), dtype=bool)
    count = len(doc_ids) if heldout < 1 else min(int(heldout), len(doc_ids))
    if cap is not None:
        count = min(count, cap)
    mask = np.zeros(len(doc_ids), dtype=bool)
    mask[np.argsort(h, kind="stable")[:count]] = True
    if heldout < 1:
        mask &= h / _HASH_RANGE < heldout
    return mask


# --- the signals ----------------------------------------------------------------------------


def structural_examples(docs: list[Doc], rows: list[int], acfg: AdaptConfig) -> list[Example]:
    """title_text, ict, crops and neighbours pairs of the documents at ``rows``."""
    out: list[Example] = []
    s, mw = acfg.seed, acfg.max_words
    for row in rows:
        d = docs[row]
        out += title_text.pairs(d, acfg.title_text, mw)
        out += ict.pairs(d, acfg.ict, rng_for(s, ict.SIGNAL, d.doc_id))
        out += crops.pairs(d, acfg.crops, rng_for(s, crops.SIGNAL, d.doc_id), mw)
        out += neighbours.pairs(d, acfg.neighbours, rng_for(s, neighbours.SIGNAL, d.doc_id))
    return out


def filtered_queries(docs: list[Doc], rows: list[int], search: DocSearch, acfg: AdaptConfig,
                     how: str, per_doc: int | None = None) -> tuple[list, int]:
    """(pseudo-queries of ``rows`` that ``how`` finds again, how many were made); at most
    ``per_doc`` per document when given."""
    pcfg = acfg.pseudo_queries
    made = pseudo_queries.candidates(docs, rows, search, pcfg, acfg.seed, acfg.max_words)
    keep = pseudo_queries.found(made, search, how, pcfg.filter_k)
    kept = [q for q, k in zip(made, keep, strict=True) if k]
    if per_doc is not None:
        seen: Counter = Counter()
        first = []
        for q in kept:
            seen[q.row] += 1
            if seen[q.row] <= per_doc:
                first.append(q)
        kept = first
    return kept, len(made)


def heldout_queries(docs: list[Doc], rows: Sequence[int], search: DocSearch,
                    acfg: AdaptConfig) -> tuple[list[Query], int]:
    """(held-out pseudo-queries of the documents at ``rows``, how many were made): filtered by
    BM25 alone, so no model's preference decides what the label-free evaluation asks, and at
    most one per document, so every document weighs the same."""
    return filtered_queries(docs, list(rows), search, acfg, "bm25", per_doc=1)


def searched_texts(docs: list[Doc], heldout: list[Query]) -> list[str]:
    """Each document's text as the held-out queries search it: a sentence query's document
    without that sentence, as trained pairs are made (finding it is then a matter of meaning,
    not of copying); any other document whole."""
    text = {q.row: q.positive for q in heldout if q.kind == "sentence"}
    return [text.get(i, d.full) for i, d in enumerate(docs)]


@dataclass(frozen=True)
class MineStats:
    """What ``mine_examples`` made and kept, for the manifests."""

    made: int  # pseudo-queries of the training documents, before the filter
    kept: int  # ... that the filter kept
    heldout_made: int  # pseudo-queries of the held-out documents, before BM25's filter
    negatives: NegativeStats


def mine_examples(acfg: AdaptConfig, docs: list[Doc], train_rows: list[int],
                  held_rows: list[int], search: DocSearch
                  ) -> tuple[list[Example], list[Query], MineStats]:
    """The examples of the documents at ``train_rows`` (structural signals and filtered
    pseudo-queries, then hard negatives from ``search``, never a held-out document) and the
    held-out pseudo-queries of those at ``held_rows``. ``search`` indexes ``docs``."""
    examples = structural_examples(docs, train_rows, acfg)
    queries, made = filtered_queries(docs, train_rows, search, acfg,
                                     acfg.pseudo_queries.filter)
    examples += pseudo_queries.to_examples(queries, docs)
    heldout, held_made = heldout_queries(docs, held_rows, search, acfg)
    allowed = np.ones(len(docs), dtype=bool)
    allowed[held_rows] = False
    row_of = {d.doc_id: i for i, d in enumerate(docs)}
    examples, neg = mine_negatives(examples, [row_of[e.doc_id] for e in examples], docs, allowed,
                                   search, acfg.negatives, acfg.seed, acfg.max_words)
    return examples, heldout, MineStats(made, len(queries), held_made, neg)


def build_search(acfg: AdaptConfig, docs: list[Doc], model_dir: str | Path | None,
                 train_device: str) -> DocSearch:
    """BM25 over ``docs`` and, when the adapt section asks for the encoder (filter or
    negatives), the model at ``model_dir`` with the documents' vectors; on the CPU when
    ``train.device`` is, else wherever it runs fastest."""
    device = "cpu" if train_device == "cpu" else "auto"
    return DocSearch.build([d.full for d in docs], _encoder(acfg, model_dir, device),
                           acfg.batch_size)


def write_examples(path: Path, examples: list[Example]) -> None:
    """``examples`` as ``train.parquet`` rows: what ``data.source: mined`` trains on."""
    pq.write_table(pa.Table.from_pylist(
        [{"anchor": e.anchor, "positive": e.positive, "negatives": list(e.negatives),
          "signal": e.signal, "doc_id": e.doc_id} for e in examples], schema=TRAIN_SCHEMA), path)


# --- the stage ------------------------------------------------------------------------------


def mine_key(acfg: AdaptConfig, snap: Snapshot, model_dir: str | Path | None) -> str:
    model = None
    if model_dir is not None and acfg.uses_encoder():
        weights = sorted(Path(model_dir).glob("*.safetensors"))
        model = [str(model_dir), [(w.name, w.stat().st_size, w.stat().st_mtime_ns)
                                  for w in weights]]
    what = {"adapt": acfg.model_dump(mode="json"),
            "corpus": [Path(c).name for c in snap.corpus], "model": model}
    return sha256_text(json.dumps(what, sort_keys=True))[:16]


def _record(folder: Path, key: str) -> MinedData:
    m = read_json(folder / "manifest.json")
    return MinedData(str(folder), key, m["counts"], m["heldout"]["queries"], m["docs"])


def _encoder(acfg: AdaptConfig, model_dir: str | Path | None, device: str) -> Encoder | None:
    if not acfg.uses_encoder():
        return None
    if model_dir is None:
        raise ConfigError("mining with the encoder (adapt.pseudo_queries.filter, "
                          "adapt.negatives.sources) needs a pretrained model.init")
    # bf16 where the CPU or GPU runs it fast, and only the first adapt.max_tokens tokens of a
    # text: mining ranks candidates, it needs no exact figure
    enc = Encoder.load(model_dir, device=device, precision="auto")
    enc.settings = replace(enc.settings, max_length=min(enc.settings.max_length, acfg.max_tokens))
    return enc


def eval_rows(doc_ids: list[str], held: np.ndarray, eval_docs: int | None) -> list[int]:
    """The documents the label-free evaluation searches: every held-out one, then the others of
    smallest hash until ``eval_docs`` (all of them when None), in corpus order. A fixed sample,
    so every model is scored on the same search, and its cost does not grow with the corpus."""
    rows = range(len(doc_ids))
    if eval_docs is None or len(doc_ids) <= eval_docs:
        return list(rows)
    others = sorted((r for r in rows if not held[r]),
                    key=lambda r: stable_hash("eval", doc_ids[r]))
    keep = {r for r in rows if held[r]} | set(others[: max(0, eval_docs - int(held.sum()))])
    return sorted(keep)


def _write(tmp: Path, examples: list[Example], heldout: list[Query], docs: list[Doc],
           searched: list[int]) -> None:
    write_examples(tmp / TRAIN_FILE, examples)
    texts = searched_texts(docs, heldout)
    pq.write_table(pa.Table.from_pylist(
        [{"query": q.text, "doc_id": docs[q.row].doc_id,
          "signal": pseudo_queries.SIGNAL[q.kind]} for q in heldout], schema=HELDOUT_SCHEMA),
        tmp / HELDOUT_FILE)
    pq.write_table(pa.Table.from_pylist(
        [{"doc_id": docs[i].doc_id, "text": texts[i]} for i in searched],
        schema=DOCS_SCHEMA), tmp / DOCS_FILE)


def run_mine(cfg: CtxvecConfig, ws: Workspace, snap: Snapshot,
             model_dir: str | Path | None = None) -> MinedData:
    """Mine the snapshot's corpus into ``<home>/mined/<key>/``. ``model_dir``: the local folder
    of the starting model (``model.init``, resolved by the caller), for the encoder filter and
    encoder negatives."""
    started = time.time()
    acfg = cfg.adapt
    if snap is None:
        raise UserInputError("the mine stage needs an ingested corpus: set ingest.sources")
    key = mine_key(acfg, snap, model_dir)
    folder = ws.root / MINED / key
    if (folder / "manifest.json").is_file():
        log.info("mine: %s already mined", key)
        return _record(folder, key)
    docs = read_docs(snap.corpus, acfg.max_docs)
    if len(docs) < 2:
        raise UserInputError(f"the corpus has {len(docs)} document(s) with text; mining needs "
                             "at least 2")
    held = heldout_mask([d.doc_id for d in docs], acfg.heldout_docs, acfg.heldout_max)
    train_rows = [i for i in range(len(docs)) if not held[i]]
    held_rows = [i for i in range(len(docs)) if held[i]]
    log.info("mine: %d documents, %d held out", len(docs), len(held_rows))
    search = build_search(acfg, docs, model_dir, cfg.train.device)
    examples, heldout, stats = mine_examples(acfg, docs, train_rows, held_rows, search)
    neg = stats.negatives
    if not examples:
        raise UserInputError("mining found no training example: the documents are too short "
                             "for every signal on (see the adapt section)")
    counts = dict(sorted(Counter(e.signal for e in examples).items()))
    with ws.stage_dir(folder) as tmp:
        searched = eval_rows([d.doc_id for d in docs], held, acfg.eval_docs)
        _write(tmp, examples, heldout, docs, searched)
        write_manifest(
            tmp, "mine", started, key=key, snapshot=snap.snapshot_id, docs=len(docs),
            eval_docs=len(searched),
            counts=counts, examples=len(examples),
            pseudo_queries={"made": stats.made, "kept": stats.kept,
                            "filter": acfg.pseudo_queries.filter},
            heldout={"docs": len(held_rows), "made": stats.heldout_made,
                     "queries": len(heldout)},
            negatives={"with_negatives": neg.with_negatives, "negatives": neg.negatives,
                       "dropped_by_margin": neg.dropped_by_margin},
            model=str(model_dir) if model_dir is not None and acfg.uses_encoder() else None,
            config=acfg.model_dump(mode="json"))
    log.info("mine: %d examples (%s), %d held-out queries, %.1fs", len(examples),
             ", ".join(f"{k} {v}" for k, v in counts.items()), len(heldout),
             time.time() - started)
    return _record(folder, key)
