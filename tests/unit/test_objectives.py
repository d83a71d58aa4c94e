"""Objectives, optimisation controls and the loop's evaluation logic on a tiny real BERT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from ctxvec.config import (
    OBJECTIVES,
    EarlyStoppingConfig,
    FreezeConfig,
    TrainConfig,
    objective_config,
)
from ctxvec.model.encoder import EncoderSettings
from ctxvec.tokenizer.trainer import SPECIALS, add_bert_template, to_fast_tokenizer
from ctxvec.train.datasets import Sampler
from ctxvec.train.loop import train
from ctxvec.train.multitask import MultiTask, Task
from ctxvec.train.objectives import build_objective
from ctxvec.train.optim import apply_freeze, frozen_layers_at, param_groups

WORDS = [f"w{i}" for i in range(60)]


@pytest.fixture(scope="module")
def tokenizer():
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    add_bert_template(tok)
    return to_fast_tokenizer(tok, 64)


def tiny_bert(tokenizer, layers=2, seed=0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32,
                                num_hidden_layers=layers, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64),
                     add_pooling_layer=False)


def objective(name, tokenizer, **kw):
    source = OBJECTIVES[name].sources[0]  # the examples come from the test, not from data
    data = {"source": source, "path": None if source == "corpus" else "unused"}
    return build_objective(objective_config(name, data=data, **kw), tokenizer,
                           EncoderSettings(), 32)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_objective_config_builds_its_loss(name, tokenizer):
    obj = objective(name, tokenizer)
    assert obj.name == name


def sentence(rng, topic, n=6):
    return " ".join(f"w{topic * 10 + int(rng.integers(10))}" for _ in range(n))


def test_cosent_prefers_the_gold_order(tokenizer):
    obj = objective("cosent", tokenizer)
    model = tiny_bert(tokenizer)
    model.eval()
    batch = obj.collate([("w1 w2", "w1 w2", 5.0), ("w1 w2", "w30 w31", 0.0)])
    enc_a = batch
    loss_right = obj.loss(model, enc_a, torch.Generator())
    wrong = obj.collate([("w1 w2", "w1 w2", 0.0), ("w1 w2", "w30 w31", 5.0)])
    loss_wrong = obj.loss(model, wrong, torch.Generator())
    assert loss_right < loss_wrong  # identical texts have cosine 1: the gold order is right


@pytest.mark.parametrize("name", ["mnrl", "cached_mnrl", "cosent", "simcse", "classification"])
def test_each_objective_learns_a_toy_task(name, tokenizer):
    rng = np.random.default_rng(0)
    topics = [int(t) for t in rng.integers(0, 6, size=96)]
    if name in ("mnrl", "cached_mnrl"):  # a hard negative: a sentence of another topic
        examples = [(sentence(rng, t), sentence(rng, t), sentence(rng, (t + 1) % 6))
                    for t in topics]
    elif name == "cosent":
        examples = [(sentence(rng, t), sentence(rng, u), 5.0 if t == u else 0.0)
                    for t, u in zip(topics, topics[1:] + topics[:1], strict=True)]
        examples += [(sentence(rng, t), sentence(rng, t), 5.0) for t in topics[:48]]
    elif name == "simcse":
        examples = [sentence(rng, t) for t in topics]
    else:
        examples = [(sentence(rng, t), int(t % 2)) for t in topics]
    obj = objective(name, tokenizer, **({"mini_batch_size": 4} if name == "cached_mnrl" else {}))
    model = tiny_bert(tokenizer)
    if name == "classification":
        obj.attach(32, torch.device("cpu"))
    tasks = MultiTask([Task(obj, examples, 1.0, 16, Sampler(len(examples), 0))])
    cfg = TrainConfig(steps=40, batch_size=16, lr=3e-3, warmup_steps=4, log_every=5)
    result = train(model, tasks, cfg)
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    assert last < 0.8 * first, (name, first, last)


def test_tsdae_learns_to_rebuild_sentences_and_saves_no_decoder(tokenizer, tmp_path):
    from safetensors import safe_open

    from ctxvec.model.encoder import save_encoder
    from ctxvec.train.objectives.tsdae import delete_words

    gen = torch.Generator().manual_seed(0)
    kept = [delete_words("w1 w2 w3 w4 w5 w6 w7 w8 w9 w10", 0.6, gen).split() for _ in range(200)]
    assert 3 < np.mean([len(k) for k in kept]) < 5 and min(len(k) for k in kept) >= 1
    assert delete_words("w1", 0.99, gen) == "w1"  # one word is always kept
    rng = np.random.default_rng(3)
    examples = [sentence(rng, int(t), n=8) for t in rng.integers(0, 6, size=64)]
    for tie in ("all", "embeddings"):
        obj = objective("tsdae", tokenizer, tie=tie)
        model = tiny_bert(tokenizer)
        obj.bind(model, torch.device("cpu"))
        own = {id(p) for p in obj.head.parameters()}
        assert not own & {id(p) for p in model.parameters()}  # each weight trains once
        emb = model.embeddings.word_embeddings.weight
        assert obj.head.lm.get_output_embeddings().weight is emb  # tied, as in the paper
        tasks = MultiTask([Task(obj, examples, 1.0, 16, Sampler(len(examples), 0))])
        result = train(model, tasks, TrainConfig(steps=30, batch_size=16, lr=3e-3,
                                                 warmup_steps=3, log_every=5))
        first, last = result.history[0]["loss"], result.history[-1]["loss"]
        assert last < 0.9 * first, (tie, first, last)  # from ln(vocab), steadily down
        save_encoder(model, tokenizer, EncoderSettings(), tmp_path / tie)
        with safe_open(str(tmp_path / tie / "model.safetensors"), "pt") as f:
            saved = set(f.keys())
        assert not any("crossattention" in k or "cls." in k for k in saved)
        assert len(saved) == len(tiny_bert(tokenizer).state_dict())  # the encoder, nothing else


def test_simcse_views_differ_only_by_dropout(tokenizer):
    obj = objective("simcse", tokenizer)
    model = tiny_bert(tokenizer)
    enc = obj.collate(["w1 w2 w3", "w4 w5 w6"])
    model.train()
    a, b = obj.view.embed(model, enc), obj.view.embed(model, enc)
    assert not torch.allclose(a, b)  # dropout on: two views
    model.eval()
    assert torch.allclose(obj.view.embed(model, enc), obj.view.embed(model, enc))


def test_layerwise_lr_decay_and_freezing(tokenizer):
    model = tiny_bert(tokenizer, layers=3)
    groups = param_groups(model, [], TrainConfig(llrd=0.5))
    scales = sorted({g["lr_scale"] for g in groups})
    assert scales == [0.125, 0.25, 0.5, 1.0]  # embeddings, layer 1, layer 2, layer 3
    emb = {id(p) for p in model.embeddings.parameters()}
    for g in groups:
        if any(id(p) in emb for p in g["params"]):
            assert g["lr_scale"] == 0.125
    fcfg = FreezeConfig(embeddings=True, layers=2, unfreeze_every=10)
    assert [frozen_layers_at(s, fcfg) for s in (0, 9, 10, 19, 20, 100)] == [2, 2, 1, 1, 0, 0]
    assert apply_freeze(model, fcfg, 0) == 2
    assert not any(p.requires_grad for p in model.embeddings.parameters())
    assert not any(p.requires_grad for p in model.encoder.layer[1].parameters())
    assert all(p.requires_grad for p in model.encoder.layer[2].parameters())
    assert apply_freeze(model, fcfg, 25) == 0
    assert all(p.requires_grad for p in model.encoder.layer[0].parameters())


def test_frozen_layers_do_not_move(tokenizer):
    model = tiny_bert(tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = np.random.default_rng(1)
    examples = [sentence(rng, int(t)) for t in rng.integers(0, 6, size=32)]
    obj = objective("simcse", tokenizer)
    tasks = MultiTask([Task(obj, examples, 1.0, 8, Sampler(len(examples), 0))])
    train(model, tasks, TrainConfig(steps=5, lr=1e-2, warmup_steps=0,
                                    freeze=FreezeConfig(embeddings=True, layers=1)))
    for n, p in model.named_parameters():
        moved = not torch.equal(before[n], p)
        assert moved == n.startswith("encoder.layer.1"), n


def test_early_stopping_stops_and_keeps_the_best(tokenizer, tmp_path):
    model = tiny_bert(tokenizer)
    rng = np.random.default_rng(2)
    examples = [sentence(rng, int(t)) for t in rng.integers(0, 6, size=32)]
    obj = objective("simcse", tokenizer)
    tasks = MultiTask([Task(obj, examples, 1.0, 8, Sampler(len(examples), 0))])
    scores = iter([0.5, 0.9, 0.7, 0.6, 0.8, 0.1, 0.1])
    snapshots = []

    def evaluate(m):
        snapshots.append({n: p.detach().clone() for n, p in m.named_parameters()})
        return {"score": next(scores)}

    cfg = TrainConfig(steps=100, lr=1e-2, warmup_steps=0, eval_every=2,
                      early_stopping=EarlyStoppingConfig(metric="score", mode="max", patience=3))
    result = train(model, tasks, cfg, evaluate=evaluate, run_dir=tmp_path)
    assert result.stopped_early and result.steps == 10  # best at step 4, then 3 worse
    assert result.best == 0.9 and result.metrics["best_score"] == 0.9
    for n, p in model.named_parameters():  # the weights are those of the best evaluation
        assert torch.equal(p, snapshots[1][n]), n


def test_sampler_epochs_and_resume():
    s = Sampler(5, seed=3)
    first = s.take(7)
    assert sorted(first[:5]) == [0, 1, 2, 3, 4]  # a whole permutation, then the next epoch
    resumed = Sampler(5, seed=3, consumed=7)
    assert resumed.take(6) == s.take(6)
