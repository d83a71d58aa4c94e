"""The whole config tree: one section per stage."""

from __future__ import annotations

from pydantic import model_validator

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

    @model_validator(mode="after")
    def _coherent(self) -> CtxvecConfig:
        if self.model.init == "scratch" and self.tokenizer.source == "model":
            raise ValueError(
                "tokenizer.source=model needs a pretrained model.init (minilm, a folder or "
                "models:/...); with model.init=scratch use tokenizer.source=train"
            )
        return self
