from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from ctxvec.config import load_config
from ctxvec.ingest import snapshot as snapshot_mod
from ctxvec.ingest.cleaning import clean_text
from ctxvec.ingest.corpus import committed_snapshots, doc_files, iter_corpus
from ctxvec.ingest.snapshot import SNAPSHOT_SCHEMA, run_ingest
from ctxvec.ingest.sources import MAX_LINE_BYTES, SourceError, expand_sources

WIKI = (b'<doc id="7" url="?curid=7" title="Seven">\nSeven\n\nBody of seven.\n</doc>\n'
        b'<doc id="8" url="?curid=8" title="Stub">\nStub\n\n</doc>\n')


def _cfg(*sources, **ingest):
    sets = [f"ingest.sources={json.dumps([str(s) for s in sources])}", "ingest.workers=1"]
    sets += [f"ingest.{k}={json.dumps(v)}" for k, v in ingest.items()]
    return load_config(None, sets)


def _docs(snap) -> dict[str, dict]:
    rows = pa.concat_tables([pq.read_table(f) for f in doc_files([snap.path])]).to_pylist()
    return {r["doc_id"]: r for r in rows}


def _rejected(snap) -> list[dict]:
    with open(f"{snap.path}/rejected.jsonl") as f:
        return [json.loads(line) for line in f]


def _accounted(snap) -> bool:
    return snap.read == (snap.kept + snap.duplicates + snap.near_duplicates + snap.filtered
                         + snap.quarantined + snap.deferred)


def test_every_format_plain_and_compressed(workspace, tmp_path):
    (tmp_path / "a.txt").write_text("alpha line one\n\nalpha line two\n")
    (tmp_path / "b.md").write_text("# A heading line\n")
    (tmp_path / "c.jsonl").write_text('{"id": "c1", "text": "cee one", "title": "C"}\n')
    (tmp_path / "d.json").write_text('[{"id": "d1", "text": "dee one"}, {"text": "dee two"}]')
    (tmp_path / "e.csv").write_text('id,text,title\ne1,"eee, with a comma",E\n')
    (tmp_path / "f.tsv").write_text("text\tid\nfff tab separated\tf1\n")
    pq.write_table(pa.table({"text": ["ggg parquet"], "id": ["g1"]}), tmp_path / "g.parquet")
    (tmp_path / "wiki_00").write_bytes(WIKI)
    with gzip.open(tmp_path / "h.jsonl.gz", "wt") as f:
        f.write('{"id": "h1", "text": "gzipped json"}\n')
    (tmp_path / "i.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(b"zstd text\n"))
    snap = run_ingest(_cfg(tmp_path), workspace)
    docs = _docs(snap)
    assert {"c1", "d1", "e1", "f1", "g1", "h1", "wiki:7"} <= set(docs)
    texts = {r["text"] for r in docs.values()}
    assert {"alpha line one", "alpha line two", "# A heading line", "dee two",
            "eee, with a comma", "zstd text", "Body of seven."} <= texts
    assert docs["e1"]["title"] == "E" and docs["c1"]["title"] == "C"
    assert snap.kept == 12 and snap.filtered == 1 and snap.quarantined == 0 and _accounted(snap)
    assert pq.read_schema(doc_files([snap.path])[0]).equals(SNAPSHOT_SCHEMA)
    # ids of records without one derive from the content: stable wherever the line moves
    assert "a:" + docs[next(d for d in docs if docs[d]["text"] == "alpha line one")][
        "content_hash"][:16] in docs


def test_every_bad_input_is_quarantined_with_its_reason(workspace, tmp_path):
    (tmp_path / "utf8.txt").write_bytes(b"good line\nbad \xff byte\n")
    (tmp_path / "bad.jsonl").write_text('{not json\n{"id": "x"}\n["a list"]\n{"text": "ok json"}\n')
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02binary\x00")
    (tmp_path / "long.txt").write_bytes(b"x" * (MAX_LINE_BYTES + 10) + b"\nshort after long\n")
    (tmp_path / "broken.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a"}\n' * 50)[:40])
    (tmp_path / "rows.csv").write_bytes(b"id,text\nr1,fine row\nr2,too,many,fields\nr3,\xff\n")
    (tmp_path / "nocol.csv").write_text("id,body\n1,x\n")
    (tmp_path / "cut_00").write_bytes(b'<doc id="9" url="?curid=9" title="Cut">\nCut\n\nnever')
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n")
    snap = run_ingest(_cfg(tmp_path), workspace)
    reasons = [r["reason"] for r in _rejected(snap) if r["kind"] == "quarantined"]

    def has(text):
        return any(text in r for r in reasons)

    assert has("invalid UTF-8") and has("malformed JSON") and has("not an object")
    assert has("missing or non-string field 'text'") and has("empty file")
    assert has("binary file") and has(f"line longer than {MAX_LINE_BYTES}")
    assert has("truncated compressed file") and has("malformed row")
    assert has("header has no column 'text'")
    assert has("unterminated <doc>") and has("unsupported format")
    assert {r["source"] for r in _rejected(snap)} >= {str(tmp_path / "utf8.txt")}
    assert all("line" in r for r in _rejected(snap))
    assert {d["text"] for d in _docs(snap).values()} == {
        "good line", "ok json", "short after long", "fine row"}
    assert _accounted(snap)


def test_cleaning_is_idempotent_and_normalises():
    raw = "  Caf\u00e9\u200b  \ufb01ne\r\n\r\n\r\n\x07tab\there  "
    once = clean_text(raw)
    assert once == "Café fine\n\ntab here" and clean_text(once) == once


def test_exact_and_near_duplicates_are_found(workspace, tmp_path):
    base = " ".join(f"word{i}" for i in range(120))  # 116 distinct 5-word shingles
    near = base.replace("word60", "changed")  # 5 shingles differ: Jaccard 111/121 = 0.92
    other = "A completely different text about mountains, glaciers and alpine flowers in July."
    lines = [{"id": "a", "text": base}, {"id": "b", "text": base},  # exact duplicate
             {"id": "c", "text": "  " + base.replace(" ", "   ") + "\n"},
             {"id": "d", "text": near},
             {"id": "e", "text": other}]
    src = tmp_path / "dups.jsonl"
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    snap = run_ingest(_cfg(src, near_dup={"threshold": 0.8}), workspace)
    kinds = {r["doc_id"]: (r["kind"], r["reason"]) for r in _rejected(snap)}
    assert kinds["b"] == ("duplicate", "same text as a")
    assert kinds["d"][0] == "near_duplicate" and "near-duplicate of a" in kinds["d"][1]
    assert kinds["c"][0] == "duplicate"  # equal to a once whitespace is cleaned
    assert set(_docs(snap)) == {"a", "e"}
    assert (snap.duplicates, snap.near_duplicates) == (2, 1)


def test_incremental_ingest_adds_only_what_is_new(workspace, tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    one.write_text('{"id": "1", "text": "first document"}\n{"id": "2", "text": "second"}\n')
    two.write_text('{"id": "3", "text": "third document"}\n')
    first = run_ingest(_cfg(tmp_path), workspace)
    assert first.kept == 3 and first.created

    again = run_ingest(_cfg(tmp_path), workspace)
    assert not again.created and again.kept == 0 and again.skipped_files == 2
    assert again.snapshot_id == first.snapshot_id and len(committed_snapshots(workspace)) == 1

    # a changed file is read again, but only its new document is kept; the old ones are
    # duplicates of the first snapshot, and the unchanged file is not read at all
    one.write_text(one.read_text() + '{"id": "4", "text": "fourth, new"}\n')
    third = run_ingest(_cfg(tmp_path), workspace)
    assert third.created and third.kept == 1 and third.duplicates == 2
    assert third.skipped_files == 1 and set(_docs(third)) == {"4"}
    assert third.corpus_docs == 4 and len(third.corpus) == 2

    # a document whose text changed at its source: the newest version wins in the corpus
    one.write_text('{"id": "1", "text": "first document, revised"}\n')
    fourth = run_ingest(_cfg(tmp_path), workspace)
    assert fourth.kept == 1
    corpus = {r["doc_id"]: r["text"] for b in iter_corpus(fourth.corpus) for r in b.to_pylist()}
    assert corpus["1"] == "first document, revised" and len(corpus) == 4


def test_max_docs_defers_the_rest_to_the_next_ingest(workspace, tmp_path):
    src = tmp_path / "many.txt"
    src.write_text("".join(f"document number {i}\n" for i in range(10)))
    first = run_ingest(_cfg(src, max_docs=4), workspace)
    assert first.kept == 4 and first.deferred == 6 and _accounted(first)
    second = run_ingest(_cfg(src), workspace)  # the file was incomplete: read again
    assert second.kept == 6 and second.duplicates == 4 and second.corpus_docs == 10


def test_parallel_workers_give_the_same_snapshot(workspace, tmp_path):
    for i in range(4):
        (tmp_path / f"part{i}.txt").write_text("".join(f"file {i} line {j}\n" for j in range(50)))
    (tmp_path / "dup.txt").write_text("file 0 line 0\n")
    serial = run_ingest(_cfg(tmp_path, incremental=False), workspace)
    parallel = run_ingest(load_config(None, [f"ingest.sources=[{tmp_path}]", "ingest.workers=2",
                                             "ingest.incremental=false"]),
                          type(workspace)(workspace.root / "other"))
    assert list(_docs(serial)) == list(_docs(parallel))
    assert (parallel.kept, parallel.duplicates) == (200, 1)


def test_interrupted_ingest_leaves_no_snapshot(workspace, tmp_path, monkeypatch):
    for i in range(3):
        (tmp_path / f"f{i}.txt").write_text(f"text {i}\n")
    real = snapshot_mod.ingest_file
    calls = []

    def dying(path, *args):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(path, *args)

    monkeypatch.setattr(snapshot_mod, "ingest_file", dying)
    with pytest.raises(KeyboardInterrupt):
        run_ingest(_cfg(tmp_path), workspace)
    assert not any(workspace.snapshots.iterdir())  # no snapshot, no staging folder


def test_nothing_kept_is_an_error_but_the_reasons_are_kept(workspace, tmp_path):
    (tmp_path / "bad.jsonl").write_text("{bad\n")
    with pytest.raises(SourceError, match="kept no documents") as err:
        run_ingest(_cfg(tmp_path / "bad.jsonl"), workspace)
    assert "rejected.jsonl" in str(err.value)
    snaps = committed_snapshots(workspace)
    assert len(snaps) == 1 and "malformed JSON" in (snaps[0] / "rejected.jsonl").read_text()


def test_sources_expand_and_missing_ones_fail_clearly(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("b")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / ".hidden.txt").write_text("h")
    files = expand_sources([str(tmp_path), str(tmp_path / "*.txt")])
    assert [f.name for f in files] == ["a.txt", "b.txt"]
    with pytest.raises(SourceError, match="matches no file"):
        expand_sources([str(tmp_path / "nope*.txt")])
