"""One typed config tree for every stage, loaded from YAML recipes with dotted overrides.

Every section is a frozen pydantic model with ``extra="forbid"``, so a misspelt key in a recipe or
in ``--set`` fails loudly with the key's full dotted path instead of being ignored.
"""

from __future__ import annotations

from ctxvec.config.adapt import AdaptConfig
from ctxvec.config.base import ConfigError
from ctxvec.config.continual import ContinualConfig, GateConfig
from ctxvec.config.ingest import IngestConfig, NearDupConfig, PackConfig, TokenizerConfig
from ctxvec.config.loader import apply_override, config_to_yaml, flatten, load_config
from ctxvec.config.model import MODEL_SIZES, ModelConfig
from ctxvec.config.objectives import (
    OBJECTIVES,
    CachedMNRLObjective,
    ClassificationObjective,
    CoSENTObjective,
    DataConfig,
    MLMObjective,
    MNRLObjective,
    ObjectiveConfig,
    SimCSEObjective,
    TSDAEObjective,
    objective_config,
)
from ctxvec.config.serving import (
    EmbedConfig,
    EvaluateConfig,
    IndexConfig,
    QueryConfig,
    RayEmbedConfig,
    RegistryConfig,
    ServeConfig,
    WordsConfig,
)
from ctxvec.config.train import AnchorConfig, EarlyStoppingConfig, FreezeConfig, TrainConfig
from ctxvec.config.tree import CtxvecConfig

__all__ = [
    "MODEL_SIZES", "OBJECTIVES", "AdaptConfig", "ClassificationObjective", "CoSENTObjective",
    "ConfigError",
    "ContinualConfig", "CtxvecConfig", "DataConfig", "EarlyStoppingConfig", "EmbedConfig",
    "EvaluateConfig", "FreezeConfig", "GateConfig", "IndexConfig", "IngestConfig", "MLMObjective",
    "MNRLObjective", "ModelConfig", "NearDupConfig", "ObjectiveConfig", "PackConfig",
    "QueryConfig", "RayEmbedConfig", "RegistryConfig", "ServeConfig", "SimCSEObjective",
    "TokenizerConfig", "TrainConfig", "WordsConfig", "apply_override", "config_to_yaml", "flatten",
    "load_config", "objective_config",
    "AnchorConfig", "CachedMNRLObjective", "TSDAEObjective",
]
