"""Training objectives and where their examples come from.

``train.objectives`` is a list of a discriminated union keyed by ``name``: each objective is its
own section with only its own keys, so ``{name: mnrl, mask_prob: 0.5}`` is refused (mask_prob is
an MLM key) instead of being carried along and ignored. Each objective also says which
``data.source`` it can read, so a recipe that could not produce examples fails at load time
rather than minutes into a run. Adding an objective: a class here, one entry in ``OBJECTIVES``
and the union, and its loss in ``ctxvec.train.objectives``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, TypeAdapter, model_validator

from ctxvec.config.base import _Section

Source = Literal["corpus", "sts", "pairs", "labels", "mined"]
NO_PATH = ("corpus", "mined")  # sources the workspace provides: no data.path
# the mine stage's signals (the ``signal`` column of mined/<key>/train.parquet)
MinedSignal = Literal["title_text", "ict", "crops", "neighbours", "pseudo_sentence",
                      "pseudo_keywords"]


class DataConfig(_Section):
    """Where an objective's examples come from."""

    source: Source = Field(
        "corpus", description="corpus: the workspace corpus (packed for mlm, sentences "
        "otherwise); sts: an STS Benchmark TSV; pairs: JSONL/TSV of two texts (mnrl: then "
        "hard negatives); labels: JSONL/TSV of text and label; mined: the mine stage's pairs "
        "with hard negatives.",
    )
    path: str | None = Field(None, description="The file, for every source but corpus and mined.")
    text_fields: list[str] = Field(
        default_factory=lambda: ["text"], description="JSONL fields: one (labels), two (pairs), "
        "or more for mnrl and cached_mnrl (anchor, positive, then negatives: texts or lists).",
    )
    label_field: str = "label"
    min_score: float | None = Field(
        None, description="sts as positive pairs (mnrl): keep pairs scoring at least this."
    )
    max_examples: int | None = Field(None, ge=1)
    signals: list[MinedSignal] | None = Field(
        None, description="mined only: train on these signals' rows alone (title_text, ict, "
        "crops, neighbours, pseudo_sentence, pseudo_keywords); default: every signal mined.",
    )

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.source not in NO_PATH and not self.path:
            raise ValueError(f"data.path is required when data.source={self.source}")
        if self.signals is not None and self.source != "mined":
            raise ValueError("data.signals picks rows of mined data: it needs data.source=mined")
        if self.signals is not None and not self.signals:
            raise ValueError("data.signals is empty: name at least one signal, or leave it out")
        return self


class _Objective(_Section):
    """The keys every objective has. ``sources``: the ``data.source`` values it can train on."""

    sources: ClassVar[tuple[str, ...]] = ("corpus",)
    name: str
    weight: float = Field(1.0, gt=0)
    data: DataConfig = DataConfig()
    batch_size: int | None = Field(None, ge=2, description="Default: train.batch_size.")

    @model_validator(mode="after")
    def _source_fits(self) -> _Objective:
        # after, not a field validator: the default data (corpus) must be checked too
        if self.data.source not in self.sources:
            raise ValueError(f"data.source={self.data.source} does not fit objective "
                             f"{self.name}: use data.source={' or '.join(self.sources)}")
        return self


class MLMObjective(_Objective):
    """Masked-language modelling on the packed corpus."""

    name: Literal["mlm"] = "mlm"
    mask_prob: float = Field(0.15, gt=0, lt=1)
    whole_word: bool = Field(False, description="Mask every subword of a chosen word.")


class MNRLObjective(_Objective):
    """Multiple-negatives ranking on (anchor, positive, *hard negatives) examples."""

    sources: ClassVar[tuple[str, ...]] = ("pairs", "sts", "mined")
    name: Literal["mnrl"] = "mnrl"
    scale: float = Field(20.0, gt=0, description="1 / temperature of the cosine scores.")
    symmetric: bool = Field(False, description="Also rank anchors given positives.")


class SimCSEObjective(_Objective):
    """Unsupervised SimCSE on single sentences of the corpus."""

    name: Literal["simcse"] = "simcse"
    scale: float = Field(20.0, gt=0, description="1 / temperature of the cosine scores.")


class CoSENTObjective(_Objective):
    """CoSENT on pairs with a graded similarity score."""

    sources: ClassVar[tuple[str, ...]] = ("sts",)
    name: Literal["cosent"] = "cosent"
    scale: float = Field(20.0, gt=0, description="1 / temperature of the cosine scores.")


class ClassificationObjective(_Objective):
    """A linear head over the pooled sentence vector, on (text, label) examples."""

    sources: ClassVar[tuple[str, ...]] = ("labels",)
    name: Literal["classification"] = "classification"
    num_labels: int = Field(2, ge=2)


class CachedMNRLObjective(_Objective):
    """Multiple-negatives ranking at a large batch on small memory (GradCache)."""

    sources: ClassVar[tuple[str, ...]] = ("pairs", "sts", "mined")
    name: Literal["cached_mnrl"] = "cached_mnrl"
    scale: float = Field(20.0, gt=0, description="1 / temperature of the cosine scores.")
    symmetric: bool = Field(False, description="Also rank anchors given positives.")
    mini_batch_size: int = Field(
        32, ge=1, description="Texts the encoder runs with gradients at once; the batch "
        "(batch_size) sets the in-batch negatives, this only the memory.",
    )


class TSDAEObjective(_Objective):
    """A denoising auto-encoder on sentences of the corpus (TSDAE)."""

    name: Literal["tsdae"] = "tsdae"
    deletion_ratio: float = Field(0.6, ge=0, lt=1, description="Share of words deleted.")
    pooling: Literal["model", "cls", "mean"] = Field(
        "model", description="The sentence vector the decoder reads: model: the encoder's own "
        "pooling (what is served); the paper uses cls.",
    )
    tie: Literal["all", "embeddings"] = Field(
        "all", description="Weights the decoder shares with the encoder: all but the "
        "cross-attention (the paper's choice), or only the word embeddings.",
    )


OBJECTIVES: dict[str, type[_Objective]] = {
    "mlm": MLMObjective,
    "mnrl": MNRLObjective,
    "simcse": SimCSEObjective,
    "cosent": CoSENTObjective,
    "classification": ClassificationObjective,
    "cached_mnrl": CachedMNRLObjective,
    "tsdae": TSDAEObjective,
}

ObjectiveConfig = Annotated[
    MLMObjective | MNRLObjective | SimCSEObjective | CoSENTObjective | ClassificationObjective
    | CachedMNRLObjective | TSDAEObjective,
    Field(discriminator="name"),
]
"""One entry of ``train.objectives`` (a type: build one with :func:`objective_config`)."""

_ADAPTER: TypeAdapter[Any] = TypeAdapter(ObjectiveConfig)


def objective_config(name: str, **fields: Any) -> ObjectiveConfig:
    """The validated config of objective ``name`` (a plain constructor for code and tests)."""
    return _ADAPTER.validate_python({"name": name, **fields})


def objective_key_error(name: str, key: str) -> str:
    """Why ``key`` is refused in an objective called ``name``, and what to do instead."""
    own = list(OBJECTIVES[name].model_fields)
    owners = [n for n, c in OBJECTIVES.items() if n != name and key in c.model_fields]
    why = (f"a key of {' and '.join(owners)}, not of {name}: remove it" if owners
           else f"not a key of {name} (check the spelling)")
    return f"{why}; {name} takes {', '.join(own)}"


def objective_names() -> str:
    return ", ".join(OBJECTIVES)
