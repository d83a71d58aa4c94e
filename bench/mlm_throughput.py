"""MLM training throughput: the ctxvec loop against Hugging Face anchors, side by side.

Same model (a BERT built from config, random init), same data (random token rows of the MiniLM
vocabulary, the same for all), same batch size, sequence length, optimizer (AdamW, weight decay
0.01 except biases and LayerNorms, gradient clipping at 1.0, linear schedule with warmup), dynamic
15% masking (80/10/10), precision and device. Each runs ``--steps`` steps; throughput is counted
over the steps after ``--warmup`` (so compilation and allocator warm-up are excluded for all) as
tokens/s. Rows run interleaved within each repeat (ctxvec, then each anchor, then again), and the
medians of ``--repeats`` runs are compared; ``/proc/loadavg`` is printed with every repeat, since
on a shared machine a ratio holds only beside the load it was measured under.

Rows:
- ``ctxvec``: ``ctxvec.train.loop.train`` with the MLM objective, which projects only the masked
  positions onto the vocabulary.
- ``hf_masked`` (the fair anchor): an HF ``BertForMaskedLM`` in a hand-written loop that does the
  same: ``model.bert`` -> the hidden states at the masked positions -> ``model.cls`` on those only
  -> cross-entropy. Masking by HF's ``DataCollatorForLanguageModeling``; the optimizer is the one
  the HF Trainer builds by default with this torch (``torch.optim.AdamW``, fused where torch >=
  2.8, as ``TrainingArguments.optim`` defaults to ``adamw_torch_fused`` there), the schedule
  transformers' ``get_linear_schedule_with_warmup``. What a competent user writes who knows the
  Trainer computes logits at every position.
- ``hf`` (the HF Trainer as it comes): ``Trainer`` with ``DataCollatorForLanguageModeling``; its
  ``BertForMaskedLM`` computes vocabulary logits at every position, 85% of them thrown away. The
  ratio against it is the gain of the masked-only projection plus the loop, not of the loop.
- ``hf_bf16``: the Trainer with ``bf16=True``, added where bf16 is native: a GPU, or a CPU with
  bf16 units (AMX or AVX512-BF16, detected as ``ctxvec.model.encoder.cpu_has_bf16``, the rule
  ``train.precision: auto`` follows), beside ``ctxvec_bf16`` (the loop with
  ``train.precision=bf16``). On a CPU without them both are skipped, with that reason printed:
  bf16 would be emulated there and run slower than fp32, so it is no competent user's setting.
  With ``--bf16`` every row already runs bf16 and these two are not added.
- ``ctxvec_unfused`` (only when asked for with ``--rows``): the loop with the for-loop AdamW it
  ran on a CPU before its optimizer was fused there, to measure that change side by side.

OpenMP's wait policy is set before torch loads, as importing ctxvec sets it for the CLI: PASSIVE
unless ``OMP_WAIT_POLICY`` is already set; every row in the process runs under it.

On a GPU it also reports MFU: the training FLOPs an MLM step needs per token (6 x transformer-layer
parameters + attention + the vocabulary projection for the 15% masked tokens; the loop's own
``flops_per_token``) x tokens/s / the device's dense bf16 peak (``--peak-tflops``). The HF Trainer
row computes logits at every position, more work than that count credits it with.

    python bench/mlm_throughput.py --size mini --batch 32 --seq 128            # CPU, fp32
    python bench/mlm_throughput.py --size base --batch 256 --seq 128 --bf16    # GPU
    python bench/mlm_throughput.py --only ctxvec ...                           # skip the anchors
    python bench/mlm_throughput.py --rows ctxvec,hf_masked ...                 # pick rows
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see above)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ctxvec.config import MODEL_SIZES, TrainConfig  # noqa: E402
from ctxvec.model.encoder import cpu_has_bf16  # noqa: E402
from ctxvec.model.refs import minilm_dir  # noqa: E402
from ctxvec.train.datasets import Sampler  # noqa: E402
from ctxvec.train.loop import train  # noqa: E402
from ctxvec.train.multitask import MultiTask, Task  # noqa: E402
from ctxvec.train.objectives.mlm import MaskedLM  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from measure import loadavg  # noqa: E402


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


def run_ctxvec(args, tokenizer, rows, device, bf16: bool) -> float:
    model = build(args.size, len(tokenizer), args.seq, device)
    tcfg = TrainConfig(steps=args.steps, batch_size=args.batch, seq_len=args.seq, lr=1e-4,
                       warmup_steps=10, log_every=1, precision="bf16" if bf16 else "fp32",
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


def run_ctxvec_unfused(args, tokenizer, rows, device, bf16: bool) -> float:
    """The loop with the for-loop AdamW it used on a CPU before its optimizer was fused there:
    the same run otherwise, to measure that change side by side."""
    from unittest import mock

    def unfused(groups, lr, dev):
        return torch.optim.AdamW(groups, lr=lr, fused=dev.type == "cuda")

    with mock.patch("ctxvec.train.loop.adamw", unfused):
        return run_ctxvec(args, tokenizer, rows, device, bf16)


def hf_param_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on every weight but biases and LayerNorms: the HF Trainer's own split
    (``Trainer.get_decay_parameter_names``)."""
    from transformers.trainer_pt_utils import get_parameter_names

    decay = set(get_parameter_names(model, [torch.nn.LayerNorm], ["bias", "layernorm", "rmsnorm"]))
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]


def trainer_adamw_fused() -> bool:
    """Whether the HF Trainer's default optimizer is the fused AdamW with this torch."""
    from transformers import TrainingArguments

    return "fused" in str(TrainingArguments.__dataclass_fields__["optim"].default)


def run_hf_masked(args, tokenizer, rows, device, bf16: bool) -> float:
    """The fair anchor: HF BertForMaskedLM, vocabulary logits at the masked positions only, in a
    hand-written loop with the Trainer's optimizer, schedule and clipping."""
    from transformers import DataCollatorForLanguageModeling, get_linear_schedule_with_warmup

    model = build(args.size, len(tokenizer), args.seq, device)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    opt = torch.optim.AdamW(hf_param_groups(model, 0.01), lr=1e-4,
                            fused=trainer_adamw_fused() or device == "cuda")
    sched = get_linear_schedule_with_warmup(opt, 10, args.steps)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0)).tolist()
    model.train()
    times: list[float] = []
    for step in range(args.steps):
        idx = order[(step * args.batch) % len(rows):][:args.batch]
        batch = collator([{"input_ids": rows[i].tolist()} for i in idx])
        ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=bf16):
            hidden = model.bert(input_ids=ids,
                                attention_mask=batch["attention_mask"].to(device)).last_hidden_state
            where = labels != -100
            logits = model.cls(hidden[where])  # (masked tokens, vocabulary)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels[where])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
    del model
    steps = np.diff(times[args.warmup:])
    return float(args.batch * args.seq / np.median(steps))


def run_hf(args, tokenizer, rows, device, bf16: bool) -> float:
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
        report_to=[], bf16=bf16, torch_compile=args.compile, dataloader_num_workers=0,
        use_cpu=device == "cpu", disable_tqdm=True, seed=0,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    Trainer(model=model, args=targs, train_dataset=ds, data_collator=collator,
            callbacks=[Clock()]).train()
    steps = np.diff(times[args.warmup:])
    return float(args.batch * args.seq / np.median(steps))


RUNNERS = {"ctxvec": run_ctxvec, "hf_masked": run_hf_masked, "hf": run_hf,
           "ctxvec_bf16": run_ctxvec, "hf_bf16": run_hf, "ctxvec_unfused": run_ctxvec_unfused}
LABELS = {"ctxvec": "ctxvec loop", "hf_masked": "HF BertForMaskedLM, masked-only logits",
          "hf": "HF Trainer (logits at every position)", "ctxvec_bf16": "ctxvec loop, bf16",
          "hf_bf16": "HF Trainer, bf16=True",
          "ctxvec_unfused": "ctxvec loop, for-loop AdamW (as before on a CPU)"}


def pick_rows(args, device: str) -> list[str]:
    """The rows to run, in order; prints why the bf16 rows are left out where they are."""
    names = (args.rows.split(",") if args.rows else
             [args.only] if args.only else ["ctxvec", "hf_masked", "hf", "ctxvec_bf16", "hf_bf16"])
    unknown = set(names) - set(RUNNERS)
    if unknown:
        sys.exit(f"unknown rows {sorted(unknown)}; choose from {sorted(RUNNERS)}")
    bf16_rows = [n for n in names if n.endswith("_bf16")]
    if bf16_rows and args.bf16:
        names = [n for n in names if n not in bf16_rows]  # every row is bf16 already
    elif bf16_rows and device == "cpu" and not cpu_has_bf16():
        print(f"skipped {', '.join(bf16_rows)}: this CPU has no bf16 units (no AMX or "
              "AVX512-BF16: torch.ops.mkldnn._is_mkldnn_bf16_supported() is False), so bf16 "
              "would be emulated, slower than fp32; train.precision: auto trains fp32 here",
              flush=True)
        names = [n for n in names if n not in bf16_rows]
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="mini", choices=list(MODEL_SIZES))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="Every row in bf16.")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-mode", default="default",
                    choices=["default", "max-autotune-no-cudagraphs", "max-autotune"])
    ap.add_argument("--only", choices=list(RUNNERS), help="One row only.")
    ap.add_argument("--rows", help=f"Comma-separated rows, in this order ({', '.join(RUNNERS)}).")
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
          f"({fpt_all / 1e6:.0f} with vocabulary logits at every position); "
          f"HF Trainer's AdamW fused: {trainer_adamw_fused()}; load {loadavg()}", flush=True)
    names = pick_rows(args, device)
    results: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        for name in names:
            bf16 = args.bf16 or name.endswith("_bf16")
            tps = RUNNERS[name](args, tokenizer, rows, device, bf16)
            results[name].append(tps)
            mfu = f", MFU {tps * fpt / (args.peak_tflops * 1e12):.1%}" if device == "cuda" else ""
            print(f"  repeat {r + 1} {name:12s} {tps:10.0f} tokens/s{mfu}  load {loadavg()}",
                  flush=True)
    med = {k: statistics.median(v) for k, v in results.items() if v}
    print(f"\nmedians of {args.repeats} interleaved repeats; load after {loadavg()}")
    for k, v in med.items():
        mfu = f", MFU {v * fpt / (args.peak_tflops * 1e12):.1%}" if device == "cuda" else ""
        runs = " ".join(f"{x:.0f}" for x in results[k])
        print(f"median {k:12s} {v:10.0f} tokens/s{mfu}  ({LABELS[k]}; runs {runs})")
    for mine, theirs in (("ctxvec", "hf_masked"), ("ctxvec_unfused", "hf_masked"),
                         ("ctxvec", "ctxvec_unfused"), ("ctxvec", "hf"),
                         ("ctxvec_bf16", "hf_bf16"), ("ctxvec_bf16", "hf_masked")):
        if mine in med and theirs in med:
            per = [a / b for a, b in zip(results[mine], results[theirs], strict=True)]
            print(f"ratio {mine} / {theirs} ({LABELS[theirs]}): {med[mine] / med[theirs]:.3f} "
                  f"(per repeat {' '.join(f'{x:.2f}' for x in per)}; "
                  f"median of those {statistics.median(per):.3f})")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
