"""Multiple-negatives ranking loss (Henderson et al. 2017, "Efficient Natural Language Response
Suggestion for Smart Reply"; sentence-transformers' MultipleNegativesRankingLoss).

Input: (anchor, positive) text pairs. For a batch of B pairs, each anchor must rank its own
positive above the other B - 1 positives (in-batch negatives): cross-entropy over the scaled
cosine similarities. ``symmetric`` adds the same loss with the roles swapped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctxvec.train.objectives.sentences import SentenceView


class MultipleNegativesRanking:
    name = "mnrl"
    head = None

    def __init__(self, view: SentenceView, scale: float = 20.0, symmetric: bool = False):
        self.view, self.scale, self.symmetric = view, scale, symmetric

    def collate(self, examples: list[tuple[str, str]]):
        return (self.view.tokenize([a for a, _ in examples]),
                self.view.tokenize([b for _, b in examples]))

    def loss(self, model, batch, generator: torch.Generator) -> torch.Tensor:
        a = F.normalize(self.view.embed(model, batch[0]), dim=-1)  # (B, D)
        b = F.normalize(self.view.embed(model, batch[1]), dim=-1)  # (B, D)
        scores = self.scale * a @ b.T  # (B, B): row i's positive is column i
        labels = torch.arange(len(scores), device=scores.device)
        loss = F.cross_entropy(scores, labels)
        if self.symmetric:
            loss = (loss + F.cross_entropy(scores.T, labels)) / 2
        return loss
