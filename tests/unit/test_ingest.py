from __future__ import annotations

import gzip
import json

import pyarrow.parquet as pq
import pytest

from ctxvec.config import load_config
from ctxvec.ingest.snapshot import SNAPSHOT_SCHEMA, run_ingest
from ctxvec.ingest.sources import SourceError, expand_sources


def _cfg(*sources, **ingest):
    sets = [f"ingest.sources={json.dumps([str(s) for s in sources])}"]
    sets += [f"ingest.{k}={v}" for k, v in ingest.items()]
    return load_config(None, sets)


def _rejected(snap):
    with open(f"{snap.path}/rejected.jsonl") as f:
        return [json.loads(line) for line in f]


def test_formats_and_bad_input_are_accounted_for(workspace, tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_bytes(b"first line\n\nsecond line\nbad \xff byte\nfirst line\n")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text(
        '{"id": "j1", "text": "json doc", "title": "T"}\n'
        "{not json\n"
        '{"id": "j2"}\n'
        '["a list"]\n'
        '{"text": "no id here"}\n'
    )
    wiki = tmp_path / "wiki_00.gz"
    with gzip.open(wiki, "wb") as f:
        f.write(b'<doc id="7" url="?curid=7" title="Seven">\nSeven\n\nBody of seven.\n</doc>\n'
                b'<doc id="8" url="?curid=8" title="Stub">\nStub\n\n</doc>\n'
                b'<doc id="9" url="?curid=9" title="Cut">\nCut\n\nnever closed\n')
    snap = run_ingest(_cfg(txt, jsonl, wiki), workspace)

    table = pq.read_table(f"{snap.path}/docs.parquet")
    assert table.schema.equals(SNAPSHOT_SCHEMA)
    rows = {r["doc_id"]: r for r in table.to_pylist()}
    assert set(rows) == {"a:1", "a:3", "j1", "b:5", "wiki:7"}
    assert rows["wiki:7"]["text"] == "Body of seven." and rows["wiki:7"]["title"] == "Seven"
    assert rows["j1"]["title"] == "T"
    assert all(r["snapshot"] == snap.snapshot_id for r in rows.values())

    # every record read is kept, a duplicate, filtered or quarantined: nothing vanishes
    assert snap.read == snap.kept + snap.duplicates + snap.filtered + snap.quarantined
    assert (snap.kept, snap.duplicates, snap.filtered, snap.quarantined) == (5, 1, 1, 5)
    reasons = [r["reason"] for r in _rejected(snap)]
    assert any("invalid UTF-8" in r for r in reasons)
    assert any("malformed JSON" in r for r in reasons)
    assert any("missing or non-string field 'text'" in r for r in reasons)
    assert any("not an object" in r for r in reasons)
    assert any("unterminated <doc>" in r for r in reasons)
    assert any(r == "empty text" for r in reasons)
    manifest = json.loads(open(f"{snap.path}/manifest.json").read())
    assert manifest["counts"]["kept"] == 5 and manifest["stage"] == "ingest"


def test_max_docs_and_txt_file_mode(workspace, tmp_path):
    for i in range(3):
        (tmp_path / f"d{i}.txt").write_text(f"document {i}\nsecond line {i}\n")
    snap = run_ingest(_cfg(tmp_path, txt_mode="file"), workspace)
    docs = pq.read_table(f"{snap.path}/docs.parquet").to_pylist()
    assert [d["doc_id"] for d in docs] == ["d0", "d1", "d2"]
    assert docs[0]["text"] == "document 0\nsecond line 0"
    snap2 = run_ingest(_cfg(tmp_path, max_docs=2), workspace)
    assert snap2.kept == 2


def test_nothing_kept_is_an_error_and_leaves_no_snapshot(workspace, tmp_path):
    (tmp_path / "empty.jsonl").write_text("{bad\n")
    with pytest.raises(ValueError, match="kept no documents"):
        run_ingest(_cfg(tmp_path / "empty.jsonl"), workspace)
    assert not any(p.name[0] != "." for p in workspace.snapshots.iterdir())
    assert not any(workspace.snapshots.iterdir())  # staging folder cleaned up too


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="matches no file"):
        expand_sources([str(tmp_path / "nope*.txt")])


def test_directories_and_globs_expand_sorted_and_unique(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("b")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / ".hidden.txt").write_text("h")
    files = expand_sources([str(tmp_path), str(tmp_path / "*.txt")])
    assert [f.name for f in files] == ["a.txt", "b.txt"]
