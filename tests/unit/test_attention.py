"""Attention maps: parity with softmax(QK^T / sqrt(d)) by hand on a tiny BERT, errors, heatmaps."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ctxvec.model.attention import AttentionError, attention_map, draw_attention
from ctxvec.model.encoder import Encoder
from tests.helpers import tiny_bert

SENTENCES = ["I saw a saw in the shed.", "The river bank was muddy.",
             "She put her money in the bank.", "The saw was sharp."]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A real two-layer, two-head BERT with its own WordPiece vocabulary (random weights)."""
    return tiny_bert(tmp_path_factory.mktemp("tiny-attn"), SENTENCES, vocab_size=120)


@pytest.fixture(scope="module")
def tiny(tiny_dir) -> Encoder:
    return Encoder.load(tiny_dir, device="cpu")  # SDPA, as the encoders serve


def _by_hand(encoder: Encoder, text: str, layer: int) -> torch.Tensor:
    """(H, T, T) softmax(Q K^T / sqrt(d_head)) of ``layer`` from its input hidden states."""
    ids = encoder.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        x = encoder.model(input_ids=ids, output_hidden_states=True).hidden_states[layer][0]
        attn = encoder.model.encoder.layer[layer].attention.self
        h = encoder.model.config.num_attention_heads
        d = x.shape[-1] // h
        q = attn.query(x).view(-1, h, d).transpose(0, 1)  # (H, T, d)
        k = attn.key(x).view(-1, h, d).transpose(0, 1)
        return torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1)


def test_attention_matches_the_definition_and_leaves_the_encoder_as_it_was(tiny):
    text = SENTENCES[0]
    for layer in (0, 1):
        ref = _by_hand(tiny, text, layer)
        for head in (0, 1):
            amap = attention_map(tiny, text, layer=layer, head=head)
            assert np.allclose(amap.weights, ref[head].numpy(), atol=1e-5)
        mean = attention_map(tiny, text, layer=layer)
        assert mean.head is None and np.allclose(mean.weights, ref.mean(0).numpy(), atol=1e-5)
    assert tiny.model.config._attn_implementation == "sdpa"  # switched back after the map
    amap = attention_map(tiny, text, layer=-1, head=1)
    assert amap.layer == 1 and amap.n_layers == 2 and amap.n_heads == 2 and not amap.truncated
    assert amap.tokens[0] == "[CLS]" and amap.tokens[-1] == "[SEP]" and "saw" in amap.tokens
    assert amap.weights.shape == (len(amap.tokens),) * 2
    assert np.allclose(amap.weights.sum(axis=1), 1.0, atol=1e-5)
    d = amap.to_dict()
    assert d["head"] == 1 and d["layer"] == 1 and len(d["weights"]) == len(d["tokens"])


def test_a_model_reference_loads_and_long_texts_are_cut(tiny_dir):
    amap = attention_map(str(tiny_dir), "the saw " * 100, layer=0, max_tokens=20)
    assert len(amap.tokens) == 20 and amap.truncated and amap.tokens[-1] == "[SEP]"
    assert "truncated to its first 20 tokens" in amap.title("tiny")
    assert amap.title("tiny").startswith("tiny: layer 0, mean of heads")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"text": "", "layer": -1}, "text is empty"),
        ({"text": "   ", "layer": -1}, "text is empty"),
        ({"text": "a saw", "layer": 2}, r"layer 2 does not exist: the model has 2 layers, so "
                                         r"pick one in \[-2, 1\]"),
        ({"text": "a saw", "layer": -3}, "layer -3 does not exist"),
        ({"text": "a saw", "head": 2}, r"head 2 does not exist: each layer has 2 heads"),
        ({"text": "a saw", "head": -1}, "head -1 does not exist"),
    ],
)
def test_bad_layer_head_or_text_is_a_user_error(tiny, kwargs, message):
    with pytest.raises(AttentionError, match=message):
        attention_map(tiny, **kwargs)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_draw_attention_writes_a_png_atomically(tiny, tmp_path):
    amap = attention_map(tiny, SENTENCES[0])
    out = draw_attention(amap.tokens, amap.weights, tmp_path / "sub" / "attn.png",
                         amap.title("tiny"))
    assert out == tmp_path / "sub" / "attn.png"
    width, height = _png_size(out)
    assert width >= 400 and height >= 400 and out.stat().st_size > 10_000
    assert [p.name for p in out.parent.iterdir()] == ["attn.png"]  # no temporary file left
    # 64 tokens get a bigger figure
    big = np.full((64, 64), 1 / 64, dtype=np.float32)
    w64, h64 = _png_size(draw_attention([f"t{i}" for i in range(64)], big, tmp_path / "b.png"))
    assert w64 > width and h64 > height
    with pytest.raises(AttentionError, match="must end in .png"):
        draw_attention(amap.tokens, amap.weights, tmp_path / "attn.jpg")
    with pytest.raises(ValueError, match="do not match"):
        draw_attention(amap.tokens[:-1], amap.weights, tmp_path / "x.png")
    assert not (tmp_path / "attn.jpg").exists() and not (tmp_path / "x.png").exists()
