"""Unsupervised SimCSE (Gao, Yao and Chen 2021, "SimCSE: Simple Contrastive Learning of Sentence
Embeddings").

Input: single sentences. Each sentence is encoded twice with dropout on; the two views are a
positive pair and the other sentences of the batch are negatives (an InfoNCE loss with
temperature 1 / ``scale``, 0.05 in the paper). Needs the model in train mode (dropout active),
which the training loop guarantees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctxvec.train.objectives.sentences import SentenceView


class SimCSE:
    name = "simcse"
    head = None

    def __init__(self, view: SentenceView, scale: float = 20.0):
        self.view, self.scale = view, scale

    def collate(self, examples: list[str]):
        return self.view.tokenize(list(examples))

    def loss(self, model, batch, generator: torch.Generator) -> torch.Tensor:
        a = F.normalize(self.view.embed(model, batch), dim=-1)  # (B, D), dropout mask 1
        b = F.normalize(self.view.embed(model, batch), dim=-1)  # (B, D), dropout mask 2
        scores = self.scale * a @ b.T  # (B, B)
        labels = torch.arange(len(scores), device=scores.device)
        return F.cross_entropy(scores, labels)
