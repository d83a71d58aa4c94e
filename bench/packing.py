"""Packing throughput: ctxvec's pack stage (worker processes) against `Tokenizer.encode_batch`.

Same texts (the Wikipedia corpus), same tokenizer (MiniLM's WordPiece, 30,522 tokens). The
anchor encodes a Python list of the texts with one `encode_batch` call (HF's own thread pool on
every core) and does nothing with the result; ctxvec reads the snapshot's Parquet, encodes, packs
into 128-token sequences and writes Parquet shards, with `--workers` processes.
Ratio = ctxvec tokens/s / anchor tokens/s (target >= 0.8 with 2 processes).

    python bench/packing.py [--workers 2] [--repeats 3] [--mode concat|doc|pair]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from corpus_fixture import wiki_snapshot  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from ctxvec.artifacts import TokenizerArtifact  # noqa: E402
from ctxvec.config import load_config  # noqa: E402
from ctxvec.ingest.corpus import iter_texts  # noqa: E402
from ctxvec.model.refs import minilm_dir  # noqa: E402
from ctxvec.tokenizer.packing import run_pack  # noqa: E402
from ctxvec.workspace import sha256_file  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mode", default="concat", choices=["concat", "doc", "pair"])
    args = ap.parse_args()
    tok_dir = minilm_dir()
    tok_json = tok_dir / "tokenizer.json"
    art = TokenizerArtifact(str(tok_dir), sha256_file(tok_json), 30522, "model", {})
    with tempfile.TemporaryDirectory() as tmp:
        ws, snap = wiki_snapshot(Path(tmp) / "home")
        texts = list(iter_texts(snap.corpus))
        cfg = load_config(None, [f"pack.workers={args.workers}", f"pack.mode={args.mode}",
                                 "train.seq_len=128"])
        tok = Tokenizer.from_file(str(tok_json))
        tok.no_truncation()
        tok.no_padding()
        print(f"{len(texts)} documents, {sum(map(len, texts)) / 1e6:.1f} MB; "
              f"{args.workers} pack workers, mode {args.mode}", flush=True)
        times = {"anchor": [], "ctxvec": []}
        tokens = {}
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            encs = tok.encode_batch(texts, add_special_tokens=False)
            times["anchor"].append(time.perf_counter() - t0)
            tokens["anchor"] = sum(len(e.ids) for e in encs)
            del encs
            shutil.rmtree(ws.root / "packed", ignore_errors=True)
            t0 = time.perf_counter()
            packed = run_pack(cfg, ws, snap, art)
            times["ctxvec"].append(time.perf_counter() - t0)
            tokens["ctxvec"] = packed.tokens
            print(f"  anchor {times['anchor'][-1]:.2f} s, ctxvec {times['ctxvec'][-1]:.2f} s",
                  flush=True)
        # Throughput counts the text's own tokens (the anchor's count) for both, so ctxvec's
        # added [CLS]/[SEP] do not flatter it: the ratio is anchor time / ctxvec time.
        med = {k: statistics.median(v) for k, v in times.items()}
        rate = {k: tokens["anchor"] / med[k] for k in med}
        print(f"anchor: {tokens['anchor']} tokens, median {med['anchor']:.2f} s, "
              f"{rate['anchor'] / 1e6:.2f} M tokens/s")
        print(f"ctxvec: {packed.sequences} sequences ({tokens['ctxvec']} tokens with specials), "
              f"median {med['ctxvec']:.2f} s, {rate['ctxvec'] / 1e6:.2f} M text tokens/s")
        print(f"ratio ctxvec/anchor (tokens/s): {rate['ctxvec'] / rate['anchor']:.3f}")

if __name__ == "__main__":
    main()
