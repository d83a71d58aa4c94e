"""Embedding distillation from stored vectors (feature-based knowledge distillation, as in
Hinton et al. 2015 and, for sentence embeddings, Reimers and Gurevych 2020).

Input: ``(text, teacher_vector)`` pairs: chunks of earlier documents with the vectors the previous
model version wrote to its embeddings Parquet, so the teacher costs no forward pass. The loss is
``1 - cos(student(text), teacher)``, averaged over the batch: the student keeps the geometry users
search in while it learns new data.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ctxvec.train.objectives.sentences import SentenceView


class EmbeddingDistillation:
    name = "distill"
    head = None

    def __init__(self, view: SentenceView):
        self.view = view

    def collate(self, examples: list[tuple[str, np.ndarray]]):
        texts = [t for t, _ in examples]
        target = torch.from_numpy(np.stack([v for _, v in examples]).astype(np.float32))
        return {**self.view.tokenize(texts), "target": target}

    def loss(self, model, batch, generator: torch.Generator) -> torch.Tensor:
        student = self.view.embed(model, batch)  # (B, D)
        target = batch["target"].to(student.device)
        if target.shape != student.shape:
            raise ValueError(f"teacher vectors have shape {tuple(target.shape[1:])}, the student "
                             f"makes {tuple(student.shape[1:])}: distillation needs one dimension")
        return (1.0 - F.cosine_similarity(student.float(), target, dim=-1)).mean()
