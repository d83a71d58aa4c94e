"""``run_pack``: tokenize the corpus into fixed-length training sequences, as Parquet shards.

Modes (``pack.mode``):
- ``concat``: documents joined with ``[SEP]`` and cut into full windows (no padding; every
  document boundary is marked by ``[SEP]``) - RoBERTa's FULL-SENTENCES packing.
- ``doc``: every sequence holds one document only; a long document fills several windows and its
  last window is padded - document boundaries are never crossed.
- ``pair``: ``[CLS] A [SEP] B [SEP]`` with A and B consecutive runs of whole sentences of one
  document (``a_len`` gives where B starts), for sentence-pair objectives.

Each shard covers a run of Parquet row groups of one snapshot file and is written by a worker
process under a temporary name, then renamed: a killed run resumes by skipping finished shards.
``manifest.json`` is written last and marks the whole set complete.
"""

from __future__ import annotations

import logging
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ctxvec.artifacts import PackedData, Snapshot, TokenizerArtifact
from ctxvec.config import CtxvecConfig
from ctxvec.errors import UserInputError
from ctxvec.ingest.corpus import DOCS_GLOB
from ctxvec.workspace import Workspace, read_json, sha256_text, write_manifest

log = logging.getLogger(__name__)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def packed_schema(seq_len: int, pair: bool) -> pa.Schema:
    fields = [("input_ids", pa.list_(pa.int32(), seq_len)), ("length", pa.int32())]
    if pair:
        fields.append(("a_len", pa.int32()))
    return pa.schema(fields)


def _windows(ids: np.ndarray, body: int) -> list[np.ndarray]:
    return [ids[i : i + body] for i in range(0, len(ids), body)]


def pack_texts(texts: list[str], tok, seq_len: int, mode: str) -> dict[str, np.ndarray]:
    """Texts -> {"input_ids": int32 (N, seq_len), "length": (N,), ["a_len": (N,)]}."""
    cls_id, sep_id, pad_id = (tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    if None in (cls_id, sep_id, pad_id):
        raise UserInputError("packing needs a tokenizer with [CLS], [SEP] and [PAD] tokens")
    rows: list[np.ndarray] = []
    a_lens: list[int] = []
    if mode == "pair":
        half = (seq_len - 3) // 2
        for text in texts:
            sents = [s for s in _SENTENCE_END.split(text) if s]
            if not sents:
                continue
            sent_ids = [np.asarray(e.ids, np.int32)
                        for e in tok.encode_batch_fast(sents, add_special_tokens=False)]
            segs, cur = [], []
            for s in sent_ids:  # runs of whole sentences, each at most `half` tokens
                for piece in _windows(s, half):
                    if sum(len(x) for x in cur) + len(piece) > half and cur:
                        segs.append(np.concatenate(cur))
                        cur = []
                    cur.append(piece)
            if cur:
                segs.append(np.concatenate(cur))
            for a, b in zip(segs[0::2], segs[1::2], strict=False):
                rows.append(np.concatenate([[cls_id], a, [sep_id], b, [sep_id]]))
                a_lens.append(len(a) + 2)
    else:
        # encode_batch_fast: no character offsets, which packing never reads
        encs = tok.encode_batch_fast(texts, add_special_tokens=False)
        body = seq_len - 2
        if mode == "concat":
            parts = []
            for e in encs:
                if e.ids:
                    parts.append(np.asarray(e.ids, np.int32))
                    parts.append(np.asarray([sep_id], np.int32))
            stream = np.concatenate(parts) if parts else np.empty(0, np.int32)
            pieces = _windows(stream, body)
        else:  # doc
            pieces = [w for e in encs if e.ids for w in _windows(np.asarray(e.ids, np.int32), body)]
        rows = [np.concatenate([[cls_id], p, [sep_id]]) for p in pieces if len(p)]
    out = np.full((len(rows), seq_len), pad_id, dtype=np.int32)
    lengths = np.zeros(len(rows), dtype=np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
        lengths[i] = len(r)
    result = {"input_ids": out, "length": lengths}
    if mode == "pair":
        result["a_len"] = np.asarray(a_lens, dtype=np.int32)
    return result


def pack_shard(
    file: str, row_groups: list[int], skip_ids: list[str], tokenizer_json: str, seq_len: int,
    mode: str, out_path: str,
) -> dict:
    """One shard: read row groups, tokenize and pack, write ``out_path`` atomically."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tokenizer_json)
    tok.no_padding()
    tok.no_truncation()
    skip = set(skip_ids)
    table = pq.ParquetFile(file).read_row_groups(row_groups, columns=["doc_id", "text"])
    texts = [t for d, t in zip(table.column(0).to_pylist(), table.column(1).to_pylist(),
                               strict=True) if d not in skip]
    packed = pack_texts(texts, tok, seq_len, mode)
    n = len(packed["length"])
    cols = {"input_ids": pa.FixedSizeListArray.from_arrays(
        pa.array(packed["input_ids"].ravel()), seq_len), "length": pa.array(packed["length"])}
    if "a_len" in packed:
        cols["a_len"] = pa.array(packed["a_len"])
    tmp = f"{out_path}.tmp-{os.getpid()}"
    pq.write_table(pa.table(cols, schema=packed_schema(seq_len, mode == "pair")), tmp)
    os.replace(tmp, out_path)
    return {"docs": len(texts), "sequences": n, "tokens": int(packed["length"].sum()),
            "slots": n * seq_len}


def _limit_threads(n: int) -> None:
    """Each worker's share of the cores for HF tokenizers' thread pool (read at first use)."""
    os.environ["RAYON_NUM_THREADS"] = str(n)


def _plan(corpus: list[str], docs_per_shard: int) -> list[tuple[str, str, list[int], list[str]]]:
    """(shard name, file, row groups, superseded doc ids) for every shard of the corpus."""
    later: set[str] = set()
    plans = []
    for snap in reversed(corpus):  # newest first: a doc seen in a later snapshot is superseded
        files = sorted(Path(snap).glob(DOCS_GLOB))
        snap_ids: list[str] = []
        for f in files:
            pf = pq.ParquetFile(f)
            ids = pf.read(columns=["doc_id"]).column(0).to_pylist()
            skip = [d for d in ids if d in later]
            snap_ids += ids
            group, n = [], 0
            for rg in range(pf.num_row_groups):
                group.append(rg)
                n += pf.metadata.row_group(rg).num_rows
                if n >= docs_per_shard or rg == pf.num_row_groups - 1:
                    plans.append((f"{Path(snap).name}-{f.stem}-rg{group[0]:05d}", str(f),
                                  group, skip))
                    group, n = [], 0
        later.update(snap_ids)
    return sorted(plans)


def run_pack(
    cfg: CtxvecConfig, ws: Workspace, snapshot: Snapshot, tok_art: TokenizerArtifact
) -> PackedData:
    started = time.time()
    pcfg, seq_len = cfg.pack, cfg.train.seq_len
    tokenizer_json = str(Path(tok_art.path) / "tokenizer.json")
    key = sha256_text("|".join([tok_art.sha256, str(seq_len), pcfg.mode,
                                *(Path(s).name for s in snapshot.corpus)]))[:16]
    folder = ws.root / "packed" / key
    if (folder / "manifest.json").is_file():
        m = read_json(folder / "manifest.json")
        log.info("pack: %s already packed (%d sequences)", key, m["sequences"])
        return PackedData(str(folder), m["shards"], m["sequences"], m["tokens"], seq_len,
                          pcfg.mode)
    folder.mkdir(parents=True, exist_ok=True)
    plans = _plan(snapshot.corpus, pcfg.docs_per_shard)
    todo = [p for p in plans if not (folder / f"{p[0]}.parquet").is_file()]
    if len(todo) < len(plans):
        log.info("pack: resuming, %d of %d shards already done", len(plans) - len(todo),
                 len(plans))
    args = [(f, rgs, skip, tokenizer_json, seq_len, pcfg.mode, str(folder / f"{name}.parquet"))
            for name, f, rgs, skip in todo]
    workers = min(pcfg.workers or os.cpu_count() or 1, max(len(args), 1))
    bar = tqdm(total=len(args), desc="pack", unit="shard", leave=False)
    if workers <= 1:
        for a in args:
            pack_shard(*a)
            bar.update(1)
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                 initializer=_limit_threads, initargs=(threads,)) as pool:
            for fut in [pool.submit(pack_shard, *a) for a in args]:
                fut.result()
                bar.update(1)
    bar.close()
    totals = {"sequences": 0, "tokens": 0, "slots": 0}
    for name, *_ in plans:  # counts from the shards themselves, resumed ones included
        t = pq.read_table(folder / f"{name}.parquet", columns=["length"])
        totals["sequences"] += t.num_rows
        totals["tokens"] += int(t.column(0).to_numpy().sum())
    totals["slots"] = totals["sequences"] * seq_len
    if totals["sequences"] == 0:
        raise UserInputError(f"the corpus packs into no sequence of {seq_len} tokens")
    write_manifest(
        folder, "pack", started, shards=len(plans), tokenizer_sha256=tok_art.sha256,
        seq_len=seq_len, mode=pcfg.mode, corpus=snapshot.corpus,
        fill=totals["tokens"] / max(totals["slots"], 1), **totals,
    )
    log.info("pack: %d sequences of %d tokens (%.1f%% filled) in %d shards, %.1fs",
             totals["sequences"], seq_len, 100 * totals["tokens"] / max(totals["slots"], 1),
             len(plans), time.time() - started)
    return PackedData(str(folder), len(plans), totals["sequences"], totals["tokens"], seq_len,
                      pcfg.mode)


def read_packed(folder: str | Path, limit: int | None = None) -> np.ndarray:
    """int32 (N, seq_len) token ids of a packed folder, in shard order, at most ``limit`` rows."""
    rows, n = [], 0
    for f in sorted(Path(folder).glob("*.parquet")):
        col = pq.read_table(f, columns=["input_ids"]).column(0).combine_chunks()
        if len(col) == 0:
            continue
        arr = col.values.to_numpy().reshape(len(col), col.type.list_size)
        rows.append(arr)
        n += len(arr)
        if limit is not None and n >= limit:
            break
    if not rows:
        return np.empty((0, 0), dtype=np.int32)
    out = np.concatenate(rows)
    return out[:limit] if limit is not None else out
