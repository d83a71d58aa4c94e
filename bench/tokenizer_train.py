"""Tokenizer training: ctxvec's tokenizer stage against HF `tokenizers` called directly.

Both learn the same vocabulary (same model, normaliser, pre-tokenizer, trainer and settings) from
the same documents of the Wikipedia corpus. The anchor gets the texts already in a Python list;
ctxvec streams them from the snapshot's Parquet, holds out one document in 50 (so the anchor
trains on exactly the documents ctxvec trains on), measures the held-out stats and saves a
transformers folder. Ratio = anchor time / ctxvec time (target >= 0.9: overhead <= 10%).

    python bench/tokenizer_train.py [--kind wordpiece|bpe|unigram] [--vocab 8000] [--repeats 3]
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

from ctxvec.config import CtxvecConfig, TokenizerConfig  # noqa: E402
from ctxvec.ingest.corpus import iter_texts  # noqa: E402
from ctxvec.tokenizer.trainer import add_bert_template, build_tokenizer, run_tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", default="wordpiece", choices=["wordpiece", "bpe", "unigram"])
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tcfg = TokenizerConfig(kind=args.kind, vocab_size=args.vocab)
    cfg = CtxvecConfig(tokenizer=tcfg)
    with tempfile.TemporaryDirectory() as tmp:
        ws, snap = wiki_snapshot(Path(tmp) / "home")
        texts = [t for i, t in enumerate(iter_texts(snap.corpus), 1)
                 if i % tcfg.heldout_every != 0]
        print(f"{args.kind}, vocab {args.vocab}: {len(texts)} training documents, "
              f"{sum(map(len, texts)) / 1e6:.1f} MB", flush=True)

        def anchor() -> None:
            tok, trainer = build_tokenizer(tcfg)
            tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
            add_bert_template(tok)
            tok.save(str(Path(tmp) / "anchor.json"))

        def ours() -> None:
            # a finished tokenizer of the same snapshot and config is reused, not trained:
            # remove it so that every repeat times a training
            shutil.rmtree(ws.tokenizers, ignore_errors=True)
            run_tokenizer(cfg, ws, snap)

        times = {"ctxvec": [], "anchor": []}
        for _ in range(args.repeats):  # alternate, so drift hits both alike
            for name, fn in (("anchor", anchor), ("ctxvec", ours)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
                print(f"  {name}: {times[name][-1]:.2f} s", flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"median: anchor {med['anchor']:.2f} s, ctxvec {med['ctxvec']:.2f} s, "
              f"ratio anchor/ctxvec {med['anchor'] / med['ctxvec']:.3f}")


if __name__ == "__main__":
    main()
