"""Sentence vectors inside training: tokenize, run the encoder, pool. The same pooling the
``Encoder`` uses at inference, so what is trained is what is served."""

from __future__ import annotations

import torch

from ctxvec.model.pooling import Pooling, pool


class SentenceView:
    def __init__(self, tokenizer, max_length: int, pooling: Pooling = "mean"):
        self.tokenizer, self.max_length, self.pooling = tokenizer, max_length, pooling

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts, truncation=True, max_length=self.max_length,
                              padding=True, return_tensors="pt")

    def embed(self, model, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        """-> (B, D) pooled, not normalised (objectives normalise where their loss says so)."""
        encoder = model.base_model
        device = next(encoder.parameters()).device
        ids = enc["input_ids"].to(device)
        mask = enc["attention_mask"].to(device)
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, D)
        return pool(hidden, mask, self.pooling)
