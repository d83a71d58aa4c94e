from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from ctxvec.config import TrainConfig
from ctxvec.tokenizer.trainer import SPECIALS, to_fast_tokenizer
from ctxvec.train.objectives.mlm import MaskedLM
from ctxvec.train.optim import lr_at


@pytest.fixture(scope="module")
def tokenizer():
    vocab = {t: i for i, t in enumerate(SPECIALS + [f"w{i}" for i in range(995)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return to_fast_tokenizer(tok, 512)


def test_masking_follows_80_10_10_and_spares_specials(tokenizer):
    obj = MaskedLM(tokenizer, mask_prob=0.15)
    ids = torch.randint(5, 1000, (64, 128))
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    inputs, labels = obj.mask(ids, torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:, -1].any()
    assert torch.equal(labels[chosen], ids[chosen])
    rate = chosen.float().mean().item()
    assert 0.13 < rate < 0.17
    masked = (inputs == tokenizer.mask_token_id) & chosen
    unchanged = (inputs == ids) & chosen
    n = chosen.sum().item()
    assert 0.75 < masked.sum().item() / n < 0.85
    assert 0.06 < unchanged.sum().item() / n < 0.14
    assert torch.equal(inputs[~chosen], ids[~chosen])


def test_an_all_unmasked_draw_still_has_a_target(tokenizer):
    obj = MaskedLM(tokenizer, mask_prob=1e-9)
    ids = torch.randint(5, 1000, (1, 8))
    _, labels = obj.mask(ids, torch.Generator().manual_seed(0))
    assert (labels != -100).sum() == 1


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_warms_up_then_decays_to_zero(schedule):
    cfg = TrainConfig(steps=10, warmup_steps=2, lr=1.0, schedule=schedule)
    lrs = [lr_at(s, 10, cfg) for s in range(10)]
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(1.0) and lrs[-1] < lrs[5] < lrs[2]
    assert lr_at(10, 10, cfg) == pytest.approx(0.0)
    if schedule == "cosine":  # halfway through the decay, cosine is at half of lr
        assert lr_at(6, 10, cfg) == pytest.approx(0.5)
    constant = TrainConfig(steps=10, warmup_steps=2, lr=1.0, schedule="constant")
    assert lr_at(9, 10, constant) == 1.0


def test_loop_reduces_loss_on_a_tiny_bert(tokenizer):
    import numpy as np
    from transformers import BertConfig, BertForMaskedLM

    from ctxvec.train.datasets import Sampler
    from ctxvec.train.loop import train
    from ctxvec.train.multitask import MultiTask, Task

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32,
                                       num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=32))
    # a learnable pattern: repeated short cycles of tokens
    row = np.array([2] + [5 + (i % 6) for i in range(14)] + [3], dtype=np.int32)
    data = np.tile(row, (64, 1))
    obj = MaskedLM(tokenizer)
    cfg = TrainConfig(steps=60, batch_size=16, lr=3e-3, warmup_steps=5, log_every=10)
    tasks = MultiTask([Task(obj, data, 1.0, 16, Sampler(len(data), 0))])
    result = train(model, tasks, cfg)
    assert result.steps == 60 and result.tokens_seen == 60 * 16 * 16
    assert result.history[-1]["loss"] < 0.5 * result.history[0]["loss"]


def test_whole_word_masking_masks_every_piece_of_a_word():
    from tokenizers import Tokenizer, models, pre_tokenizers

    from ctxvec.tokenizer.trainer import to_fast_tokenizer

    vocab = {t: i for i, t in enumerate(SPECIALS + ["a", "##b", "##c", "d", "e", "##f"])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = to_fast_tokenizer(tok, 64)
    obj = MaskedLM(fast, mask_prob=0.3, whole_word=True)
    # words: [a ##b ##c] [d] [e ##f], repeated
    word_of = [0, 0, 0, 1, 2, 2]
    ids = torch.tensor([[2] + [5, 6, 7, 8, 9, 10] * 10 + [3]] * 32)
    _, labels = obj.mask(ids, torch.Generator().manual_seed(1))
    chosen = (labels != -100)[:, 1:-1].reshape(32, 10, 6)
    for w in range(3):  # within a word occurrence, all pieces are chosen or none is
        cols = [i for i, x in enumerate(word_of) if x == w]
        block = chosen[:, :, cols]
        assert torch.equal(block.all(-1), block.any(-1))
    assert 0.2 < chosen.float().mean() < 0.4


def test_a_pretrained_encoder_without_an_mlm_head_says_only_the_head_is_new(tmp_path, caplog):
    """A sentence encoder (no MLM head) loaded for masked-LM training: the log says the head is
    new and the encoder pretrained, not that the model starts from random weights."""
    import logging

    from ctxvec.config import load_config
    from ctxvec.model.bert import build_model
    from tests.helpers import tiny_bert

    folder = tiny_bert(tmp_path / "enc", ["a river flows", "the bank of a river"])
    cfg = load_config(None, [f"model.init={folder}", "tokenizer.source=model"])
    with caplog.at_level(logging.INFO, logger="ctxvec.model.bert"):
        build_model(cfg, None, mlm=True, init_dir=folder)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "MLM head" in said and "pretrained" in said and "random weights" not in said
