"""One typed config tree for every stage, loaded from YAML recipes with dotted overrides.

Every section is a frozen pydantic model with ``extra="forbid"``, so a misspelt key in a recipe or
in ``--set`` fails loudly with the key's full dotted path instead of being ignored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ctxvec.errors import UserInputError


class ConfigError(UserInputError):
    """A recipe or override the user can fix; the CLI turns it into exit code 2."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NearDupConfig(_Section):
    enabled: bool = True
    threshold: float = Field(0.9, gt=0, le=1, description="Jaccard of word shingles.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations.")
    shingle: int = Field(5, ge=1, description="Words per shingle.")


class IngestConfig(_Section):
    sources: list[str] = Field(
        default_factory=list,
        description="Files, directories or globs of .txt, .md, .jsonl, .json, .csv, .tsv, "
        ".parquet or wikiextractor <doc> files (optionally .gz or .zst). Relative paths resolve "
        "against the recipe's folder.",
    )
    txt_mode: Literal["line", "file"] = "line"
    text_field: str = "text"
    id_field: str = "id"
    title_field: str = "title"
    nfkc: bool = Field(True, description="Unicode NFKC normalisation before hashing.")
    min_chars: int = Field(1, ge=0)
    max_chars: int | None = Field(None, ge=1)
    drop_redirects: bool = True
    near_dup: NearDupConfig = NearDupConfig()
    incremental: bool = Field(
        True, description="Skip files already fully ingested with the same content."
    )
    workers: int | None = Field(None, ge=1, description="Processes over files (default: cores).")
    shard_docs: int = Field(50_000, ge=1, description="Documents per Parquet shard.")
    max_docs: int | None = Field(None, ge=1, description="Stop after this many kept documents.")


class TokenizerConfig(_Section):
    source: Literal["train", "model"] = Field(
        "train", description="'train' learns a vocabulary; 'model' reuses the checkpoint's own."
    )
    kind: Literal["wordpiece", "bpe", "unigram"] = "wordpiece"
    vocab_size: int = Field(8000, ge=100)
    min_frequency: int = Field(2, ge=1)
    normalization: Literal["nfkc", "nfc", "nfd", "none"] = "nfkc"
    lowercase: bool = True
    strip_accents: bool = False
    extra_special_tokens: list[str] = Field(default_factory=list)
    max_docs: int | None = Field(None, ge=1, description="Train on at most this many documents.")
    heldout_every: int = Field(
        50, ge=2, description="Every Nth document is held out to measure the vocabulary."
    )


class PackConfig(_Section):
    mode: Literal["concat", "doc", "pair"] = Field(
        "concat", description="concat: documents joined by [SEP], no padding; doc: one document "
        "per sequence; pair: [CLS] A [SEP] B [SEP] from consecutive sentences.",
    )
    workers: int | None = Field(None, ge=1, description="Processes (default: cores).")
    docs_per_shard: int = Field(2000, ge=1, description="Documents per output shard (rounded "
                                "to whole Parquet row groups).")


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
        "custom", description="A named BERT size; 'custom' uses the four fields below."
    )
    hidden_size: int = Field(256, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(1024, ge=8)
    max_position: int = Field(512, ge=16)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by "
                f"model.num_heads ({self.num_heads})"
            )
        return self

    def dims(self) -> dict[str, int]:
        if self.size != "custom":
            return dict(MODEL_SIZES[self.size])
        return {"hidden_size": self.hidden_size, "num_layers": self.num_layers,
                "num_heads": self.num_heads, "intermediate_size": self.intermediate_size}


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


class TrainConfig(_Section):
    objectives: list[ObjectiveConfig] = Field(
        default_factory=lambda: [ObjectiveConfig(name="mlm")],
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
        "auto", description="auto: bf16 autocast on GPU, fp32 on CPU."
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


class EvaluateConfig(_Section):
    sts: str | None = Field(
        None, description="STS Benchmark TSV; skipped with a logged reason when absent."
    )
    retrieval: str | None = Field(None, description="A BEIR folder (corpus, queries, qrels).")
    retrieval_split: str = "test"
    wic: str | None = Field(None, description="A WiC folder (train/ fits the threshold).")
    wic_split: str = "dev"
    batch_size: int = Field(64, ge=1)


class WordsConfig(_Section):
    """Context vectors per word occurrence (sense search)."""

    enabled: bool = Field(False, description="Also write one vector per word occurrence.")
    sample_docs: int | None = Field(
        None, ge=1, description="Take word vectors from this many documents (default: all)."
    )
    layers: list[int] = Field(
        [-1], min_length=1,
        description="Hidden layers averaged into a word vector (-1 = last; 0 = embeddings).",
    )
    min_chars: int = Field(3, ge=1, description="Skip shorter words (and punctuation).")
    stopwords: bool = Field(False, description="Keep very common words (the, of, ...).")
    max_per_word: int = Field(
        1000, ge=1, description="Keep at most this many occurrences of one word."
    )


class RayEmbedConfig(_Section):
    """Where and how ``embed.engine: ray`` runs: Ray Data ``map_batches`` over an actor pool."""

    address: str | None = Field(
        None, description="null: start a local Ray inside this process; 'auto': join the cluster "
        "this machine is a node of; 'ray://HOST:10001' (Ray Client) or 'HOST:6379': join that.",
    )
    actors: int | None = Field(
        None, ge=1, description="Embedding actors, each loading the encoder once (default: one "
        "per num_gpus of the cluster's GPUs, else (cluster CPUs - 1) // num_cpus).",
    )
    num_gpus: float | None = Field(
        None, ge=0, description="GPUs per actor (default: 1 when the cluster has GPUs and "
        "train.device is not cpu, else 0).",
    )
    num_cpus: float = Field(
        1.0, gt=0, description="CPUs reserved per actor; also its torch threads on a CPU."
    )
    batch_size: int = Field(
        256, ge=1, description="Documents per map_batches batch; each batch is written as one "
        "Parquet part file, the unit of resume.",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None and v != "auto" and not re.fullmatch(r"(ray://)?[\w.\-]+:\d+", v):
            raise ValueError(f"embed.ray.address {v!r}: use null (a local Ray), 'auto', "
                             "'ray://HOST:10001' or 'HOST:6379'")
        return v


class EmbedConfig(_Section):
    batch_size: int = Field(64, ge=1)
    max_tokens: int | None = Field(
        None, ge=8, description="Chunk window in tokens (default: the model's own limit)."
    )
    stride: int = Field(32, ge=0, description="Tokens shared by consecutive chunks.")
    dtype: Literal["float32", "float16"] = Field("float32", description="Stored vector type.")
    pooling: Literal["model", "mean", "cls", "max"] = Field(
        "model", description="Chunk pooling; 'model' keeps the encoder's own setting."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Compute precision: auto = bf16 on a GPU or a CPU with bf16 units "
        "(AMX/AVX512-BF16), else fp32.",
    )
    shard_docs: int = Field(
        2048, ge=1, description="Documents per output shard (the unit of resume)."
    )
    devices: int | None = Field(
        None, ge=1, description="GPUs to embed on in parallel (default: all visible)."
    )
    words: WordsConfig = WordsConfig()
    engine: Literal["local", "ray"] = Field(
        "local", description="local: this machine (one worker per visible GPU); ray: Ray Data "
        "actors on a Ray cluster (embed.ray), the same embeddings.",
    )
    ray: RayEmbedConfig = RayEmbedConfig()


class IndexConfig(_Section):
    factory: str = Field(
        "auto",
        description="FAISS index_factory string (Flat, HNSW32, IVF1024,PQ48, ...) or 'auto': "
        "exact below auto_exact_max vectors, approximate above.",
    )
    auto_exact_max: int = Field(100_000, ge=1, description="Largest index 'auto' keeps exact.")
    recall_sample: int = Field(200, ge=1, description="Queries used to measure recall@10.")
    train_sample: int = Field(
        100_000, ge=1, description="Vectors sampled to train IVF/PQ indexes."
    )
    nprobe: int = Field(32, ge=1, description="IVF lists probed per query.")
    ef_search: int = Field(128, ge=1, description="HNSW candidate list size at query time.")
    mmap: bool = Field(False, description="Memory-map the index file instead of reading it.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Search on a GPU when faiss or torch can use one."
    )
    metadata: list[str] = Field(
        ["source", "title"], description="Document fields kept for --filter KEY=VALUE."
    )
    bm25: bool = Field(True, description="Also build a BM25 index for hybrid search.")
    build_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where IVF indexes are trained and filled: auto = a GPU when faiss "
        "sees one (faiss-gpu), else the CPU; cuda without one is an error.",
    )
    shards: int = Field(
        1, ge=1, description="Indexes, one per corpus shard (documents split by a hash of "
        "doc_id), searched together and merged; 1: one index.",
    )


class RegistryConfig(_Section):
    model_name: str = "ctxvec-encoder"
    experiment: str = "ctxvec"
    promote: bool = Field(True, description="Move the 'champion' alias to the new version.")


class QueryConfig(_Section):
    sample: str | None = Field(None, description="Query whose neighbours the run prints last.")
    k: int = Field(5, ge=1)
    rrf_k: int = Field(60, ge=1, description="Reciprocal-rank-fusion constant (hybrid search).")


class ServeConfig(_Section):
    host: str = Field("127.0.0.1", description="Bind address (loopback unless told otherwise).")
    port: int = Field(8000, ge=1, le=65535)
    api_key_env: str = Field(
        "CTXVEC_API_KEY", description="Environment variable holding the API key (unset: open)."
    )
    reload_seconds: float = Field(
        5.0, gt=0, description="How often the server checks whether the champion moved."
    )
    max_batch: int = Field(64, ge=1, description="Queries encoded together under load.")
    max_text_chars: int = Field(20_000, ge=1, description="Longest text a request may send.")
    max_k: int = Field(1000, ge=1)


class GateConfig(_Section):
    """When a challenger may replace the champion (both measured on the same held-out data)."""

    new_metric: str = Field(
        "auto", description="The new-domain metric that must improve: new.mlm_loss (needs an MLM "
        "head), new.halves_mrr, or auto (mlm_loss when the model has an MLM head).",
    )
    min_improvement: float = Field(
        0.0, ge=0, description="Relative improvement new_metric must exceed (0: any).",
    )
    tolerance: float = Field(
        0.02, ge=0, description="Largest relative worsening allowed on any old-domain metric "
        "(old.*, and the recipe's evaluations: sts_spearman, retrieval_*, wic_accuracy).",
    )


class ContinualConfig(_Section):
    """``ctxvec update``: train the champion further on the documents it has not seen."""

    parent: str = Field(
        "champion", description="Alias (or version number) of registry.model_name to start from.",
    )
    replay_ratio: float = Field(
        0.5, ge=0, lt=1, description="Share of each MLM batch drawn from earlier documents.",
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


def _parse_value(raw: str) -> Any:
    """Parse an override value as YAML so that numbers, booleans, null and lists work."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override to a nested dict in place; a numeric segment indexes a
    list (``train.objectives.0.weight=0.5``)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.path=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {assignment!r} has an empty key segment")
    node: Any = tree
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {assignment!r}: {where} is not an item of the list")
            node = node[int(part)]
            continue
        child = node.setdefault(part, {})
        if not isinstance(child, dict | list):
            raise ConfigError(f"override {assignment!r}: {where} is a value, not a section")
        node = child
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"override {assignment!r}: {key} is not an item of the list")
        node[int(last)] = _parse_value(raw)
    else:
        node[last] = _parse_value(raw)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see configs/tiny.yaml for every key)"
        lines.append(f"  {key}: {msg}")
    return "invalid config:\n" + "\n".join(lines)


def _resolve_paths(tree: dict[str, Any], base: Path) -> None:
    """Make data paths in a recipe relative to the recipe's folder, not the caller's cwd."""
    ingest = tree.get("ingest")
    if isinstance(ingest, dict) and isinstance(ingest.get("sources"), list):
        ingest["sources"] = [_rebase(s, base) for s in ingest["sources"]]
    evaluate = tree.get("evaluate")
    if isinstance(evaluate, dict):
        for key in ("sts", "retrieval", "wic"):
            if isinstance(evaluate.get(key), str):
                evaluate[key] = _rebase(evaluate[key], base)
    train = tree.get("train")
    if isinstance(train, dict) and isinstance(train.get("objectives"), list):
        for obj in train["objectives"]:
            data = obj.get("data") if isinstance(obj, dict) else None
            if isinstance(data, dict) and isinstance(data.get("path"), str):
                data["path"] = _rebase(data["path"], base)


def _is_path_key(key: str) -> bool:
    return (key in ("ingest.sources", "evaluate.sts", "evaluate.retrieval", "evaluate.wic")
            or (key.startswith("train.objectives.") and key.endswith(".data.path")))


def _rebase_value(raw: str, base: Path) -> str:
    """Rebase the path(s) in an override's raw YAML value (a path or a list of paths)."""
    value = _parse_value(raw)
    if isinstance(value, list):
        return json.dumps([_rebase(v, base) if isinstance(v, str) else v for v in value])
    return _rebase(value, base) if isinstance(value, str) else raw


def _rebase(path: str, base: Path) -> str:
    if not isinstance(path, str) or "://" in path or Path(path).is_absolute():
        return path
    return str((base / path).resolve())


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> CtxvecConfig:
    """Load a recipe, apply ``--set`` overrides, and validate the whole tree.

    Relative data paths in the recipe are resolved against the recipe's folder (so a recipe works
    from any cwd); paths given through overrides are resolved against the cwd.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: a recipe must be a mapping of sections, got {type(loaded)}")
        tree = loaded
        _resolve_paths(tree, p.parent.resolve())
    for assignment in overrides or []:
        # a path given on the command line is relative to the cwd, not to the recipe
        key, _, value = assignment.partition("=")
        if _is_path_key(key.strip()) and value and "://" not in value:
            value = _rebase_value(value, Path.cwd())
            assignment = f"{key}={value}"
        apply_override(tree, assignment)
    try:
        return CtxvecConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(e)) from None


def config_to_yaml(cfg: CtxvecConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flatten(cfg: CtxvecConfig) -> dict[str, Any]:
    """``{"train.lr": 5e-4, ...}``: the form MLflow params and manifests want."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = node

    walk("", cfg.model_dump(mode="json"))
    return out
