from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ctxvec.config import (
    MODEL_SIZES,
    ConfigError,
    CtxvecConfig,
    apply_override,
    flatten,
    load_config,
)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


# Recipes name their larger data relative to themselves, in ../shared/data beside the checkout.
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()  # as the loader resolves paths


def recipe_data(cfg: CtxvecConfig) -> tuple[list[str], list[str]]:
    """(ingest sources, other data paths: evaluations and objective data) a recipe names."""
    evals = [cfg.evaluate.sts, cfg.evaluate.retrieval, cfg.evaluate.wic]
    return list(cfg.ingest.sources), [p for p in evals + [o.data.path for o in
                                                          cfg.train.objectives] if p]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_recipe_loads(path):
    """Loading validates the recipe; whether its data is there is a matter for the run (ingest
    fails on a missing source, an evaluation is skipped). Every data path resolves against the
    recipe's folder: into the repository, where it must find the data, or into ../shared/data
    beside the checkout, where it must find it if that folder is there (CI has it)."""
    from ctxvec.ingest.sources import expand_sources

    cfg = load_config(path)
    assert isinstance(cfg, CtxvecConfig)
    sources, others = recipe_data(cfg)
    for p in [*sources, *others]:
        where = Path(p)
        assert where.is_absolute(), p
        inside = where.is_relative_to(REPO)
        assert inside or where.is_relative_to(SHARED_DATA), f"{p}: outside repo and shared data"
        if inside or SHARED_DATA.is_dir():  # recipe-relative paths resolve to real data
            assert expand_sources([p]) if p in sources else where.exists(), p


def test_tiny_lists_every_key():
    """configs/tiny.yaml is documented as the reference of every key: keep it complete."""
    import yaml

    listed = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    flat_listed = set()

    def walk(prefix, node):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                walk(key, v)
            else:
                flat_listed.add(key)

    walk("", listed)
    assert set(flatten(CtxvecConfig())) == flat_listed


def test_overrides_parse_yaml_values():
    cfg = load_config(REPO / "configs" / "tiny.yaml",
                      ["train.steps=3", "train.lr=1e-4", "registry.promote=false",
                       "evaluate.sts=null"])
    assert cfg.train.steps == 3 and cfg.train.lr == pytest.approx(1e-4)
    # false, from recipes written before the promotion gate, means never
    assert cfg.registry.promote == "never" and cfg.evaluate.sts is None


def test_recipe_paths_resolve_against_the_recipe_not_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO / "configs" / "tiny.yaml")
    assert Path(cfg.ingest.sources[0]) == REPO / "data" / "demo" / "wiki_00.gz"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"train\.stpes: unknown key"):
        load_config(REPO / "configs" / "tiny.yaml", ["train.stpes=3"])


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"train\.steps"):
        load_config(None, ["train.steps=-1"])
    with pytest.raises(ConfigError, match=r"tokenizer\.kind"):
        load_config(None, ["tokenizer.kind=sentencepiece"])


def test_cross_field_check_names_both_keys():
    with pytest.raises(ConfigError, match="hidden_size.*num_heads"):
        load_config(None, ["model.hidden_size=30", "model.num_heads=4"])
    with pytest.raises(ConfigError, match="tokenizer.source=model"):
        load_config(None, ["tokenizer.source=model"])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_override({}, "train.steps")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_override({"train": 3}, "train.steps=2")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_config_is_frozen():
    cfg = CtxvecConfig()
    with pytest.raises(ValidationError):
        cfg.train.steps = 5  # type: ignore[misc]


def test_overrides_index_lists_and_rebase_paths_on_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO / "configs" / "finetune-stsb.yaml",
                      ["train.objectives.0.scale=10", "train.objectives.0.data.path=train.tsv"])
    assert cfg.train.objectives[0].scale == 10.0
    assert cfg.train.objectives[0].data.path == str(tmp_path / "train.tsv")
    recipe = load_config(REPO / "configs" / "finetune-stsb.yaml")  # recipe-relative otherwise
    assert recipe.train.objectives[0].data.path == str(
        (REPO / "../shared/data/stsbenchmark/sts-train.csv").resolve())
    with pytest.raises(ConfigError, match="not an item of the list"):
        load_config(REPO / "configs" / "finetune-stsb.yaml", ["train.objectives.3.scale=1"])
    with pytest.raises(ConfigError, match=r"train\.objectives\.0\.name"):
        load_config(None, ["train.objectives=[{name: nope}]"])


def test_continual_parent_takes_a_version_number():
    # YAML reads `3` as an integer; the field means version 3
    cfg = load_config(REPO / "configs" / "tiny.yaml", ["continual.parent=3"])
    assert cfg.continual.parent == "3"
    assert load_config(REPO / "configs" / "tiny.yaml").continual.parent == "champion"


PAIRS = "data: {source: pairs, path: x.jsonl}"


@pytest.mark.parametrize(("objective", "key", "message"), [
    (f"{{name: mnrl, mask_prob: 0.5, {PAIRS}}}", "mask_prob",
     "a key of mlm, not of mnrl: remove it; mnrl takes .*scale, symmetric"),
    ("{name: mlm, scale: 5}", "scale",
     "a key of mnrl and simcse and cosent and cached_mnrl, not of mlm"),
    ("{name: simcse, num_labels: 3}", "num_labels", "a key of classification, not of simcse"),
    (f"{{name: mnrl, scal: 5, {PAIRS}}}", "scal", "not a key of mnrl \\(check the spelling\\)"),
])
def test_an_objective_refuses_keys_of_other_objectives(objective, key, message):
    with pytest.raises(ConfigError, match=rf"train\.objectives\.0\.{key}: {message}"):
        load_config(None, [f"train.objectives=[{objective}]"])


def test_an_objective_refuses_a_data_source_it_cannot_read():
    with pytest.raises(ConfigError, match=r"train\.objectives\.1: data\.source=pairs does not "
                                          r"fit objective cosent: use data\.source=sts"):
        load_config(None, [f"train.objectives=[{{name: mlm}}, {{name: cosent, {PAIRS}}}]"])
    with pytest.raises(ConfigError, match="does not fit objective classification"):
        load_config(None, ["train.objectives=[{name: classification}]"])  # default: corpus
    with pytest.raises(ConfigError, match=r"train\.objectives\.0\.name: missing; choose one of "
                                          r"mlm, mnrl, simcse, cosent, classification"):
        load_config(None, ["train.objectives=[{weight: 2}]"])


def test_each_objective_carries_only_its_own_keys():
    cfg = load_config(REPO / "configs" / "adapt-minilm.yaml",
                      ["train.objectives.0.mask_prob=0.3", "train.objectives.1.scale=10"])
    mlm, simcse = cfg.train.objectives
    assert (mlm.name, mlm.mask_prob, mlm.whole_word) == ("mlm", 0.3, True)
    assert (simcse.name, simcse.scale) == ("simcse", 10.0)
    assert not hasattr(mlm, "scale") and not hasattr(simcse, "mask_prob")
    dumped = flatten(cfg)["train.objectives"]  # manifests and MLflow show only real keys
    assert "mask_prob" in dumped[0] and "scale" not in dumped[0] and "scale" in dumped[1]
    assert load_config(None, [f"train.objectives=[{{name: mnrl, symmetric: true, {PAIRS}}}]"]
                       ).train.objectives[0].symmetric is True


def test_a_model_size_is_a_preset_that_refuses_other_dimensions():
    tiny = load_config(None, ["model.size=tiny"]).model
    assert tiny.dims() == MODEL_SIZES["tiny"] and tiny.hidden_size == 128  # what is built
    with pytest.raises(ConfigError, match=r"model\.hidden_size=999 conflicts with model\.size="
                                          r"tiny \(whose hidden_size is 128\): remove "
                                          r"model\.hidden_size, or set model\.size=custom"):
        load_config(None, ["model.size=tiny", "model.hidden_size=999"])
    with pytest.raises(ConfigError, match=r"model\.num_heads=16 conflicts with model\.size=base"):
        load_config(None, ["model.size=base", "model.num_heads=16"])
    # repeating a preset's own value is fine (the old unused default hidden_size refused this)
    base = load_config(None, ["model.size=base", "model.num_heads=12"]).model
    assert base.dims() == MODEL_SIZES["base"]
    assert load_config(REPO / "configs" / "scratch-mini.yaml").model.dims() == MODEL_SIZES["mini"]


def test_a_custom_size_validates_what_it_uses():
    custom = load_config(None, ["model.hidden_size=96", "model.num_heads=3"]).model
    assert custom.size == "custom" and custom.dims()["hidden_size"] == 96
    with pytest.raises(ConfigError, match=r"model: model\.hidden_size \(30\) must be divisible "
                                          r"by model\.num_heads \(4\)"):
        load_config(None, ["model.size=custom", "model.hidden_size=30"])
