"""Multiple-negatives ranking loss (Henderson et al. 2017, "Efficient Natural Language Response
Suggestion for Smart Reply"; sentence-transformers' MultipleNegativesRankingLoss), with hard
negatives as in Karpukhin et al. 2020 (DPR).

Input: ``(anchor, positive, *negatives)`` tuples, the number of negatives free per example (0 for
plain pairs). For a batch of B examples with N negatives in all, each anchor must rank its own
positive above the other B - 1 positives (in-batch negatives) and above all N negatives, every
example's negatives being candidates for every anchor: cross-entropy over the scaled cosine
similarities of a (B, B + N) score matrix. Negatives are pooled, not padded: an example with fewer
negatives simply contributes fewer candidates, so no count is required and nothing is masked.
``symmetric`` adds the same loss with the roles swapped (each positive ranks the B anchors), as
sentence-transformers' MultipleNegativesSymmetricRankingLoss does; the negatives take no part in
that direction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ctxvec.train.objectives.sentences import SentenceView

Example = Sequence[str]  # (anchor, positive, *negatives)


def split_examples(examples: list[Example]) -> tuple[list[str], list[str], list[str]]:
    """(anchors, positives, every example's negatives in order) of a batch."""
    for ex in examples:
        if len(ex) < 2:
            raise ValueError(f"mnrl needs (anchor, positive, *negatives) examples, got {ex!r}")
    return ([ex[0] for ex in examples], [ex[1] for ex in examples],
            [neg for ex in examples for neg in ex[2:]])


def ranking_loss(anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None,
                 scale: float, symmetric: bool) -> torch.Tensor:
    """The loss of (B, D) anchors, (B, D) positives and (N, D) negatives (or None), unnormalised
    vectors in: row i's positive is candidate i of ``[positives; negatives]``."""
    a = F.normalize(anchors, dim=-1)
    p = F.normalize(positives, dim=-1)
    candidates = p if negatives is None else torch.cat([p, F.normalize(negatives, dim=-1)])
    scores = scale * a @ candidates.T  # (B, B + N)
    labels = torch.arange(len(scores), device=scores.device)
    loss = F.cross_entropy(scores, labels)
    if symmetric:  # each positive ranks the anchors: the (B, B) block, transposed
        loss = (loss + F.cross_entropy(scores[:, : len(p)].T, labels)) / 2
    return loss


class MultipleNegativesRanking:
    name = "mnrl"
    head = None

    def __init__(self, view: SentenceView, scale: float = 20.0, symmetric: bool = False):
        self.view, self.scale, self.symmetric = view, scale, symmetric

    def collate(self, examples: list[Example]):
        anchors, positives, negatives = split_examples(examples)
        return (self.view.tokenize(anchors), self.view.tokenize(positives),
                self.view.tokenize(negatives) if negatives else None)

    def loss(self, model, batch, generator: torch.Generator) -> torch.Tensor:
        a = self.view.embed(model, batch[0])  # (B, D)
        p = self.view.embed(model, batch[1])  # (B, D)
        n = self.view.embed(model, batch[2]) if len(batch) > 2 and batch[2] is not None else None
        return ranking_loss(a, p, n, self.scale, self.symmetric)
