"""MLM training throughput: the ctxvec loop against the Hugging Face Trainer, side by side.

Same model (a BERT built from config, random init), same data (random token rows of the MiniLM
vocabulary, the same for both), same batch size, sequence length, optimizer (AdamW, linear
schedule with warmup), dynamic 15% masking (80/10/10), precision and device. Each runs
``--steps`` steps; throughput is counted over the steps after ``--warmup`` (so compilation and
allocator warm-up are excluded for both) as tokens/s, with medians of ``--repeats`` runs.
On a GPU it also reports MFU: the training FLOPs an MLM step needs per token (6 x transformer-layer
parameters + attention + the vocabulary projection for the 15% masked tokens; the loop's own
``flops_per_token``) x tokens/s / the device's dense bf16 peak (``--peak-tflops``). The HF model
computes logits at every position, more work than that count credits it with.

    python bench/mlm_throughput.py --size mini --batch 32 --seq 128            # CPU, fp32
    python bench/mlm_throughput.py --size base --batch 256 --seq 128 --bf16    # GPU
    python bench/mlm_throughput.py --only ctxvec ...                           # skip the anchor
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from ctxvec.config import MODEL_SIZES, TrainConfig
from ctxvec.model.refs import minilm_dir
from ctxvec.train.datasets import Sampler
from ctxvec.train.loop import train
from ctxvec.train.multitask import MultiTask, Task
from ctxvec.train.objectives.mlm import MaskedLM


def build(size: str, vocab: int, seq: int, device: str):
    from transformers import BertConfig, BertForMaskedLM

    d = MODEL_SIZES[size]
    cfg = BertConfig(vocab_size=vocab, hidden_size=d["hidden_size"],
                     num_hidden_layers=d["num_layers"], num_attention_heads=d["num_heads"],
                     intermediate_size=d["intermediate_size"],
                     max_position_embeddings=max(seq, 512))
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return BertForMaskedLM(cfg).to(device)


def model_flops_per_token(model, seq: int, head_share: float) -> float:
    """The loop's own count (ctxvec.train.loop.flops_per_token): 6 x layer parameters +
    attention + the vocabulary projection for ``head_share`` of the tokens."""
    from ctxvec.train.loop import flops_per_token

    return flops_per_token(model, seq, head_share)


def data_rows(n: int, seq: int, vocab: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    rows = rng.integers(1000, vocab, size=(n, seq), dtype=np.int32)
    rows[:, 0], rows[:, -1] = 101, 102  # [CLS] ... [SEP] of the MiniLM vocabulary
    return rows


def run_ctxvec(args, tokenizer, rows, device) -> float:
    model = build(args.size, len(tokenizer), args.seq, device)
    tcfg = TrainConfig(steps=args.steps, batch_size=args.batch, seq_len=args.seq, lr=1e-4,
                       warmup_steps=10, log_every=1, precision="bf16" if args.bf16 else "fp32",
                       compile=args.compile, compile_mode=args.compile_mode,
                       checkpoint_every=None, device=device)
    tasks = MultiTask([Task(MaskedLM(tokenizer), rows, 1.0, args.batch, Sampler(len(rows), 0))])
    if device == "cuda":
        torch.cuda.synchronize()
    stamps = []
    res = train(model, tasks, tcfg, on_log=lambda r: stamps.append((time.perf_counter(), r)))
    steady = [r["tokens_per_s"] for _, r in stamps[args.warmup:] if "tokens_per_s" in r]
    del model, res
    return statistics.median(steady)


def run_hf(args, tokenizer, rows, device) -> float:
    from transformers import (
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    model = build(args.size, len(tokenizer), args.seq, device)
    ds = [{"input_ids": r.tolist()} for r in rows]
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    targs = TrainingArguments(
        output_dir="/tmp/ctxvec-hf-bench", per_device_train_batch_size=args.batch,
        max_steps=args.steps, learning_rate=1e-4, warmup_steps=10, lr_scheduler_type="linear",
        weight_decay=0.01, max_grad_norm=1.0, logging_steps=10**9, save_strategy="no",
        report_to=[], bf16=args.bf16, torch_compile=args.compile, dataloader_num_workers=0,
        use_cpu=device == "cpu", disable_tqdm=True, seed=0,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    Trainer(model=model, args=targs, train_dataset=ds, data_collator=collator,
            callbacks=[Clock()]).train()
    steps = np.diff(times[args.warmup:])
    return float(args.batch * args.seq / np.median(steps))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="mini", choices=list(MODEL_SIZES))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-mode", default="default",
                    choices=["default", "max-autotune-no-cudagraphs", "max-autotune"])
    ap.add_argument("--only", choices=["ctxvec", "hf"])
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--tokenizer", help="A tokenizer folder [default: minilm's].")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or str(minilm_dir()))
    rows = data_rows(max(args.batch * args.steps, 1024), args.seq, len(tokenizer))
    probe = build(args.size, len(tokenizer), args.seq, "cpu")
    fpt = model_flops_per_token(probe, args.seq, 0.15)  # what an MLM step needs
    fpt_all = model_flops_per_token(probe, args.seq, 1.0)  # logits at every position
    print(f"{args.size} BERT, batch {args.batch} x {args.seq} tokens, "
          f"{'bf16' if args.bf16 else 'fp32'}{' + compile' if args.compile else ''}, {device} "
          f"({torch.cuda.get_device_name() if device == 'cuda' else torch.get_num_threads()} "
          f"{'' if device == 'cuda' else 'threads'}), {fpt / 1e6:.0f} MFLOP/token needed "
          f"({fpt_all / 1e6:.0f} with vocabulary logits at every position)", flush=True)
    results: dict[str, list[float]] = {"ctxvec": [], "hf": []}
    for _ in range(args.repeats):
        for name, fn in (("ctxvec", run_ctxvec), ("hf", run_hf)):
            if args.only and name != args.only:
                continue
            tps = fn(args, tokenizer, rows, device)
            results[name].append(tps)
            mfu = f", MFU {tps * fpt / (args.peak_tflops * 1e12):.1%}" if device == "cuda" else ""
            print(f"  {name:6s} {tps:10.0f} tokens/s{mfu}", flush=True)
    med = {k: statistics.median(v) for k, v in results.items() if v}
    for k, v in med.items():
        mfu = f", MFU {v * fpt / (args.peak_tflops * 1e12):.1%}" if device == "cuda" else ""
        print(f"median {k}: {v:.0f} tokens/s{mfu}")
    if len(med) == 2:
        print(f"ratio ctxvec / HF Trainer: {med['ctxvec'] / med['hf']:.3f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
