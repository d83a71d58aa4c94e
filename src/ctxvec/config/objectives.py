"""Training objectives and where their examples come from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ctxvec.config.base import _Section


class DataConfig(_Section):
    """Where an objective's examples come from."""

    source: Literal["corpus", "sts", "pairs", "labels"] = Field(
        "corpus", description="corpus: the workspace corpus (packed for mlm, sentences "
        "otherwise); sts: an STS Benchmark TSV; pairs: JSONL/TSV of two texts; labels: "
        "JSONL/TSV of text and label.",
    )
    path: str | None = Field(None, description="The file, for every source but corpus.")
    text_fields: list[str] = Field(
        default_factory=lambda: ["text"], description="JSONL fields: one (labels) or two (pairs)."
    )
    label_field: str = "label"
    min_score: float | None = Field(
        None, description="sts as positive pairs (mnrl): keep pairs scoring at least this."
    )
    max_examples: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.source != "corpus" and not self.path:
            raise ValueError(f"data.path is required when data.source={self.source}")
        return self


class ObjectiveConfig(_Section):
    name: Literal["mlm", "mnrl", "simcse", "cosent", "classification"]
    weight: float = Field(1.0, gt=0)
    data: DataConfig = DataConfig()
    batch_size: int | None = Field(None, ge=2, description="Default: train.batch_size.")
    mask_prob: float = Field(0.15, gt=0, lt=1, description="mlm")
    whole_word: bool = Field(False, description="mlm: mask every subword of a chosen word.")
    scale: float = Field(20.0, gt=0, description="mnrl/simcse/cosent: 1 / temperature.")
    symmetric: bool = Field(False, description="mnrl: also rank anchors given positives.")
    num_labels: int = Field(2, ge=2, description="classification")
