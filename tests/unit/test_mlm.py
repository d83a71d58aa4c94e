from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from ctxvec.config import TrainConfig
from ctxvec.tokenizer.trainer import SPECIALS, to_fast_tokenizer
from ctxvec.train.loop import lr_at
from ctxvec.train.mlm import MaskedLM


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


def test_schedule_warms_up_then_decays_to_zero():
    cfg = TrainConfig(steps=10, warmup_steps=2, lr=1.0)
    lrs = [lr_at(s, cfg) for s in range(10)]
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(1.0) and lrs[-1] < lrs[5] < lrs[2]
    assert lr_at(10, cfg) == 0.0


def test_loop_reduces_loss_on_a_tiny_bert(tokenizer):
    from transformers import BertConfig, BertForMaskedLM

    from ctxvec.train.loop import train

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32,
                                       num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=32))
    # a learnable pattern: repeated short cycles of tokens
    row = torch.tensor([2] + [5 + (i % 6) for i in range(14)] + [3])
    data = row.repeat(64, 1)
    cfg = TrainConfig(steps=60, batch_size=16, lr=3e-3, warmup_steps=5, log_every=10)
    result = train(model, MaskedLM(tokenizer), data, data[:16], cfg)
    assert result.steps == 60 and result.tokens_seen == 60 * 16 * 16
    assert result.history[-1]["loss"] < 0.5 * result.history[0]["loss"]
    assert result.eval_loss is not None and result.eval_loss < 2.0
