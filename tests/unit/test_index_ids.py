"""Stable chunk ids, the id map with its metadata, and filters -> allowed ids."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from ctxvec.config import load_config
from ctxvec.errors import UserInputError
from ctxvec.index import id_map
from ctxvec.index.id_map import (
    FilterError,
    IdMap,
    chunk_id,
    chunk_ids,
    chunk_metadata,
    id_map_table,
)
from ctxvec.ingest.snapshot import run_ingest


def test_chunk_ids_are_stable_63_bit_hashes():
    # pinned: the id of a chunk must never change between versions of ctxvec
    assert chunk_id("wiki:12", 3) == 1955348612181664083
    ids = chunk_ids(["a", "a", "b"], [0, 1, 0])
    assert ids.dtype == np.int64 and (ids >= 0).all() and len(set(ids)) == 3
    assert chunk_ids(["b"], [0])[0] == ids[2]  # the same chunk, the same id, anywhere
    with pytest.raises(ValueError, match="appears 2 times"):
        chunk_ids(["a", "a"], [0, 0])


def test_an_id_collision_fails_loudly(monkeypatch):
    monkeypatch.setattr(id_map, "chunk_id", lambda doc, chunk: 42)  # force two chunks to collide
    with pytest.raises(RuntimeError, match="collision"):
        chunk_ids(["a", "b"], [0, 0])


@pytest.fixture
def corpus(workspace, tmp_path):
    src = tmp_path / "docs.jsonl"
    docs = [{"id": f"d{i}", "title": f"Title {i % 3}", "text": f"document number {i} " * 3}
            for i in range(9)]
    src.write_text("".join(json.dumps(d) + "\n" for d in docs))
    cfg = load_config(None, [f"ingest.sources=[{src}]", "ingest.near_dup.enabled=false"])
    return run_ingest(cfg, workspace).corpus, str(src)


def _chunks(doc_ids, chunks):
    starts = [0 if c == 0 else 5 for c in chunks]
    ends = [s + 8 for s in starts]
    table = pa.table({"doc_id": doc_ids, "chunk": pa.array(chunks, pa.int32()),
                      "start": pa.array(starts, pa.int32()), "end": pa.array(ends, pa.int32())})
    return table, starts, ends


def test_metadata_and_texts_come_from_the_corpus(corpus):
    snapshots, src = corpus
    doc_ids, chunks = ["d4", "d1", "d1"], [0, 0, 1]
    _, starts, ends = _chunks(doc_ids, chunks)
    meta, texts = chunk_metadata(snapshots, doc_ids, starts, ends, ["source", "title"], True)
    assert meta["title"] == ["Title 1", "Title 1", "Title 1"]
    assert meta["source"] == [src] * 3
    assert texts == ["document", "document", "ent numb"]  # text[start:end] of each chunk
    meta, texts = chunk_metadata(snapshots, doc_ids, starts, ends, [], False)
    assert meta == {} and texts is None
    with pytest.raises(UserInputError, match="not document fields"):
        chunk_metadata(snapshots, doc_ids, starts, ends, ["colour"], False)


def test_filters_become_allowed_ids():
    doc_ids = ["a", "a", "b", "c", "c", "c"]
    chunks = [0, 1, 0, 0, 1, 2]
    table, _, _ = _chunks(doc_ids, chunks)
    ids = chunk_ids(doc_ids, chunks)
    meta = {"source": ["s1", "s1", "s2", "s1", "s1", "s1"],
            "title": ["A", "A", "B", "C", "C", "C"]}
    idmap = IdMap(id_map_table(ids, table, meta))
    assert idmap.metadata_keys == ["source", "title"]
    assert idmap.allowed_ids(None) is None and idmap.allowed_ids({}) is None
    assert set(idmap.allowed_ids({"source": "s2"})) == {ids[2]}
    assert set(idmap.allowed_ids({"source": "s1", "title": "C"})) == set(ids[3:6])  # and
    assert set(idmap.allowed_ids({"title": ["A", "B"]})) == set(ids[:3])  # any of a key's
    assert len(idmap.allowed_ids({"title": "nowhere"})) == 0
    with pytest.raises(FilterError, match="unknown filter key 'colour'.*source, title"):
        idmap.allowed_ids({"colour": "red"})
    assert list(idmap.ids_of_doc("c")) == list(ids[3:6])  # in chunk order
    assert len(idmap.ids_of_doc("zzz")) == 0
    rows = idmap.rows(ids[[5, 0]])
    assert [idmap.doc_ids[r] for r in rows] == ["c", "a"]
    assert [int(idmap.chunks[r]) for r in rows] == [2, 0]


def test_a_source_filter_matches_the_stored_path_its_file_name_or_a_trailing_part():
    """`source` holds the absolute path ingest read; a filter may name the file as the user
    knows it: the stored value, the file name, or trailing folders + name (whole components)."""
    doc_ids, chunks = ["a", "b", "c", "d"], [0, 0, 0, 0]
    table, _, _ = _chunks(doc_ids, chunks)
    ids = chunk_ids(doc_ids, chunks)
    meta = {"source": ["/w/data/demo/wiki_00.gz", "/w/data/demo/wiki_01.gz",
                       "/w/other/wiki_00.gz", "s3://bucket/corpus/AA/wiki_00.gz"],
            "title": ["wiki_00.gz", "B", "C", "D"]}
    idmap = IdMap(id_map_table(ids, table, meta))

    def allowed(**filters) -> set[int]:
        return set(idmap.allowed_ids(filters).tolist())

    assert allowed(source="/w/data/demo/wiki_00.gz") == {ids[0]}  # the stored value
    assert allowed(source="wiki_00.gz") == {ids[0], ids[2], ids[3]}  # every file of that name
    assert allowed(source="demo/wiki_00.gz") == {ids[0]}
    assert allowed(source="data/demo/wiki_00.gz") == allowed(source="./data/demo/wiki_00.gz") \
        == {ids[0]}
    assert allowed(source="AA/wiki_00.gz") == {ids[3]}
    assert allowed(source=["wiki_01.gz", "AA/wiki_00.gz"]) == {ids[1], ids[3]}
    assert allowed(source="00.gz") == set()  # whole components only
    assert allowed(source="emo/wiki_00.gz") == set()
    assert allowed(source="") == set()
    assert allowed(title="wiki_00.gz") == {ids[0]}  # other keys: exact values
    assert allowed(title="00.gz") == set()
