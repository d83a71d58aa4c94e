"""``ctxvec update``: continual training of the champion and its promotion gate."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from ctxvec.config.base import _Section


class GateConfig(_Section):
    """When a challenger may replace the champion (both measured on the same held-out data)."""

    new_metric: str = Field(
        "auto", description="The new-domain metric that must improve: new.pseudo_ndcg_at_10 "
        "(label-free: held-out pseudo-queries of the new documents), new.mlm_loss (needs an MLM "
        "head), new.halves_mrr, or auto (the first of these measured).",
    )
    min_improvement: float = Field(
        0.0, ge=0, description="Relative improvement new_metric must exceed (0: any).",
    )
    tolerance: float = Field(
        0.02, ge=0, description="Largest relative worsening allowed on any old-domain metric "
        "(old.*, e.g. old.pseudo_ndcg_at_10, and the recipe's evaluations: sts_spearman, "
        "retrieval_*, wic_accuracy).",
    )


class ContinualConfig(_Section):
    """``ctxvec update``: train the champion further on the documents it has not seen."""

    parent: str = Field(
        "champion", description="Alias (or version number) of registry.model_name to start from.",
    )
    replay_ratio: float = Field(
        0.5, ge=0, lt=1, description="Share of the update's data drawn from earlier documents "
        "(MLM sequences, corpus sentences, documents to mine).",
    )
    regularizer: Literal["none", "l2sp", "ewc"] = Field(
        "l2sp", description="Penalty against moving away from the parent's weights: l2sp "
        "(Li et al. 2018) or ewc (Kirkpatrick et al. 2017, diagonal Fisher on earlier data).",
    )
    reg_weight: float = Field(
        0.01, ge=0, description="Penalty weight. EWC's Fisher is scaled to mean 1, so one "
        "weight means the same total pull for both.",
    )
    ewc_batches: int = Field(8, ge=1, description="Batches of earlier data for the Fisher.")
    distill_weight: float = Field(
        0.0, ge=0, description="Weight of distillation from the parent's stored chunk "
        "embeddings (1 - cosine); 0: off.",
    )
    distill_examples: int = Field(2000, ge=1, description="Chunks sampled for distillation.")
    heldout_every: int = Field(
        10, ge=2, description="Every Nth document (by id hash) of each domain is held out.",
    )
    eval_docs: int = Field(300, ge=2, description="Held-out documents per domain, at most.")
    min_new_docs: int = Field(1, ge=1, description="Fewer new documents: nothing to do.")
    gate: GateConfig = GateConfig()

    @field_validator("parent", mode="before")
    @classmethod
    def _version_number(cls, v: Any) -> Any:
        # `--set continual.parent=3` and `parent: 3` parse as YAML integers: a version number
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v
