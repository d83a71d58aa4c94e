"""The encoder's shape: a named BERT size (a preset) or custom dimensions.

A preset fixes the four dimensions: a recipe may repeat a preset's value, but a different one is
refused (it would otherwise be silently ignored). ``size: custom`` uses the four fields, with
defaults, and checks that the heads divide the width. Either way the validated config carries the
dimensions that are built, so manifests and MLflow params show them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ctxvec.config.base import _Section

MODEL_SIZES: dict[str, dict[str, int]] = {
    # BERT sizes of Turc et al. (2019), "Well-Read Students Learn Better"
    "tiny": {"hidden_size": 128, "num_layers": 2, "num_heads": 2, "intermediate_size": 512},
    "mini": {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 1024},
    "small": {"hidden_size": 512, "num_layers": 4, "num_heads": 8, "intermediate_size": 2048},
    "base": {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 3072},
}


class ModelConfig(_Section):
    init: str = Field(
        "scratch",
        description="'scratch' builds a BERT of `size` (or the fields below) with the trained "
        "tokenizer; anything else is a model reference (minilm, a folder, models:/...).",
    )
    size: Literal["tiny", "mini", "small", "base", "custom"] = Field(
        "custom", description="A named BERT size (a preset: its four dimensions are fixed); "
        "'custom' uses the four fields below.",
    )
    hidden_size: int = Field(256, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(1024, ge=8)
    max_position: int = Field(512, ge=16)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        """Fill a preset's dimensions in, refusing a user value that disagrees with it."""
        if not isinstance(data, dict) or data.get("size", "custom") not in MODEL_SIZES:
            return data
        size = data["size"]
        preset = MODEL_SIZES[size]
        for key, value in preset.items():
            given = data.get(key)
            if given is not None and not _same_int(given, value):
                raise ValueError(
                    f"model.{key}={given} conflicts with model.size={size} (whose {key} is "
                    f"{value}): remove model.{key}, or set model.size=custom to choose "
                    "hidden_size, num_layers, num_heads and intermediate_size yourself"
                )
        return {**data, **preset}

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by "
                f"model.num_heads ({self.num_heads})"
            )
        return self

    def dims(self) -> dict[str, int]:
        """The four dimensions the model is built with (a preset's, or the custom fields)."""
        return {"hidden_size": self.hidden_size, "num_layers": self.num_layers,
                "num_heads": self.num_heads, "intermediate_size": self.intermediate_size}


def _same_int(given: Any, value: int) -> bool:
    try:
        return int(given) == value and float(given) == value
    except (TypeError, ValueError):
        return False
