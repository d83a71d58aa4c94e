"""train.anchor: L2-SP keeps the weights near the start, self-distillation keeps the sentence
vectors of the batch's anchors near the starting model's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctxvec.config import AnchorConfig, ConfigError, TrainConfig
from ctxvec.train.anchor import anchor_parts, anchor_texts
from ctxvec.train.datasets import Sampler
from ctxvec.train.loop import train
from ctxvec.train.multitask import MultiTask, Task
from ctxvec.train.objectives.sentences import SentenceView
from tests.unit.test_objectives import objective, sentence, tiny_bert
from tests.unit.test_objectives import tokenizer as tokenizer  # noqa: F401  (the fixture)


def _drift(model, start: dict[str, torch.Tensor]) -> float:
    return sum(float((p.detach() - start[n]).pow(2).sum())
               for n, p in model.named_parameters()) ** 0.5


def _run(tokenizer, kind: str, weight: float | None, steps: int = 8):
    rng = np.random.default_rng(5)
    examples = [(sentence(rng, int(t)), sentence(rng, int(t))) for t in rng.integers(0, 6, 48)]
    model = tiny_bert(tokenizer)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    task = Task(objective("mnrl", tokenizer), examples, 1.0, 8, Sampler(len(examples), 0))
    extra, penalties = anchor_parts(AnchorConfig(kind=kind, weight=weight), model,
                                    SentenceView(tokenizer, 32), [task])
    result = train(model, MultiTask([task, *extra], penalties),
                   TrainConfig(steps=steps, lr=1e-2, warmup_steps=0, log_every=1))
    return model, start, result, extra


def test_l2sp_holds_the_weights_near_the_start(tokenizer):
    free, start, _, _ = _run(tokenizer, "none", None)
    held, start_held, result, _ = _run(tokenizer, "l2sp", 10.0)
    assert all(torch.equal(start[n], start_held[n]) for n in start)  # the same start
    assert _drift(held, start_held) < 0.5 * _drift(free, start)
    assert result.history[0]["loss/anchor_l2sp"] == 0.0  # nothing has moved at step 0
    assert result.history[-1]["loss/anchor_l2sp"] > 0.0


def test_distill_is_zero_at_the_start_and_follows_the_batch_anchors(tokenizer):
    _, _, result, extra = _run(tokenizer, "distill", None, steps=6)
    values = [row["loss/anchor_distill"] for row in result.history]
    assert abs(values[0]) < 1e-6  # the student is the start, without dropout: identical vectors
    assert all(v > 1e-6 for v in values[2:])  # and drifts once it trains
    twin = extra[0].sampler
    assert twin.consumed == 6 * 8  # it drew one batch a step, the objective's batch


def test_the_distill_twin_draws_the_objectives_examples():
    examples = [(f"anchor {i}", f"positive {i}") for i in range(10)]
    texts = anchor_texts(examples)
    a, b = Sampler(10, 3), Sampler(10, 3)
    for _ in range(4):
        assert [examples[i][0] for i in a.take(4)] == [texts[i] for i in b.take(4)]
    assert anchor_texts(["one", "two"]) == ["one", "two"]
    assert anchor_texts(np.zeros((3, 8), np.int32)) is None  # mlm's packed rows: no texts


def test_distill_needs_a_sentence_objective(tokenizer):
    rows = np.zeros((4, 16), np.int32)
    task = Task(objective("mlm", tokenizer), rows, 1.0, 2, Sampler(4, 0))
    with pytest.raises(ConfigError, match="anchor.kind=l2sp"):
        anchor_parts(AnchorConfig(kind="distill"), tiny_bert(tokenizer),
                     SentenceView(tokenizer, 32), [task])


def test_anchor_defaults():
    assert TrainConfig().anchor.kind == "none"
    assert AnchorConfig(kind="l2sp").strength == 0.01
    assert AnchorConfig(kind="distill").strength == 1.0
    assert AnchorConfig(kind="l2sp", weight=3.0).strength == 3.0
