"""Word-occurrence context vectors, their Parquet shards and the sense index, with MiniLM."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ctxvec.config import IndexConfig, load_config
from ctxvec.embed.words import (
    WordError,
    find_words,
    read_words,
    run_words,
    sense_query,
    word_vectors,
)
from ctxvec.index.senses import SenseIndex, build_sense_index, index_senses
from ctxvec.model.encoder import Encoder
from ctxvec.model.refs import minilm_dir
from ctxvec.serve.senses import SenseSearcher, SenseSearchError, snippet
from ctxvec.workspace import read_json

RIVER = [
    "We had a picnic on the grassy bank of the river.",
    "The canoe drifted toward the muddy bank near the willows.",
    "Fishermen lined the bank of the stream at dawn.",
    "Floodwater spilled over the river bank and into the fields.",
    "Ducks waddled along the bank beside the slow water.",
    "The otter slid down the steep bank into the creek.",
    "Reeds grew thick on the far bank of the lake.",
    "He sat on the bank and watched the river flow past.",
    "Erosion wore away the bank where the current was strongest.",
    "The boat was tied to a tree on the bank of the canal.",
]
MONEY = [
    "She deposited her salary at the bank this morning.",
    "The bank approved the mortgage on their new house.",
    "He asked the bank for a loan to start his business.",
    "The central bank raised interest rates again.",
    "My bank charges a fee for every wire transfer.",
    "Robbers broke into the bank and emptied the vault.",
    "The bank closed my savings account without notice.",
    "Investors worried that the bank would run out of cash.",
    "She works as a teller at the bank downtown.",
    "The bank sent me a new credit card last week.",
]


@pytest.fixture(scope="module")
def minilm() -> Encoder:
    return Encoder.load(minilm_dir(), device="cpu")


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _write_corpus(folder, texts: list[str], ids: list[str] | None = None) -> list[str]:
    """A snapshot folder as ingest writes it (the columns the readers use)."""
    folder.mkdir(parents=True)
    ids = ids or [f"d{i:03d}" for i in range(len(texts))]
    pq.write_table(pa.table({"doc_id": ids, "text": texts, "title": [f"T {i}" for i in ids]}),
                   folder / "docs-00000.parquet")
    return [str(folder)]


# --- finding words --------------------------------------------------------------------------


def test_find_words_keeps_letter_runs_and_skips_the_rest():
    text = "I saw 2 saws, e.g. at 10am; the Saw's teeth were café-sharp!"
    got = find_words(text)
    assert [w for w, _, _ in got] == ["saw", "saws", "saw", "teeth", "café", "sharp"]
    assert all(text[s:e].lower() == w for w, s, e in got)
    # the stopword list is skipped unless asked for; min_chars counts characters
    assert "the" in [w for w, _, _ in find_words(text, stopwords=True)]
    assert [w for w, _, _ in find_words("a be sea", min_chars=1, stopwords=False)] == ["sea"]
    assert [w for w, _, _ in find_words("ox yak", min_chars=3)] == ["yak"]


# --- word vectors ---------------------------------------------------------------------------


def test_saw_gets_a_different_vector_in_each_context(minilm):
    texts = ["I saw a saw.", "The saw was sharp and cut the wood.",
             "Yesterday I saw my friend at the station."]
    wv = word_vectors(minilm, texts, min_chars=3, stopwords=True)
    rows = [i for i, w in enumerate(wv.word) if w == "saw"]
    assert [(int(wv.text[i]), int(wv.start[i])) for i in rows] == [(0, 2), (0, 8), (1, 4),
                                                                   (2, 12)]
    verb, tool, tool2, verb2 = wv.vectors[rows]
    assert np.allclose(np.linalg.norm(wv.vectors, axis=1), 1.0, atol=1e-5)
    assert verb @ tool < 0.8  # one word, two senses, one sentence: far apart
    assert tool2 @ tool > tool2 @ verb + 0.2  # the other tool is closer to the tool
    assert verb2 @ verb > verb2 @ tool + 0.2  # and the other verb to the verb


def test_subwords_are_averaged_into_one_row_per_word(minilm):
    text = "Unbelievably, the hippopotamus yawned."
    wv = word_vectors(minilm, [text])
    assert wv.word == ["unbelievably", "hippopotamus", "yawned"]
    assert all(text[s:e].lower() == w for w, s, e in zip(wv.word, wv.start, wv.end,
                                                          strict=True))
    enc = minilm.tokenizer(text, return_offsets_mapping=True, return_tensors="pt")
    offsets = enc["offset_mapping"][0].tolist()
    with torch.inference_mode():
        out = minilm.model(input_ids=enc["input_ids"], output_hidden_states=True)
    for row, layers in ((0, [-1]), (1, [-1]), (1, [2, -1])):
        s, e = int(wv.start[row]), int(wv.end[row])
        pos = [i for i, (a, b) in enumerate(offsets) if b > a and a < e and b > s]
        if row == 0:
            assert len(pos) >= 3  # un ##bel ##ie ##va ##bly: several pieces, one row
        ref = torch.stack([out.hidden_states[x][0, pos].mean(0) for x in layers]).mean(0)
        got = word_vectors(minilm, [text], layers).vectors[row]
        assert np.allclose(got, (ref / ref.norm()).numpy(), atol=1e-5)
    # a mix of layers is not the last layer alone
    assert not np.allclose(word_vectors(minilm, [text], [2, -1]).vectors, wv.vectors, atol=1e-3)


def test_long_texts_are_windowed_without_losing_an_occurrence(minilm):
    filler = "river stone forest meadow lantern harbour orchard valley".split()
    text = " ".join(filler[i % len(filler)] + ("" if i % 7 else " incomprehensibilities")
                    for i in range(160))
    expected = find_words(text)
    assert len(minilm.tokenizer(text)["input_ids"]) > 4 * 32  # many windows of 32 tokens
    wv = word_vectors(minilm, [text], max_tokens=32, stride=4)  # stride < a long word's pieces
    assert list(zip(wv.word, wv.start.tolist(), wv.end.tolist(), strict=True)) == expected
    assert np.allclose(np.linalg.norm(wv.vectors, axis=1), 1.0, atol=1e-5)
    # an occurrence far beyond the first window gets its own context, not a copy
    last = [i for i, w in enumerate(wv.word) if w == "incomprehensibilities"]
    assert len(last) > 10 and not np.allclose(wv.vectors[last[0]], wv.vectors[last[-1]])
    # a text that fits one window gets the same vectors windowed or not
    short = "The lantern lit the harbour."
    assert np.allclose(word_vectors(minilm, [short], max_tokens=32, stride=4).vectors,
                       word_vectors(minilm, [short]).vectors, atol=1e-5)


def test_sense_query_reproduces_the_indexed_vector(minilm):
    text = "I saw a saw. Then I SAW another."
    wv = word_vectors(minilm, [text], stopwords=True)
    rows = [i for i, w in enumerate(wv.word) if w == "saw"]
    for n, row in enumerate(rows, 1):
        assert np.allclose(sense_query(minilm, "Saw", text, occurrence=n), wv.vectors[row],
                           atol=1e-6)
    with pytest.raises(WordError, match="does not occur in the context"):
        sense_query(minilm, "bank", text)
    with pytest.raises(WordError, match="occurs 3 time"):
        sense_query(minilm, "saw", text, occurrence=4)
    with pytest.raises(WordError, match="not a single word"):
        sense_query(minilm, "a saw", text)
    with pytest.raises(WordError, match="empty"):
        sense_query(minilm, "saw", "  ")
    with pytest.raises(WordError, match="does not occur"):  # whole words only
        sense_query(minilm, "saw", "The seesaw and the sawmill.")


# --- run_words: shards and manifest ---------------------------------------------------------


def _words_cfg(*overrides: str):
    return load_config(None, ["embed.words.enabled=true", "embed.max_tokens=64",
                              "embed.stride=16", *overrides])


def test_run_words_writes_shards_a_manifest_and_caps_deterministically(minilm, tmp_path):
    corpus = _write_corpus(tmp_path / "snap", RIVER + MONEY)
    cfg = _words_cfg("embed.words.max_per_word=4", "embed.shard_docs=8")
    manifest = run_words(cfg, minilm, corpus, tmp_path / "words", "7")
    shards = sorted(p.name for p in (tmp_path / "words").iterdir() if p.suffix == ".parquet")
    assert shards == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert not [p for p in (tmp_path / "words").iterdir() if p.name.startswith(".")]
    assert read_json(tmp_path / "words" / "manifest.json") == manifest
    table = pq.read_table(tmp_path / "words" / shards[0])
    assert table.schema.names == ["doc_id", "word", "start", "end", "model_version", "vector"]
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 384)

    vecs, meta = read_words(tmp_path / "words")
    rows = meta.to_pylist()
    assert manifest["rows"] == len(rows) == len(vecs) and manifest["docs"] == 20
    assert manifest["layers"] == [-1] and manifest["max_tokens"] == 64
    assert {r["model_version"] for r in rows} == {"7"}
    texts = dict(zip((f"d{i:03d}" for i in range(20)), RIVER + MONEY, strict=True))
    assert all(texts[r["doc_id"]][r["start"]:r["end"]].lower() == r["word"] for r in rows)
    counts = {w: sum(r["word"] == w for r in rows) for w in {r["word"] for r in rows}}
    assert counts["bank"] == 4 and max(counts.values()) == 4  # capped at max_per_word
    # every occurrence of a word seen at most 4 times is there; the others are capped
    all_words = [(d, *o) for d, t in texts.items() for o in find_words(t)]
    seen = Counter(o[1] for o in all_words)
    assert manifest["capped_words"] == sum(c > 4 for c in seen.values()) >= 1
    uncapped = [o for o in all_words if seen[o[1]] <= 4]
    assert {(r["doc_id"], r["word"], r["start"]) for r in rows} >= {o[:3] for o in uncapped}

    # the same documents in another order keep the same occurrences (the cap is order-free)
    corpus2 = _write_corpus(tmp_path / "snap2", list(texts.values())[::-1], list(texts)[::-1])
    run_words(cfg, minilm, corpus2, tmp_path / "words2", "7")
    rows2 = read_words(tmp_path / "words2")[1].to_pylist()
    assert ({(r["doc_id"], r["start"]) for r in rows2 if r["word"] == "bank"}
            == {(r["doc_id"], r["start"]) for r in rows if r["word"] == "bank"})


def test_run_words_samples_documents_and_stores_float16(minilm, tmp_path):
    corpus = _write_corpus(tmp_path / "snap", RIVER + MONEY)
    cfg = _words_cfg("embed.words.sample_docs=5", "embed.dtype=float16",
                     "embed.words.layers=[-2,-1]")
    manifest = run_words(cfg, minilm, corpus, tmp_path / "w", "1")
    vecs, meta = read_words(tmp_path / "w")
    assert manifest["docs"] == 5 and len(set(meta.column("doc_id").to_pylist())) == 5
    again = run_words(cfg, minilm, corpus, tmp_path / "w2", "1")
    assert again["rows"] == manifest["rows"]
    assert read_words(tmp_path / "w2")[1].equals(meta)  # the same sample every time
    field = pq.read_schema(tmp_path / "w" / "part-00000.parquet").field("vector")
    assert field.type.value_type == pa.float16()
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=2e-3)
    # a rerun into the same folder (a resumed embed) leaves no shard of the earlier run
    run_words(_words_cfg("embed.words.sample_docs=5", "embed.shard_docs=2"), minilm, corpus,
              tmp_path / "w", "1")
    assert len(list((tmp_path / "w").glob("part-*.parquet"))) == 3
    run_words(cfg, minilm, corpus, tmp_path / "w", "1")
    assert [p.name for p in (tmp_path / "w").glob("part-*")] == ["part-00000.parquet"]


# --- the sense index ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bank_index(minilm, tmp_path_factory):
    root = tmp_path_factory.mktemp("senses")
    corpus = _write_corpus(root / "snap", RIVER + MONEY)
    run_words(_words_cfg(), minilm, corpus, root / "words", "3")
    build_sense_index(root / "words", root / "index" / "senses")
    return root


def test_sense_search_ranks_the_same_sense_first(minilm, bank_index):
    index = SenseIndex.load(bank_index / "index" / "senses")
    assert index.occurrences("bank") == 20
    texts = RIVER + MONEY
    precisions = []
    for i, text in enumerate(texts):
        hits = index.search("bank", sense_query(minilm, "bank", text, max_tokens=64,
                                                stride=16), k=6)
        assert hits[0].doc_id == f"d{i:03d}" and hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert all(texts[int(h.doc_id[1:])][h.start:h.end].lower() == "bank" for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        others = hits[1:]  # leave the sentence itself out
        same = sum((int(h.doc_id[1:]) < 10) == (i < 10) for h in others)
        precisions.append(same / len(others))
    # chance is 9/19 (about 0.47): context vectors separate the senses clearly
    assert np.mean(precisions) >= 0.8, precisions


def test_sense_index_files_errors_and_search_any(minilm, bank_index):
    folder = bank_index / "index" / "senses"
    index = SenseIndex.load(folder)
    m = index.manifest
    assert m["model_version"] == "3" and m["factory"] == "Flat" and m["recall_at_10"] == 1.0
    assert m["count"] == index.count and m["layers"] == [-1] and m["max_tokens"] == 64
    assert m["words"] == len(index.slices) and m["corpus"] == [str(bank_index / "snap")]
    with pytest.raises(WordError, match=r"'xyzzy' does not occur in the indexed sample; "
                                        rf"{m['words']} words are indexed"):
        index.search("xyzzy", np.ones(384), 3)
    with pytest.raises(WordError, match="stopwords are not indexed"):
        index.search("the", np.ones(384), 3)
    with pytest.raises(WordError, match="shorter than 3"):
        index.check_word("on")
    with pytest.raises(WordError, match="dimension 5"):
        index.search("bank", np.ones(5), 3)

    # per-word search = exact search over that word's rows; search_any = exact over all rows
    vecs, meta = read_words(bank_index / "words")
    q = sense_query(minilm, "bank", "The bank by the water.", max_tokens=64, stride=16)
    words = meta.column("word").to_pylist()
    rows = [i for i, w in enumerate(words) if w == "bank"]
    truth = sorted(rows, key=lambda i: -float(vecs[i] @ q))[:5]
    got = index.search("BANK", q, 5)
    keys = meta.select(["doc_id", "start"]).to_pylist()
    assert [(h.doc_id, h.start) for h in got] == [tuple(keys[i].values()) for i in truth]
    any_hits = index.search_any(q, 5)
    best = np.argsort(-(vecs @ q))[:5]
    assert [(h.doc_id, h.start) for h in any_hits] == [tuple(keys[i].values()) for i in best]


def test_index_senses_builds_only_where_embed_wrote_word_vectors(bank_index, tmp_path):
    assert index_senses(bank_index / "index", tmp_path / "idx") is None  # no words/ there
    shutil.copytree(bank_index / "words", tmp_path / "emb" / "words")
    m = index_senses(tmp_path / "emb", tmp_path / "idx")
    assert m["count"] == SenseIndex.load(tmp_path / "idx" / "senses").count > 0
    assert sorted(p.name for p in tmp_path.joinpath("idx").iterdir()) == ["senses"]


def test_an_approximate_faiss_index_serves_search_any_with_measured_recall(minilm, bank_index,
                                                                            tmp_path):
    m = build_sense_index(bank_index / "words", tmp_path / "senses",
                          IndexConfig(factory="IVF2,Flat", nprobe=2, recall_sample=50))
    assert m["factory"] == "IVF2,Flat" and m["recall_at_10"] == 1.0  # every list probed
    ivf, flat = SenseIndex.load(tmp_path / "senses"), SenseIndex.load(bank_index / "index" /
                                                                       "senses")
    q = sense_query(minilm, "river", "The river was wide.", max_tokens=64, stride=16)
    assert ivf.search_any(q, 5) == flat.search_any(q, 5)
    assert ivf.search("river", q, 3) == flat.search("river", q, 3)  # per word: always exact


def test_sense_searcher_returns_snippets_and_refuses_another_version(minilm, bank_index):
    folder = bank_index / "index" / "senses"
    searcher = SenseSearcher(minilm, folder, version="3")
    hits = searcher.senses("bank", "She took out a loan from the bank.", k=5)
    assert len(hits) == 5
    assert sum(int(h.doc_id[1:]) >= 10 for h in hits) >= 4  # money sense
    for h in hits:
        doc = (RIVER + MONEY)[int(h.doc_id[1:])]
        assert h.text == doc[h.snippet_start:h.snippet_start + len(h.text)]
        assert h.text[h.start - h.snippet_start:h.end - h.snippet_start].lower() == "bank"
        assert h.title == f"T {h.doc_id}"
    with pytest.raises(RuntimeError, match="built for version 3, not 4"):
        SenseSearcher(minilm, folder, version="4")
    with pytest.raises(WordError, match="does not occur in the context"):
        searcher.senses("bank", "No such word here.")
    with pytest.raises(SenseSearchError, match="k must be"):
        searcher.senses("bank", "The bank.", k=0)


def test_snippet_centres_the_word_and_cuts_at_spaces():
    text = " ".join(f"w{i}" for i in range(200))
    start = text.index("w100")
    snip, at = snippet(text, start, start + 4, width=40)
    assert text[at:at + len(snip)] == snip and "w100" in snip
    assert not snip.startswith(" ") and len(snip) <= 40
    assert snippet("short bank text", 6, 10) == ("short bank text", 0)
