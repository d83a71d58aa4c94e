"""bf16 on a CPU, for correctness (this is what runs where the CPU has bf16 units; where it has
none, as on most test machines, bf16 is emulated and says nothing about speed):

- embedding with ``embed.precision=bf16`` loads the weights in bf16 once (not fp32 weights cast
  by autocast at every forward pass) and its vectors stay within cosine 0.999 of fp32's;
- ``train.precision``: auto follows the bf16-units rule embedding uses, bf16 autocast trains with
  a loss curve that follows fp32's, and the weights stay fp32.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from ctxvec.config import TrainConfig, load_config
from ctxvec.embed.corpus import read_vectors, run_embed
from ctxvec.embed.shards import EmbedJob
from ctxvec.ingest.snapshot import run_ingest
from ctxvec.model.encoder import cpu_has_bf16
from ctxvec.registry.register import _trained_precision
from ctxvec.train.precision import train_precision
from tests.helpers import tiny_bert
from tests.unit.test_evaluators import SENTENCES


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"), SENTENCES)


def test_embed_precision_bf16_holds_bf16_weights_and_close_vectors(workspace, tmp_path,
                                                                   tiny_dir):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": s}) + "\n"
                           for i, s in enumerate(SENTENCES)))
    snap = run_ingest(load_config(None, [f"ingest.sources=[{src}]", "ingest.min_chars=1",
                                         "ingest.near_dup.enabled=false"]), workspace)
    vecs = {}
    for p in ("fp32", "bf16"):
        cfg = load_config(None, [f"embed.precision={p}", "train.device=cpu"])
        vecs[p], _ = read_vectors(run_embed(cfg, workspace, snap, str(tiny_dir), p).path)
    assert float(np.min(np.sum(vecs["fp32"] * vecs["bf16"], axis=1))) >= 0.999
    # the encoder run_embed loads: every floating-point weight already bf16
    job = EmbedJob(model_dir=str(tiny_dir), model_version="x", corpus=[], work_dir="",
                   max_tokens=None, stride=0, pooling="model", precision="bf16",
                   dtype="float32", batch_size=8, shard_docs=8)
    enc = job.load_encoder("cpu")
    assert enc.precision == "bf16"
    assert {p.dtype for p in enc.model.parameters()} == {torch.bfloat16}


def test_train_precision_follows_the_bf16_units_rule():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert train_precision("auto", cpu) == ("bf16" if cpu_has_bf16() else "fp32")
    assert train_precision("auto", gpu) == "bf16"  # as training did on a GPU before
    assert train_precision("fp32", gpu) == "fp32" and train_precision("bf16", cpu) == "bf16"


def _tiny_run(precision: str):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForMaskedLM

    from ctxvec.tokenizer.trainer import SPECIALS, to_fast_tokenizer
    from ctxvec.train.datasets import Sampler
    from ctxvec.train.loop import train
    from ctxvec.train.multitask import MultiTask, Task
    from ctxvec.train.objectives.mlm import MaskedLM

    vocab = {t: i for i, t in enumerate(SPECIALS + [f"w{i}" for i in range(95)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = to_fast_tokenizer(tok, 64)
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32,
                                       num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=32))
    row = np.array([2] + [5 + (i % 6) for i in range(14)] + [3], dtype=np.int32)
    data = np.tile(row, (32, 1))
    cfg = TrainConfig(steps=8, batch_size=8, lr=3e-3, warmup_steps=2, log_every=2,
                      precision=precision)
    result = train(model, MultiTask([Task(MaskedLM(tokenizer), data, 1.0, 8,
                                          Sampler(len(data), 0))]), cfg)
    return result, model


def test_forced_bf16_training_follows_the_fp32_loss_curve(caplog):
    caplog.set_level(logging.INFO, logger="ctxvec.train")
    fp32, _ = _tiny_run("fp32")
    bf16, model = _tiny_run("bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert any("precision bf16 (train.precision)" in r.getMessage() for r in caplog.records)
    a = np.array([r["loss"] for r in fp32.history])
    b = np.array([r["loss"] for r in bf16.history])
    assert len(a) == len(b) == 4
    assert b[-1] < 0.9 * b[0]  # it trains
    # the same curve within bf16's rounding: the same masks, the same data order
    assert np.max(np.abs(a - b) / a) < 0.05, (a, b)
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # autocast only


def test_the_registered_run_names_the_precision_it_trained_in(tmp_path):
    assert _trained_precision(tmp_path) is None
    (tmp_path / "manifest.json").write_text(json.dumps({"precision": "bf16"}))
    assert _trained_precision(tmp_path) == "bf16"
