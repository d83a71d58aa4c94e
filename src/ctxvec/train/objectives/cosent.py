"""CoSENT loss (Su 2022, "CoSENT: a more efficient sentence vector scheme than Sentence-BERT";
sentence-transformers' CoSENTLoss).

Input: (sentence1, sentence2, score) with a graded similarity score (STS's 0-5). For every two
pairs (i, j) in the batch whose gold score says i is more similar than j, the loss pushes
cos(i) above cos(j): log(1 + sum exp(scale * (cos_j - cos_i))). It optimises the ranking that
Spearman correlation measures, and trains faster than a regression on the scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctxvec.train.objectives.sentences import SentenceView


class CoSENT:
    name = "cosent"
    head = None

    def __init__(self, view: SentenceView, scale: float = 20.0):
        self.view, self.scale = view, scale

    def collate(self, examples: list[tuple[str, str, float]]):
        return (self.view.tokenize([a for a, _, _ in examples]),
                self.view.tokenize([b for _, b, _ in examples]),
                torch.tensor([s for _, _, s in examples], dtype=torch.float32))

    def loss(self, model, batch, generator: torch.Generator) -> torch.Tensor:
        a = F.normalize(self.view.embed(model, batch[0]), dim=-1)
        b = F.normalize(self.view.embed(model, batch[1]), dim=-1)
        cos = (a * b).sum(-1) * self.scale  # (B,)
        gold = batch[2].to(cos.device)
        diff = cos[None, :] - cos[:, None]  # (B, B): diff[i, j] = cos_j - cos_i
        wrong_order = gold[:, None] > gold[None, :]  # pairs where i should score above j
        diff = diff[wrong_order]
        zero = torch.zeros(1, device=cos.device, dtype=cos.dtype)
        return torch.logsumexp(torch.cat([zero, diff]), dim=0)
