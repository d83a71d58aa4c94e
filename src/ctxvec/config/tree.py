"""The whole config tree: one section per stage."""

from __future__ import annotations

from pydantic import model_validator

from ctxvec.config.adapt import AdaptConfig
from ctxvec.config.base import _Section
from ctxvec.config.continual import ContinualConfig
from ctxvec.config.ingest import IngestConfig, PackConfig, TokenizerConfig
from ctxvec.config.model import ModelConfig
from ctxvec.config.serving import (
    EmbedConfig,
    EvaluateConfig,
    IndexConfig,
    QueryConfig,
    RegistryConfig,
    ServeConfig,
)
from ctxvec.config.train import TrainConfig


class CtxvecConfig(_Section):
    name: str = "ctxvec"
    ingest: IngestConfig = IngestConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    pack: PackConfig = PackConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    embed: EmbedConfig = EmbedConfig()
    index: IndexConfig = IndexConfig()
    registry: RegistryConfig = RegistryConfig()
    query: QueryConfig = QueryConfig()
    serve: ServeConfig = ServeConfig()
    continual: ContinualConfig = ContinualConfig()
    adapt: AdaptConfig = AdaptConfig()

    @model_validator(mode="after")
    def _coherent(self) -> CtxvecConfig:
        if self.model.init == "scratch" and self.tokenizer.source == "model":
            raise ValueError(
                "tokenizer.source=model needs a pretrained model.init (minilm, a folder or "
                "models:/...); with model.init=scratch use tokenizer.source=train"
            )
        if self.model.init == "scratch" and self.wants_mined() and self.adapt.uses_encoder():
            raise ValueError(
                "mining with the encoder (adapt.pseudo_queries.filter or adapt.negatives.sources"
                " naming it) needs a pretrained model.init; with model.init=scratch set "
                "adapt.pseudo_queries.filter=bm25 and adapt.negatives.sources=[bm25]"
            )
        return self

    def wants_mined(self) -> bool:
        """Whether a run mines the corpus: an objective trains on mined examples, or the
        label-free evaluation (``evaluate.pseudo``) scores held-out pseudo-queries."""
        return self.evaluate.pseudo or any(o.data.source == "mined"
                                           for o in self.train.objectives)
