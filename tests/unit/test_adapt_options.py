"""What a user picks of the mined data: which signals an objective trains on, and how many
documents the label-free evaluation searches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ctxvec.adapt.mine import eval_rows, heldout_mask, run_mine
from ctxvec.config import ConfigError, load_config, objective_config
from ctxvec.errors import UserInputError
from ctxvec.ingest.snapshot import run_ingest
from ctxvec.train.datasets import load_examples
from ctxvec.workspace import Workspace
from tests.adapt_corpus import write_corpus
from tests.helpers import TINY


@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapt-options")
    corpus = write_corpus(tmp / "corpus.jsonl", n=30)
    cfg = load_config(TINY, [f"ingest.sources=[{corpus}]", "ingest.id_field=_id",
                             "ingest.max_docs=null", "ingest.near_dup.enabled=false",
                             "adapt.heldout_docs=6", "adapt.eval_docs=10"])
    ws = Workspace(tmp / "ws").ensure()
    return run_mine(cfg, ws, run_ingest(cfg, ws))


def test_data_signals_trains_on_those_signals_alone(mined):
    train = pq.read_table(Path(mined.path) / "train.parquet").to_pylist()
    every = load_examples(objective_config("mnrl", data={"source": "mined"}), None, mined)
    assert len(every) == len(train)
    ocfg = objective_config("mnrl", data={"source": "mined",
                                          "signals": ["title_text", "crops"]})
    picked = load_examples(ocfg, None, mined)
    want = [(r["anchor"], r["positive"], *r["negatives"]) for r in train
            if r["signal"] in ("title_text", "crops")]
    assert picked == want and 0 < len(picked) < len(train)


def test_data_signals_is_checked(mined):
    with pytest.raises(ConfigError, match="data.source=mined"):
        load_config(TINY, ["train.objectives=[{name: mnrl, data: {source: sts, "
                           "path: x.tsv, signals: [ict]}}]"])
    with pytest.raises(ConfigError, match="signals"):
        load_config(TINY, ["train.objectives=[{name: mnrl, data: {source: mined, "
                           "signals: [headlines]}}]"])
    with pytest.raises(ConfigError, match="empty"):
        load_config(TINY, ["train.objectives=[{name: mnrl, data: {source: mined, "
                           "signals: []}}]"])


def test_a_signal_that_mined_nothing_is_a_clear_error(mined, tmp_path):
    # drop every title_text row from a copy of the folder: the objective asks for none there
    folder = tmp_path / "copy"
    folder.mkdir()
    for f in Path(mined.path).iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    t = pq.read_table(folder / "train.parquet")
    keep = np.asarray(t.column("signal").to_pylist()) != "title_text"
    pq.write_table(t.filter(keep), folder / "train.parquet")
    ocfg = objective_config("mnrl", data={"source": "mined", "signals": ["title_text"]})
    from dataclasses import replace

    with pytest.raises(UserInputError, match="no mined row of signal"):
        load_examples(ocfg, None, replace(mined, path=str(folder)))


def test_the_evaluation_searches_every_heldout_document_and_a_fixed_sample(mined):
    docs = pq.read_table(Path(mined.path) / "docs.parquet").to_pydict()["doc_id"]
    manifest = json.loads((Path(mined.path) / "manifest.json").read_text())
    assert len(docs) == 10 == manifest["eval_docs"] and manifest["docs"] == 30
    held = pq.read_table(Path(mined.path) / "heldout.parquet").to_pydict()["doc_id"]
    assert set(held) <= set(docs)


def test_eval_rows():
    ids = [f"d{i}" for i in range(50)]
    held = heldout_mask(ids, 5)
    rows = eval_rows(ids, held, 20)
    assert len(rows) == 20 and rows == sorted(rows)
    assert set(np.flatnonzero(held)) <= set(rows)
    # the sample depends on the ids alone, not on their order
    shuffled = ids[::-1]
    again = eval_rows(shuffled, heldout_mask(shuffled, 5), 20)
    assert {ids[r] for r in rows} == {shuffled[r] for r in again}
    assert eval_rows(ids, held, None) == list(range(50)) == eval_rows(ids, held, 50)
    assert len(eval_rows(ids, held, 3)) == 5  # never fewer than the held-out documents
