"""The training loop's section: objectives, schedule, precision, checkpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ctxvec.config.base import _Section
from ctxvec.config.objectives import MLMObjective, ObjectiveConfig


class EarlyStoppingConfig(_Section):
    metric: str = Field("eval_loss", description="A key of the evaluation, e.g. sts_spearman.")
    mode: Literal["min", "max"] = "min"
    patience: int = Field(3, ge=1, description="Evaluations without improvement before stopping.")


class FreezeConfig(_Section):
    embeddings: bool = False
    layers: int = Field(0, ge=0, description="Freeze the first N transformer layers.")
    unfreeze_every: int | None = Field(
        None, ge=1, description="Gradual unfreezing: every N steps one more frozen layer "
        "(from the top) becomes trainable.",
    )


class AnchorConfig(_Section):
    """A pull toward the model training starts from, so that it keeps its general ability."""

    kind: Literal["none", "l2sp", "distill"] = Field(
        "none", description="l2sp: the squared distance of the weights to the starting ones "
        "(Li et al. 2018); distill: 1 - cosine between the sentence vectors of the batch's "
        "anchors and those the frozen starting model makes.",
    )
    weight: float | None = Field(
        None, gt=0, description="Default: 0.01 for l2sp (times the summed squared distance), "
        "1.0 for distill (times the mean 1 - cosine).",
    )

    @property
    def strength(self) -> float:
        """The weight, or its kind's default."""
        if self.weight is not None:
            return self.weight
        return {"l2sp": 0.01, "distill": 1.0}.get(self.kind, 0.0)


class TrainConfig(_Section):
    objectives: list[ObjectiveConfig] = Field(
        default_factory=lambda: [MLMObjective()],
        description="One or more; several make a multi-task weighted sum over interleaved data.",
    )
    steps: int = Field(100, ge=0, description="Optimizer steps; 0 skips training.")
    epochs: float | None = Field(
        None, gt=0, description="Instead of steps: passes over the first objective's data."
    )
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    seq_len: int = Field(128, ge=8)
    lr: float = Field(5e-4, gt=0)
    llrd: float = Field(1.0, gt=0, le=1, description="Layer-wise lr decay (1.0: off).")
    weight_decay: float = Field(0.01, ge=0)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: int = Field(10, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    freeze: FreezeConfig = FreezeConfig()
    anchor: AnchorConfig = AnchorConfig()
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="mlm: held-out share of data.")
    eval_every: int | None = Field(None, ge=1, description="Evaluate every N steps.")
    early_stopping: EarlyStoppingConfig | None = None
    checkpoint_every: int | None = Field(None, ge=1, description="Checkpoint every N steps.")
    keep_checkpoints: int = Field(2, ge=1)
    resume: bool = Field(True, description="Continue an interrupted run of the same recipe.")
    log_every: int = Field(10, ge=1)
    seed: int = 0
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU or a CPU with bf16 units "
        "(AMX/AVX512-BF16), else fp32; the weights stay fp32 either way."
    )
    compile: bool = Field(False, description="torch.compile the model.")
    compile_mode: Literal["default", "max-autotune-no-cudagraphs", "max-autotune"] = Field(
        "default", description="torch.compile's mode: max-autotune benchmarks kernels first."
    )
    peak_tflops: float = Field(989.0, gt=0, description="For MFU: the device's dense peak.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's).")
    nproc_per_node: int | Literal["auto"] = Field(
        1, description="Training processes the pipeline launches with torchrun (DDP): 1 trains "
        "in process; 'auto' one per visible GPU (1 without GPUs).",
    )

    @field_validator("nproc_per_node")
    @classmethod
    def _positive_nproc(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("train.nproc_per_node must be >= 1 or 'auto'")
        return v

    @model_validator(mode="after")
    def _objectives(self) -> TrainConfig:
        if not self.objectives:
            raise ValueError("train.objectives needs at least one objective")
        return self
