"""The de-duplication state on disk (``ctxvec.ingest.dedup_state``): it finds exactly the documents
the in-memory reference (datasketch's ``MinHashLSH`` and Python dicts, document by document) finds,
it is rebuilt from the committed snapshots after an interrupted ingest, and what the process holds
of it does not grow with the number of documents."""

from __future__ import annotations

import hashlib
import json
import random
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctxvec.config import load_config
from ctxvec.ingest import snapshot as snapshot_mod
from ctxvec.ingest.cleaning import clean_text
from ctxvec.ingest.corpus import doc_files
from ctxvec.ingest.dedup import Merger
from ctxvec.ingest.dedup_state import DEDUP_FILE, DedupState
from ctxvec.ingest.minhash import Signer, jaccard
from ctxvec.ingest.near_dup import LshBands
from ctxvec.ingest.snapshot import run_ingest
from ctxvec.ingest.worker import content_hash, part_schema

THRESHOLD, NUM_PERM, SHINGLE = 0.9, 128, 5


def _cfg(*sources, **ingest):
    sets = [f"ingest.sources={json.dumps([str(s) for s in sources])}", "ingest.workers=1"]
    sets += [f"ingest.{k}={json.dumps(v)}" for k, v in ingest.items()]
    return load_config(None, sets)


def _reference(runs: list[list[tuple[str, str]]]) -> list[tuple[list[str], list[tuple]]]:
    """What the in-memory implementation decided: for each ingest (a list of (id, text) in file
    order), the kept ids and the (id, kind) of every rejected document, in order."""
    from datasketch import LeanMinHash, MinHashLSH

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM,
                     hashfunc=lambda b: hashlib.blake2b(b, digest_size=8).digest())
    signer = Signer(NUM_PERM, SHINGLE)
    seen: dict[str, str] = {}  # content hash -> doc id, every earlier ingest included
    sigs: dict[str, np.ndarray] = {}  # doc id -> signature of the indexed (first) version
    out = []
    for run in runs:
        run_ids: set[str] = set()
        kept, rejected = [], []
        for d, raw in run:
            text = clean_text(raw)
            h, sig = content_hash(text), signer.signature(text)
            if h in seen:
                rejected.append((d, "duplicate"))
                continue
            if d in run_ids:
                rejected.append((d, "quarantined"))
                continue
            mh = LeanMinHash(seed=0, hashvalues=sig, scheme="affine64")
            if any(k != d and jaccard(sigs[k], sig) >= THRESHOLD for k in lsh.query(mh)):
                rejected.append((d, "near_duplicate"))
                continue
            if d not in sigs:
                lsh.insert(d, mh)
                sigs[d] = sig
            seen[h] = d
            run_ids.add(d)
            kept.append(d)
        out.append((kept, rejected))
    return out


def _variant(words: list[str], edits: int, rng: random.Random) -> list[str]:
    out = list(words)
    for i in rng.sample(range(len(out)), edits):
        out[i] = f"edit{rng.randrange(10**6)}"
    return out


def _crafted(rng: random.Random) -> list[tuple[str, str]]:
    """Near-duplicates around the threshold: 200-word texts with 0-4 words replaced (Jaccard of
    5-word shingles about 1.0, 0.95, 0.90, 0.86, 0.82), variants of variants (chains), texts
    that differ only in white space (exact duplicates) and ids used twice."""
    vocab = [f"w{i}" for i in range(400)]
    docs: list[tuple[str, str]] = []
    for b in range(10):
        base = [rng.choice(vocab) for _ in range(200)]
        docs.append((f"b{b}", " ".join(base)))
        for v in range(8):
            var = _variant(base, rng.choice([0, 1, 2, 2, 3, 4]), rng)
            docs.append((f"b{b}v{v}", " ".join(var)))
            if v % 3 == 0:  # a variant of the variant
                docs.append((f"b{b}v{v}c", " ".join(_variant(var, rng.choice([1, 2]), rng))))
        docs.append((f"b{b}ws", "  " + "   ".join(base) + "\n"))
    docs.append(("b0v1", "an id used twice, with other text " + " ".join(vocab[:50])))
    rng.shuffle(docs)
    for i in range(6):  # near-duplicates next to each other: matched within a batch
        fresh = [rng.choice(vocab) for _ in range(200)]
        docs[i * 20:i * 20] = [(f"L{i}", " ".join(fresh)),
                               (f"L{i}n", " ".join(_variant(fresh, 1, rng)))]
    return docs


def _decisions(snap) -> tuple[list[str], list[tuple]]:
    kept = [d for f in doc_files([snap.path])
            for d in pq.read_table(f).column("doc_id").to_pylist()]
    with open(f"{snap.path}/rejected.jsonl") as f:
        rejected = [(r["doc_id"], r["kind"]) for r in map(json.loads, f)]
    return kept, rejected


def _write(path, docs) -> None:
    path.write_text("".join(json.dumps({"id": d, "text": t}) + "\n" for d, t in docs))


def test_same_duplicates_as_the_in_memory_reference(workspace, tmp_path, monkeypatch):
    """Two ingests (the second adds a file with updates of earlier ids and new near-duplicates),
    merged in batches of 7 so that matches fall within a batch and across batches."""
    monkeypatch.setattr(snapshot_mod, "MERGE_BATCH", 7)
    rng = random.Random(17)
    docs = _crafted(rng)
    first = (docs[: len(docs) // 2], docs[len(docs) // 2:])
    texts = dict(docs)
    second = [(d, " ".join(_variant(texts[d].split(), rng.choice([1, 3]), rng)))
              for d, _ in rng.sample(docs, 25)]  # updates: an earlier id, edited text
    second += [(f"n{i}{d}", " ".join(_variant(texts[d].split(), 2, rng)))
               for i, (d, _) in enumerate(rng.sample(docs, 25))]
    # an update with new text is kept but not indexed (its id's first version stays indexed),
    # so a near-duplicate of the new text is kept too
    new_text = [f"u{rng.randrange(400)}" for _ in range(200)]
    second[:0] = [("L0", " ".join(new_text)), ("z", " ".join(_variant(new_text, 1, rng)))]
    (tmp_path / "a").mkdir()
    _write(tmp_path / "a" / "0.jsonl", first[0])
    _write(tmp_path / "a" / "1.jsonl", first[1])
    _write(tmp_path / "b.jsonl", second)

    got = [_decisions(run_ingest(_cfg(tmp_path / "a"), workspace)),
           _decisions(run_ingest(_cfg(tmp_path / "a", tmp_path / "b.jsonl"), workspace))]
    want = _reference([first[0] + first[1], second])
    assert got == want
    kinds = [k for _, rej in want for _, k in rej]
    # the corpus exercises every rule: near-duplicates dropped and kept around the threshold
    assert kinds.count("near_duplicate") >= 20 and "duplicate" in kinds and "quarantined" in kinds
    assert len(want[1][0]) >= 10  # updates and new texts kept in the second ingest
    assert {"L0", "z"} <= set(want[1][0]) and ("L1n", "near_duplicate") in want[0][1]


def test_state_is_rebuilt_from_the_snapshots_after_an_interrupted_ingest(workspace, tmp_path,
                                                                         monkeypatch):
    """The state file lives in the staging folder while an ingest runs and goes with it, whether
    the ingest commits or dies; the next ingest rebuilds it from the committed snapshots and finds
    the same exact and near-duplicates of their documents."""
    base = " ".join(f"word{i}" for i in range(120))
    (tmp_path / "a.jsonl").write_text(json.dumps({"id": "a", "text": base}) + "\n")
    nd = {"threshold": 0.8}  # 9 bands of 13: Jaccard 0.92 is a candidate with p = 0.975
    run_ingest(_cfg(tmp_path / "a.jsonl", near_dup=nd), workspace)

    near = base.replace("word60", "changed")  # Jaccard 111/121 = 0.92
    for i, (d, t) in enumerate([("x", "first file of the second ingest"), ("b", near),
                                ("c", base), ("d", "an unrelated text about rivers")]):
        (tmp_path / f"n{i}.jsonl").write_text(json.dumps({"id": d, "text": t}) + "\n")
    real, during = snapshot_mod.ingest_file, []

    def dying(path, *args):
        during.extend(workspace.snapshots.glob(f".tmp-*/.parts/{DEDUP_FILE}"))
        if path.endswith("n2.jsonl"):
            raise KeyboardInterrupt
        return real(path, *args)

    monkeypatch.setattr(snapshot_mod, "ingest_file", dying)
    sources = [tmp_path / f"n{i}.jsonl" for i in range(4)]
    with pytest.raises(KeyboardInterrupt):
        run_ingest(_cfg(*sources, near_dup=nd), workspace)
    assert during, "the state file is in the staging folder while the ingest runs"
    assert not list(workspace.root.rglob("*.sqlite*"))  # gone with the staging folder

    monkeypatch.setattr(snapshot_mod, "ingest_file", real)
    snap = run_ingest(_cfg(*sources, near_dup=nd), workspace)
    kept, rejected = _decisions(snap)
    assert kept == ["x", "d"] and rejected == [("b", "near_duplicate"), ("c", "duplicate")]
    assert snap.corpus_docs == 3 and not list(workspace.root.rglob("*.sqlite*"))


def _batch(start: int, n: int, rng: np.random.Generator) -> pa.RecordBatch:
    sigs = rng.integers(0, 2**63, size=(n, NUM_PERM), dtype=np.uint64)  # unrelated documents
    ids = [f"doc{i}" for i in range(start, start + n)]
    cols = {"doc_id": ids, "text": ids, "title": [""] * n, "source": ["s"] * n,
            "content_hash": [content_hash(d) for d in ids], "line": list(range(n)),
            "minhash": pa.FixedSizeListArray.from_arrays(pa.array(sigs.ravel()), NUM_PERM)}
    return pa.RecordBatch.from_pydict(cols, schema=part_schema(True, NUM_PERM))


def test_what_the_process_holds_does_not_grow_with_documents(tmp_path):
    """Between batches the merger holds no entry of any document, its Python allocations stay
    flat from 200 to 2,000 documents (the in-memory index grew about 3 KB a document), the
    SQLite page cache is capped, and everything is on disk."""
    bands = LshBands(THRESHOLD, NUM_PERM)
    rng = np.random.default_rng(0)
    counts = dict.fromkeys(("kept", "duplicates", "near_duplicates", "quarantined"), 0)
    with (DedupState(tmp_path / DEDUP_FILE, bands, cache_mb=1) as state,
          open(tmp_path / "rejected.jsonl", "w") as rej):
        merger = Merger(state, bands, THRESHOLD, None, counts, {}, rej)
        merger.decide(_batch(0, 200, rng))
        tracemalloc.start()
        try:
            after_first = tracemalloc.get_traced_memory()[0]
            for k in range(1, 10):
                merger.decide(_batch(200 * k, 200, rng))
                assert merger.resident_entries() == 0
            grown = tracemalloc.get_traced_memory()[0] - after_first
        finally:
            tracemalloc.stop()
        assert grown < 200_000, f"{grown} bytes more after 1,800 more documents"
        assert state.rows() == {"exact": 2000, "doc": 2000, "sig": 2000, "band": 2000 * bands.b}
        assert state.cache_bytes() <= 1 << 20
    assert counts["kept"] == 2000


def test_corpus_size_is_counted_from_the_state_and_recorded(workspace, tmp_path):
    """The ingest counts the corpus's distinct ids in its state (an update is not a new
    document) and records the count, so that a later "nothing new" or ``load_snapshot`` does not
    read every id of every snapshot again."""
    from ctxvec.ingest.corpus import count_docs
    from ctxvec.ingest.snapshot import load_snapshot
    from ctxvec.workspace import read_json

    (tmp_path / "a.jsonl").write_text('{"id": "1", "text": "one"}\n{"id": "2", "text": "two"}\n')
    run_ingest(_cfg(tmp_path), workspace)
    (tmp_path / "b.jsonl").write_text('{"id": "2", "text": "two, revised"}\n'
                                      '{"id": "3", "text": "three"}\n')
    snap = run_ingest(_cfg(tmp_path), workspace)
    assert snap.corpus_docs == count_docs(snap.corpus) == 3
    assert read_json(f"{snap.path}/manifest.json")["corpus_docs"] == 3
    again = run_ingest(_cfg(tmp_path), workspace)
    assert not again.created and again.corpus_docs == load_snapshot(workspace).corpus_docs == 3
