"""Training objectives, one per file. Each turns a batch of examples into a loss:

- ``mlm``: masked-language modelling on packed sequences (dynamic 80/10/10 masking);
- ``mnrl``: multiple-negatives ranking (contrastive, in-batch and hard negatives) on text pairs;
- ``cached_mnrl``: the same loss at a large batch on small memory (GradCache);
- ``simcse``: unsupervised SimCSE, two dropout views of one sentence as a positive pair;
- ``cosent``: CoSENT on pairs with a similarity score;
- ``classification``: a linear head over the pooled sentence vector, cross-entropy;
- ``tsdae``: a denoising auto-encoder, a decoder head rebuilding a sentence from its vector.

An objective has ``name``, ``collate(examples) -> batch``, ``loss(model, batch, generator)`` and
``head`` (an ``nn.Module`` with its own parameters, or None; a head that depends on the model is
built by ``attach(hidden_size, device)`` or ``bind(model, device)``). ``model`` is the whole
trainable model (an ``*ForMaskedLM`` when an MLM objective is present, the bare encoder
otherwise); sentence objectives use its ``base_model``.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ctxvec.config import (
    CachedMNRLObjective,
    ClassificationObjective,
    CoSENTObjective,
    MLMObjective,
    MNRLObjective,
    ObjectiveConfig,
    SimCSEObjective,
    TSDAEObjective,
)
from ctxvec.model.encoder import EncoderSettings
from ctxvec.train.objectives.cached_mnrl import CachedMultipleNegativesRanking
from ctxvec.train.objectives.classification import Classification
from ctxvec.train.objectives.cosent import CoSENT
from ctxvec.train.objectives.mlm import MaskedLM
from ctxvec.train.objectives.mnrl import MultipleNegativesRanking
from ctxvec.train.objectives.sentences import SentenceView
from ctxvec.train.objectives.simcse import SimCSE
from ctxvec.train.objectives.tsdae import TSDAE


class Objective(Protocol):
    name: str
    head: torch.nn.Module | None

    def collate(self, examples: list[Any]) -> Any: ...

    def loss(self, model, batch: Any, generator: torch.Generator) -> torch.Tensor: ...


def build_objective(ocfg: ObjectiveConfig, tokenizer, settings: EncoderSettings,
                    max_length: int) -> Objective:
    """The loss of one ``train.objectives`` entry; each config type carries only its own keys."""
    if isinstance(ocfg, MLMObjective):
        return MaskedLM(tokenizer, ocfg.mask_prob, whole_word=ocfg.whole_word)
    view = SentenceView(tokenizer, max_length, settings.pooling)
    if isinstance(ocfg, MNRLObjective):
        return MultipleNegativesRanking(view, ocfg.scale, ocfg.symmetric)
    if isinstance(ocfg, SimCSEObjective):
        return SimCSE(view, ocfg.scale)
    if isinstance(ocfg, CoSENTObjective):
        return CoSENT(view, ocfg.scale)
    if isinstance(ocfg, ClassificationObjective):
        return Classification(view, ocfg.num_labels)
    if isinstance(ocfg, CachedMNRLObjective):
        return CachedMultipleNegativesRanking(view, ocfg.scale, ocfg.symmetric,
                                              ocfg.mini_batch_size)
    if isinstance(ocfg, TSDAEObjective):
        return TSDAE(view, ocfg.deletion_ratio, ocfg.pooling, ocfg.tie)
    raise TypeError(f"no loss for objective config {type(ocfg).__name__}")
