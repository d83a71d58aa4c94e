"""Reference parity: each sentence objective's loss equals the sentence-transformers loss of the
same name on the same texts, to 1e-5 (as minGPT checks its GPT against Hugging Face's).

One real model serves both sides: all-MiniLM-L6-v2 loaded by sentence-transformers, whose
``auto_model`` (a ``BertModel``) is also the ``model`` the ctxvec objective receives. Each side
tokenizes the texts with the model's own tokenizer (ctxvec through ``load_tokenizer``,
sentence-transformers through ``SentenceTransformer.tokenize``), pools by the mean and computes
its loss, so the check covers tokenization, pooling, normalisation and the loss itself.

The pairs of names:

- ``mnrl``            = ``MultipleNegativesRankingLoss`` (same default scale, 20; checked at 20
  and 1);
- ``mnrl`` symmetric  = ``MultipleNegativesSymmetricRankingLoss`` (the mean of both directions);
- ``mnrl`` with hard negatives = ``MultipleNegativesRankingLoss`` on (anchor, positive, negative
  columns): every negative of every example is a candidate for every anchor; ctxvec pools a
  variable number per example, which equals sentence-transformers' columns when the pooled
  negatives are the same texts;
- ``cached_mnrl``     = ``mnrl`` (loss and encoder gradients, at the same batch, in chunks of 2)
  and ``CachedMultipleNegativesRankingLoss``; with dropout on and the batch in one chunk it equals
  ``mnrl`` under the same seed too (the replayed chunk draws the same dropout masks);
- ``cosent``          = ``CoSENTLoss`` (same default scale, 20; checked at 20 and 1);
- ``simcse``          = ``MultipleNegativesRankingLoss`` on (s, s) pairs: sentence-transformers
  has no loss named SimCSE; its unsupervised SimCSE recipe is MNRL over a sentence paired with
  itself, the two dropout views coming from two forward passes. With dropout on and the same
  seed, both sides draw the same dropout masks in the same order, so the parity is exact;
- ``distill`` (continual) = ``EmbedDistillLoss(distance_metric="cosine")``: 1 - cos(student,
  teacher), averaged.

No parity by design: ``mlm`` (sentence-transformers has no masked-LM loss) and
``classification`` (``SoftmaxLoss`` classifies a *pair* from (u, v, |u - v|); ctxvec's head
classifies one text from its pooled vector).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctxvec.model.encoder import load_tokenizer
from ctxvec.model.refs import minilm_dir
from ctxvec.train.objectives.cached_mnrl import CachedMultipleNegativesRanking
from ctxvec.train.objectives.cosent import CoSENT
from ctxvec.train.objectives.distill import EmbeddingDistillation
from ctxvec.train.objectives.mnrl import MultipleNegativesRanking
from ctxvec.train.objectives.sentences import SentenceView
from ctxvec.train.objectives.simcse import SimCSE

st_losses = pytest.importorskip("sentence_transformers.losses")

TOL = 1e-5
ANCHORS = ["A man is playing a guitar.", "The cat sleeps on the sofa.",
           "Stocks fell sharply on Monday.", "She is cooking pasta for dinner.",
           "The train was late again.", "Children are playing in the park."]
POSITIVES = ["Someone plays an instrument.", "A kitten is napping on the couch.",
             "Markets dropped at the start of the week.", "A woman prepares a meal.",
             "The railway service was delayed.", "Kids play outside on the grass."]
SCORES = [4.8, 4.2, 3.9, 2.5, 1.0, 0.4]  # graded, as STS gives them
# aligned pairs make a small loss at scale 20; misaligned ones (each anchor with its neighbour's
# positive) a large one: parity is checked at both ends, and at another scale
PAIRINGS = {"aligned": POSITIVES, "misaligned": POSITIVES[1:] + POSITIVES[:1]}
NEGATIVES = ["A man is sleeping in a hammock.", "The dog barks at the mailman.",
             "Bond yields rose on Friday.", "He is washing the dishes after lunch.",
             "The flight left on time.", "Adults are working in the office."]
NEGATIVES_2 = ["Nobody is making music.", "The cat hunts a mouse in the garden.",
               "The shop sells fresh bread.", "She orders a pizza online.",
               "The bus was early today.", "The park is empty at night."]


@pytest.fixture(scope="module")
def st_model():
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    model = SentenceTransformer(str(minilm_dir()), device="cpu")
    pooling = model[1].get_pooling_mode_str() if hasattr(model[1], "get_pooling_mode_str") \
        else "mean"
    assert pooling == "mean"  # ctxvec's SentenceView pools the same way below
    return model


@pytest.fixture(scope="module")
def view():
    return SentenceView(load_tokenizer(minilm_dir()), max_length=128, pooling="mean")


def features(st_model, *columns: list[str]) -> list[dict[str, torch.Tensor]]:
    return [st_model.tokenize(list(c)) for c in columns]


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert torch.isfinite(ours) and ours.item() > 0
    assert abs(ours.item() - theirs.item()) <= TOL, (ours.item(), theirs.item())


@pytest.mark.parametrize("symmetric", [False, True], ids=["one-way", "symmetric"])
@pytest.mark.parametrize("scale", [20.0, 1.0])
@pytest.mark.parametrize("pairing", list(PAIRINGS))
def test_mnrl_equals_multiple_negatives_ranking_loss(st_model, view, pairing, scale, symmetric):
    st_model.eval()
    positives = PAIRINGS[pairing]
    ours = MultipleNegativesRanking(view, scale=scale, symmetric=symmetric)
    theirs = (st_losses.MultipleNegativesSymmetricRankingLoss if symmetric
              else st_losses.MultipleNegativesRankingLoss)(st_model, scale=scale)
    with torch.no_grad():
        got = ours.loss(st_model[0].auto_model,
                        ours.collate(list(zip(ANCHORS, positives, strict=True))),
                        torch.Generator())
        want = theirs(features(st_model, ANCHORS, positives), None)
    close(got, want)


@pytest.mark.parametrize("scale", [20.0, 1.0])
@pytest.mark.parametrize("pairing", list(PAIRINGS))
def test_cosent_equals_cosent_loss(st_model, view, pairing, scale):
    st_model.eval()
    positives = PAIRINGS[pairing]
    ours = CoSENT(view, scale=scale)
    theirs = st_losses.CoSENTLoss(st_model, scale=scale)
    with torch.no_grad():
        got = ours.loss(st_model[0].auto_model,
                        ours.collate(list(zip(ANCHORS, positives, SCORES, strict=True))),
                        torch.Generator())
        want = theirs(features(st_model, ANCHORS, positives), torch.tensor(SCORES))
    close(got, want)


def test_parity_holds_for_the_gradients_too(st_model, view):
    """Same loss, same graph: the encoder's gradients agree as well (CoSENT, the one loss whose
    masking differs in form: ctxvec drops the unordered pairs, sentence-transformers adds -1e12)."""
    st_model.eval()
    bert = st_model[0].auto_model
    weight = bert.embeddings.word_embeddings.weight
    ours = CoSENT(view)
    bert.zero_grad()
    ours.loss(bert, ours.collate(list(zip(ANCHORS, POSITIVES, SCORES, strict=True))),
              torch.Generator()).backward()
    got = weight.grad.clone()
    bert.zero_grad()
    st_losses.CoSENTLoss(st_model)(features(st_model, ANCHORS, POSITIVES),
                                   torch.tensor(SCORES)).backward()
    want = weight.grad.clone()
    bert.zero_grad()
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, atol=TOL, rtol=1e-4)


def test_simcse_equals_mnrl_on_a_sentence_paired_with_itself(st_model, view):
    """Dropout on: both sides must draw the same two dropout masks from the same seed."""
    st_model.train()
    try:
        # scale 1: at 20 two dropout views of distinct sentences leave a loss near 1e-7
        ours = SimCSE(view, scale=1.0)
        theirs = st_losses.MultipleNegativesRankingLoss(st_model, scale=1.0)
        with torch.no_grad():
            torch.manual_seed(7)
            got = ours.loss(st_model[0].auto_model, ours.collate(ANCHORS), torch.Generator())
            torch.manual_seed(7)
            want = theirs(features(st_model, ANCHORS, ANCHORS), None)
            torch.manual_seed(8)
            other = ours.loss(st_model[0].auto_model, ours.collate(ANCHORS), torch.Generator())
    finally:
        st_model.eval()
    close(got, want)
    assert abs(other.item() - got.item()) > TOL  # dropout really is on: another seed differs


def test_distill_equals_embed_distill_loss_with_cosine(st_model, view):
    loss_cls = getattr(st_losses, "EmbedDistillLoss", None)
    if loss_cls is None:
        pytest.skip("this sentence-transformers has no EmbedDistillLoss (added in 5.x)")
    st_model.eval()
    teacher = np.random.default_rng(0).normal(size=(len(ANCHORS), 384)).astype(np.float32)
    ours = EmbeddingDistillation(view)
    theirs = loss_cls(st_model, distance_metric="cosine")
    with torch.no_grad():
        got = ours.loss(st_model[0].auto_model,
                        ours.collate(list(zip(ANCHORS, teacher, strict=True))), torch.Generator())
        want = theirs(features(st_model, ANCHORS), torch.from_numpy(teacher))
    close(got, want)


@pytest.mark.parametrize("symmetric", [False, True], ids=["one-way", "symmetric"])
@pytest.mark.parametrize("scale", [20.0, 1.0])
@pytest.mark.parametrize("columns", [1, 2], ids=["1-negative", "2-negatives"])
def test_mnrl_with_hard_negatives_equals_multiple_negatives_ranking_loss(st_model, view, columns,
                                                                         scale, symmetric):
    st_model.eval()
    negatives = [NEGATIVES, NEGATIVES_2][:columns]
    ours = MultipleNegativesRanking(view, scale=scale, symmetric=symmetric)
    theirs = (st_losses.MultipleNegativesSymmetricRankingLoss if symmetric
              else st_losses.MultipleNegativesRankingLoss)(st_model, scale=scale)
    with torch.no_grad():
        got = ours.loss(st_model[0].auto_model,
                        ours.collate(list(zip(ANCHORS, POSITIVES, *negatives, strict=True))),
                        torch.Generator())
        want = theirs(features(st_model, ANCHORS, POSITIVES, *negatives), None)
        plain = ours.loss(st_model[0].auto_model,
                          ours.collate(list(zip(ANCHORS, POSITIVES, strict=True))),
                          torch.Generator())
    close(got, want)
    assert got.item() > plain.item()  # the negatives are really in the candidates


def test_mnrl_pools_a_variable_number_of_negatives(st_model, view):
    """Examples with 3, 0, 2, 1, 0 and 0 negatives: the six pooled negatives are candidates for
    every anchor, as one column of six is in sentence-transformers."""
    st_model.eval()
    n = NEGATIVES
    ragged = [(ANCHORS[0], POSITIVES[0], n[0], n[1], n[2]), (ANCHORS[1], POSITIVES[1]),
              (ANCHORS[2], POSITIVES[2], n[3], n[4]), (ANCHORS[3], POSITIVES[3], n[5]),
              (ANCHORS[4], POSITIVES[4]), (ANCHORS[5], POSITIVES[5])]
    ours = MultipleNegativesRanking(view)
    with torch.no_grad():
        got = ours.loss(st_model[0].auto_model, ours.collate(ragged), torch.Generator())
        want = st_losses.MultipleNegativesRankingLoss(st_model)(
            features(st_model, ANCHORS, POSITIVES, NEGATIVES), None)
    close(got, want)


def _loss_and_grad(objective, bert, examples):
    weight = bert.embeddings.word_embeddings.weight
    bert.zero_grad()
    loss = objective.loss(bert, objective.collate(examples), torch.Generator())
    (0.5 * loss).backward()  # a factor, as the task weight and grad_accum apply in the loop
    grad = weight.grad.clone()
    bert.zero_grad()
    return loss.detach(), grad


@pytest.mark.parametrize("symmetric", [False, True], ids=["one-way", "symmetric"])
def test_cached_mnrl_equals_mnrl_in_loss_and_gradients(st_model, view, symmetric):
    st_model.eval()
    bert = st_model[0].auto_model
    examples = list(zip(ANCHORS, POSITIVES, NEGATIVES, strict=True))
    want, want_grad = _loss_and_grad(MultipleNegativesRanking(view, symmetric=symmetric), bert,
                                     examples)
    got, got_grad = _loss_and_grad(
        CachedMultipleNegativesRanking(view, symmetric=symmetric, mini_batch_size=2), bert,
        examples)
    close(got, want)
    assert want_grad.abs().max() > 0
    torch.testing.assert_close(got_grad, want_grad, atol=TOL, rtol=1e-4)


def test_cached_mnrl_equals_cached_multiple_negatives_ranking_loss(st_model, view):
    st_model.eval()
    bert = st_model[0].auto_model
    examples = list(zip(ANCHORS, POSITIVES, NEGATIVES, strict=True))
    got, got_grad = _loss_and_grad(CachedMultipleNegativesRanking(view, mini_batch_size=2),
                                   bert, examples)
    theirs = st_losses.CachedMultipleNegativesRankingLoss(st_model, mini_batch_size=2)
    want = theirs(features(st_model, ANCHORS, POSITIVES, NEGATIVES), None)
    (0.5 * want).backward()
    want_grad = bert.embeddings.word_embeddings.weight.grad.clone()
    bert.zero_grad()
    close(got, want.detach())
    torch.testing.assert_close(got_grad, want_grad, atol=TOL, rtol=1e-4)


def test_cached_mnrl_replays_the_dropout_masks(st_model, view):
    """Dropout on, the batch in one chunk: the chunk that runs again with a graph must draw the
    masks the first pass drew, or the gradient would belong to another loss."""
    bert = st_model[0].auto_model
    examples = list(zip(ANCHORS, POSITIVES, NEGATIVES, strict=True))
    st_model.train()
    try:
        torch.manual_seed(11)
        want, want_grad = _loss_and_grad(MultipleNegativesRanking(view, scale=1.0), bert,
                                         examples)
        torch.manual_seed(11)
        got, got_grad = _loss_and_grad(
            CachedMultipleNegativesRanking(view, scale=1.0, mini_batch_size=64), bert, examples)
    finally:
        st_model.eval()
    close(got, want)
    torch.testing.assert_close(got_grad, want_grad, atol=TOL, rtol=1e-4)


def test_cached_mnrl_runs_the_encoder_on_mini_batches_only(st_model, view):
    """The memory claim: every forward that keeps a graph sees at most mini_batch_size texts."""
    st_model.eval()
    bert = st_model[0].auto_model
    calls: list[tuple[int, bool]] = []
    handle = bert.register_forward_hook(
        lambda m, args, kwargs, out: calls.append((kwargs["input_ids"].shape[0],
                                                   torch.is_grad_enabled())), with_kwargs=True)
    try:
        _loss_and_grad(CachedMultipleNegativesRanking(view, mini_batch_size=2), bert,
                       list(zip(ANCHORS, POSITIVES, NEGATIVES, strict=True)))
    finally:
        handle.remove()
    with_graph = [n for n, grad in calls if grad]
    assert len(with_graph) == 9 and max(with_graph) == 2  # 18 texts, 2 at a time
    assert all(n <= 2 for n, _ in calls)
