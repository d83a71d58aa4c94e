"""``load_snapshot`` rebuilds the record of an earlier ingest from its manifest: the stages that
run on an existing corpus (tokenizer, embed, pretrain without sources) get what ``run_ingest``
returned, and a workspace without that snapshot is a user error (exit 2), not a crash."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from ctxvec.config import load_config
from ctxvec.errors import UserInputError
from ctxvec.ingest.snapshot import (
    NoSnapshotError,
    load_snapshot,
    rejection_reasons,
    run_ingest,
)


def _ingest(workspace, src):
    return run_ingest(load_config(None, [f"ingest.sources={json.dumps([str(src)])}",
                                         "ingest.workers=1"]), workspace)


def test_the_record_equals_the_ingests_own_but_for_what_only_the_ingest_knew(workspace,
                                                                              tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text('{"id": "1", "text": "first document"}\n{"id": "2", "text": ""}\n'
                   '{"id": "3", "text": "first document"}\n')
    first = _ingest(workspace, src)
    assert load_snapshot(workspace) == replace(first, created=False, skipped_files=0)
    assert rejection_reasons(first) and sum(rejection_reasons(first).values()) == (
        first.filtered + first.quarantined + first.duplicates + first.near_duplicates)

    src2 = tmp_path / "b.jsonl"
    src2.write_text('{"id": "4", "text": "another document"}\n')
    second = _ingest(workspace, src2)
    newest = load_snapshot(workspace)
    assert newest.snapshot_id == second.snapshot_id and newest.corpus_docs == 2
    assert newest.corpus == second.corpus and len(newest.corpus) == 2
    # an earlier snapshot: the corpus as of then
    older = load_snapshot(workspace, first.snapshot_id)
    assert older.corpus == first.corpus and older.corpus_docs == 1 and older.kept == first.kept
    # nothing new: no rejections of this ingest to report
    assert rejection_reasons(replace(second, created=False)) == {}


def test_no_corpus_or_an_unknown_snapshot_is_a_user_error(workspace, tmp_path):
    with pytest.raises(NoSnapshotError, match="run `ctxvec ingest SOURCE...` first"):
        load_snapshot(workspace)
    src = tmp_path / "a.jsonl"
    src.write_text('{"id": "1", "text": "a document"}\n')
    _ingest(workspace, src)
    with pytest.raises(UserInputError, match="snapshot 1999 is not in"):
        load_snapshot(workspace, "1999")
