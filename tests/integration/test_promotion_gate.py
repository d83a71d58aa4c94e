"""The pipeline's promote stage gates the champion: a run's new version replaces it only if it is
no worse on the run's own evaluation (``ctxvec.stages.promotion``).

``ctxvec run --config configs/tiny.yaml`` after the demo used to make the tiny noise model the
champion, and the next query returned unrelated documents. Here two tiny real encoders play the
two models on a small STS file: one with random weights (its vectors follow the words, Spearman
about 0.55) and one whose word embeddings are all the same vector (a noise model: about 0.02),
registered in a real MLflow registry on SQLite."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import tiny_bert

# (sentence 1, sentence 2, gold similarity 0-5): the gold follows the words the two share
PAIRS = [
    ("a man is playing a guitar on the stage", "a man is playing a guitar on the stage", 5.0),
    ("a woman is slicing an onion in the kitchen", "a woman is slicing an onion", 4.6),
    ("the dog runs across the green field", "the dog runs across the field", 4.6),
    ("a child is riding a horse on the beach", "a child is riding a horse", 4.2),
    ("two men are fighting in the street", "two men are talking in the street", 3.4),
    ("the cat sleeps on the warm sofa", "the cat sleeps on the sofa today", 4.0),
    ("a plane is taking off from the airport", "a plane is landing at the airport", 3.0),
    ("the river flows through the old town", "the old town has a river", 3.0),
    ("a man is cutting bread with a knife", "a woman is cutting paper with scissors", 1.6),
    ("the children play football in the park", "the children play in the park", 3.8),
    ("a bird sings in the tall tree", "the stock market fell sharply today", 0.0),
    ("the train arrives at the station at noon", "a woman is slicing an onion", 0.0),
    ("a man is playing a guitar on the stage", "the cat sleeps on the sofa today", 0.0),
    ("the dog runs across the green field", "a plane is landing at the airport", 0.0),
    ("the government passed a new law", "a child is riding a horse", 0.0),
    ("a woman plays the piano at the concert", "a man plays the piano at the concert", 3.6),
    ("the sun rises over the mountains", "the sun sets over the sea", 2.0),
    ("people are walking in the rain", "the river flows through the old town", 0.2),
]


def write_sts(path: Path) -> Path:
    path.write_text("".join(f"test\tpairs\t2024\t{i:04d}\t{s:.3f}\t{a}\t{b}\n"
                            for i, (a, b, s) in enumerate(PAIRS)), encoding="utf-8")
    return path


def noise_model(good: Path, folder: Path) -> Path:
    """``good`` with every word embedding replaced by the first: its vectors no longer depend on
    the words."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(good, folder)
    weights = load_file(folder / "model.safetensors")
    for k, w in weights.items():
        if "word_embeddings" in k:
            weights[k] = w[:1].repeat(w.shape[0], 1).contiguous()
    save_file(weights, folder / "model.safetensors")
    return folder


class Gated:
    """A workspace with two registered, indexed versions: 1 (the good encoder) and 2 (noise)."""

    def __init__(self, root: Path):
        from ctxvec.artifacts import IndexArtifact, TrainedModel
        from ctxvec.evaluate.run import run_evaluate
        from ctxvec.registry import Registry
        from ctxvec.workspace import Workspace

        self.ws = Workspace(root / "home").ensure()
        self.sts = write_sts(root / "sts.tsv")
        self.cfg = self.config()
        self.registry = Registry(self.ws)
        sentences = [s for a, b, _ in PAIRS for s in (a, b)]
        good = tiny_bert(root / "good", sentences)
        self.regs, self.trained, self.index = {}, {}, {}
        for name, model in (("good", good), ("noise", noise_model(good, root / "noise"))):
            run_dir = self.ws.runs / name
            run_dir.mkdir(parents=True)
            trained = TrainedModel(str(run_dir), str(model), 1, 1, None, None, None)
            reg = self.registry.register(self.cfg, None, None, trained,
                                         run_evaluate(self.cfg, self.ws, trained))
            index_dir = self.ws.indexes / f"v{reg.version}"
            index_dir.mkdir(parents=True)  # committed (a manifest) is all promote asks of it
            (index_dir / "manifest.json").write_text(json.dumps({"stage": "index"}))
            self.regs[name], self.trained[name] = reg, trained
            self.index[name] = IndexArtifact(str(index_dir), "Flat", 1, 32, 1.0, reg.version)
            self.registry.attach_index(reg.name, reg.version, self.index[name])

    def config(self, *overrides: str):
        from ctxvec.config import load_config

        return load_config(None, [f"evaluate.sts={self.sts}", "train.device=cpu", *overrides])

    def promote(self, name: str, *overrides: str) -> dict:
        """The pipeline's promote stage for version ``name`` under the recipe's evaluation."""
        from ctxvec.evaluate.run import run_evaluate
        from ctxvec.stages.pipeline import promote

        cfg = self.config(*overrides)
        report = run_evaluate(cfg, self.ws, self.trained[name])  # the evaluate stage's report
        return promote(cfg, self.ws, self.regs[name], self.index[name], self.trained[name],
                       report)

    def champion(self) -> str | None:
        return self.registry.alias_version("ctxvec-encoder", "champion")

    def tags(self, name: str) -> dict[str, str]:
        from ctxvec.refs import ModelRef

        return self.registry.resolve(ModelRef.parse(self.regs[name].uri)).tags

    def crown(self, name: str) -> None:
        self.registry.promote("ctxvec-encoder", self.regs[name].version)


@pytest.fixture(scope="module")
def gated(tmp_path_factory) -> Gated:
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
            mp.delenv(key)
        yield Gated(tmp_path_factory.mktemp("gate"))


def test_the_first_champion_then_a_worse_model_does_not_replace_it(gated):
    from ctxvec.cli.pipeline import format_promotion
    from ctxvec.stages.report import gate_markdown

    assert gated.champion() is None  # the module's first test: no champion yet
    first = gated.promote("good", "evaluate.sts=/no/such/sts.tsv")  # nothing to beat
    assert first["decision"] == "promote" and "no champion yet" in first["reason"]
    assert gated.champion() == "1"
    out = gated.promote("noise")
    assert out["decision"] == "rejected" and gated.champion() == out["champion"] == "1"
    assert out["previous_champion"] is None
    sts = next(c for c in out["checks"] if c["metric"] == "sts_spearman")
    assert sts["champion"] > 0.4 > 0.1 > sts["challenger"] and not sts["passed"]
    assert "ctxvec models promote 2" in out["hint"]
    tags = gated.tags("noise")  # recorded with the version, as the continual gate does
    assert tags["gate.decision"] == "rejected" and tags["gate.champion_version"] == "1"
    assert "sts_spearman worsened" in tags["gate.reason"]
    assert "ctxvec models promote 2" in tags["gate.reason"]
    assert json.loads(tags["gate.checks"])[0]["metric"].startswith("sts_")
    assert float(tags["gate.champion.sts_spearman"]) == pytest.approx(sts["champion"], rel=1e-4)
    # the champion's figures are kept with the run: asked again, it is not evaluated again
    kept = Path(gated.trained["noise"].run_dir, "champion-evaluation.json")
    before = kept.stat().st_mtime_ns
    assert gated.promote("noise")["decision"] == "rejected"
    assert kept.stat().st_mtime_ns == before
    printed = "\n".join(format_promotion(out))
    assert "rejected: the champion stays version 1" in printed and "FAIL sts_spearman" in printed
    assert printed.endswith("(or run with --promote always)")
    # the run report (and its Prefect artifact) renders the same checks
    gate = {"promote": False, "reason": out["reason"], "checks": out["checks"]}
    assert "| sts_spearman | recipe |" in gate_markdown(gate, "2", "1")


def test_without_a_comparable_evaluation_the_champion_stays(gated):
    gated.crown("good")
    held = gated.promote("noise", "evaluate.sts=null")  # nothing to compare the two on
    assert held["decision"] == "held" and gated.champion() == "1"
    assert "no evaluation compares" in held["reason"]
    assert gated.tags("noise")["gate.decision"] == "held"
    # asked for, but its data is missing: a failed check, never a pass
    missing = gated.promote("noise", "evaluate.sts=/no/such/sts.tsv")
    assert missing["decision"] == "rejected" and gated.champion() == "1"
    assert [c["kind"] for c in missing["checks"]] == ["unmeasured"]
    never = gated.promote("noise", "registry.promote=never")
    assert never["decision"] == "held" and gated.champion() == "1"


def test_always_promotes_and_the_gate_promotes_a_better_model(gated):
    gated.crown("good")
    forced = gated.promote("noise", "registry.promote=always")
    assert forced["decision"] == "promote" and gated.champion() == "2"
    assert forced["previous_champion"] == "1"
    # the good model against the noise champion: the gate lets it through
    back = gated.promote("good")
    assert back["decision"] == "promote" and back["previous_champion"] == "2"
    assert gated.champion() == back["champion"] == "1"
    assert gated.tags("good")["gate.decision"] == "promote"
    # the champion itself, promoted again (a re-run): nothing to decide
    assert gated.promote("good")["reason"] == "version 1 is the champion already"
