"""A classification head: a linear layer over the pooled sentence vector, trained with
cross-entropy (the fine-tuning recipe of Devlin et al. 2019, BERT, with mean pooling instead of
[CLS]). Input: (text, label) with integer labels in [0, num_labels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctxvec.train.objectives.sentences import SentenceView


class Classification:
    name = "classification"

    def __init__(self, view: SentenceView, num_labels: int, hidden_size: int | None = None):
        self.view, self.num_labels = view, num_labels
        self.head: torch.nn.Module | None = None
        self._hidden = hidden_size

    def attach(self, hidden_size: int, device: torch.device) -> None:
        """Create the head once the encoder's width is known."""
        self.head = torch.nn.Linear(hidden_size, self.num_labels).to(device)

    def collate(self, examples: list[tuple[str, int]]):
        return (self.view.tokenize([t for t, _ in examples]),
                torch.tensor([y for _, y in examples], dtype=torch.long))

    def logits(self, model, enc) -> torch.Tensor:
        return self.head(self.view.embed(model, enc))  # (B, num_labels)

    def loss(self, model, batch, generator: torch.Generator) -> torch.Tensor:
        logits = self.logits(model, batch[0])
        return F.cross_entropy(logits, batch[1].to(logits.device))
