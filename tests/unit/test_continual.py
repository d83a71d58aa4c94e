"""The continual update's parts: the gate's rules, the penalties against forgetting, replay,
distillation from stored vectors, and the label-free domain metrics (halves, pseudo-queries)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctxvec.config import ConfigError, GateConfig, load_config
from ctxvec.continual.evaluate import domain_metrics, domain_queries, halves_mrr
from ctxvec.continual.gate import decide
from ctxvec.continual.plan import Domains
from ctxvec.continual.regularizers import EWC, L2SP, fisher_diagonal
from ctxvec.continual.replay import replay_rows
from ctxvec.evaluate.pseudo import pseudo_metrics
from ctxvec.evaluate.retrieval import NDCG_K, exact_search
from ctxvec.model.encoder import Encoder
from tests.adapt_corpus import documents
from tests.helpers import TINY, tiny_bert

SENTENCES = ["the river bank was flooded after the storm",
             "she deposited the cheque at the bank on monday",
             "a saw cuts wood", "I saw a bird in the garden"] * 5


def test_gate_promotes_only_if_new_improves_and_old_holds():
    champion = {"new.mlm_loss": 4.0, "old.mlm_loss": 3.0, "sts_spearman": 0.80}
    gate = GateConfig(tolerance=0.02)
    ok = decide(gate, champion, {"new.mlm_loss": 3.5, "old.mlm_loss": 3.05, "sts_spearman": 0.79})
    assert ok["promote"] and ok["new_metric"] == "new.mlm_loss"  # auto: MLM loss when present
    # old loss up 5% (> 2%): rejected, and the reason names the metric and its numbers
    bad = decide(gate, champion, {"new.mlm_loss": 3.5, "old.mlm_loss": 3.15,
                                  "sts_spearman": 0.80})
    assert not bad["promote"]
    assert "old.mlm_loss worsened: 3 -> 3.15" in bad["reason"]
    # higher-is-better metrics drop the other way
    assert not decide(gate, champion, {"new.mlm_loss": 3.5, "old.mlm_loss": 3.0,
                                       "sts_spearman": 0.75})["promote"]
    # no gain on the new domain: rejected even with the old one intact
    flat = decide(gate, champion, {"new.mlm_loss": 4.0, "old.mlm_loss": 3.0,
                                   "sts_spearman": 0.80})
    assert not flat["promote"] and "new.mlm_loss did not improve" in flat["reason"]
    # a required improvement
    assert not decide(GateConfig(min_improvement=0.2), champion,
                      {"new.mlm_loss": 3.5, "old.mlm_loss": 3.0, "sts_spearman": 0.8})["promote"]
    # without an MLM head the new-domain metric is the halves MRR
    assert decide(gate, {"new.halves_mrr": 0.5}, {"new.halves_mrr": 0.6})["new_metric"] == \
        "new.halves_mrr"
    with pytest.raises(ConfigError, match="was not measured"):
        decide(GateConfig(new_metric="new.wic"), champion, champion)


def test_gate_auto_prefers_the_label_free_retrieval_measure():
    """auto: new.pseudo_ndcg_at_10 wherever it was measured, even with an MLM head; its old-domain
    twin is held to the tolerance like every other old-domain metric."""
    champion = {"new.pseudo_ndcg_at_10": 0.50, "new.mlm_loss": 4.0, "new.halves_mrr": 0.6,
                "old.pseudo_ndcg_at_10": 0.70, "old.mlm_loss": 3.0}
    gate = GateConfig(tolerance=0.02)
    # the MLM loss got worse and the pseudo-queries better: auto judges by the latter
    better = {**champion, "new.pseudo_ndcg_at_10": 0.55, "new.mlm_loss": 4.4}
    d = decide(gate, champion, better)
    assert d["promote"] and d["new_metric"] == "new.pseudo_ndcg_at_10"
    assert [c["metric"] for c in d["checks"] if c["kind"] == "new-domain"] == \
        ["new.pseudo_ndcg_at_10"]
    worse = {**champion, "new.pseudo_ndcg_at_10": 0.45, "new.mlm_loss": 3.0}
    assert "new.pseudo_ndcg_at_10 did not improve" in decide(gate, champion, worse)["reason"]
    # old.pseudo_ndcg_at_10 down 5% (> 2%): rejected
    forgot = {**better, "old.pseudo_ndcg_at_10": 0.665}
    bad = decide(gate, champion, forgot)
    assert not bad["promote"] and "old.pseudo_ndcg_at_10 worsened" in bad["reason"]
    # without it: the MLM loss, then the halves MRR, as before
    no_pseudo = {k: v for k, v in champion.items() if "pseudo" not in k}
    assert decide(gate, no_pseudo, no_pseudo)["new_metric"] == "new.mlm_loss"
    # an explicit new_metric wins over auto
    assert decide(GateConfig(new_metric="new.mlm_loss"), champion, better)["new_metric"] == \
        "new.mlm_loss"


def _domains(n_old: int = 30, n_new: int = 30) -> Domains:
    """Two domains of synthetic documents (titled), a third of each held out."""
    d = Domains()
    for prefix, seed, n, train, held in (("o", 0, n_old, d.old_train, d.old_heldout),
                                         ("n", 1, n_new, d.new_train, d.new_heldout)):
        for i, doc in enumerate(documents(n, seed)):
            doc_id = f"{prefix}{i:03d}"
            (held if i % 3 == 0 else train)[doc_id] = doc["text"]
            d.titles[doc_id] = doc["title"]
    return d


def test_domain_metrics_score_both_models_on_the_same_held_out_pseudo_queries(tmp_path, caplog):
    domains = _domains()
    cfg = load_config(TINY, ["evaluate.batch_size=16"])
    # the queries: made as the mine stage makes its held-out ones, from each domain's held-out
    # documents alone; the same every time they are made
    queries = domain_queries(cfg.adapt, domains)
    assert set(queries) == {"old", "new"}
    assert queries == domain_queries(cfg.adapt, domains)
    for dom, held in (("old", domains.old_heldout), ("new", domains.new_heldout)):
        q = queries[dom]
        assert q.doc_ids == list(held) and 0 < len(q.queries) <= len(held)
        assert len(set(q.relevant)) == len(q.relevant)  # at most one per document
        assert set(q.relevant) <= set(held)
        # a sentence query's document is searched without that sentence (keyword queries
        # have no full stop)
        sentence_queries = [(t, doc) for t, doc in zip(q.queries, q.relevant, strict=True)
                            if t.endswith(".")]
        assert sentence_queries
        for text, doc in sentence_queries:
            assert text not in q.doc_texts[q.doc_ids.index(doc)]
    texts = [f"{domains.titles[i]} {t}" for i, t in {**domains.old_train,
                                                     **domains.new_train}.items()]
    models = [tiny_bert(tmp_path / "a", texts), tiny_bert(tmp_path / "b", texts, with_head=True)]
    for model in models:
        m = domain_metrics(cfg, str(model), domains)
        for dom in ("old", "new"):
            assert {f"{dom}.pseudo_ndcg_at_10", f"{dom}.pseudo_mrr_at_10"} <= m.keys()
            # the figure is the one the given queries make, for either model
            q, enc = queries[dom], Encoder.load(model)
            ranked = exact_search(enc.encode(q.queries), enc.encode(q.doc_texts),
                                  [f"pq:{i}" for i in range(len(q.queries))], q.doc_ids, NDCG_K)
            assert m[f"{dom}.pseudo_ndcg_at_10"] == pytest.approx(
                pseudo_metrics(ranked, q.relevant)["ndcg@10"], abs=1e-6)
    # a domain whose held-out documents make no query has no figure, and says so
    bare = _domains()
    bare.old_heldout = {"x1": "tiny", "x2": "words"}
    with caplog.at_level("INFO", logger="ctxvec.continual.evaluate"):
        m = domain_metrics(cfg, str(models[0]), bare)
    assert "new.pseudo_ndcg_at_10" in m and "old.pseudo_ndcg_at_10" not in m
    assert "old domain: no held-out pseudo-query" in caplog.text


def test_gate_does_not_promote_when_an_asked_for_check_cannot_run():
    """Fail safe: the recipe asked for an evaluation (evaluate.sts is set) that could not run
    (its file is missing), so the comparison lacks that metric: no promotion, and the reason
    says which evaluation and why, however good the rest looks."""
    champion = {"new.mlm_loss": 4.0, "old.mlm_loss": 3.0}
    better = {"new.mlm_loss": 3.0, "old.mlm_loss": 2.9}
    gate = GateConfig(tolerance=0.02)
    assert decide(gate, champion, better)["promote"]
    missing = {"sts": "data not found: /nowhere/sts-dev.csv"}
    d = decide(gate, champion, better, unmeasured=missing)
    assert not d["promote"]
    failed = [c for c in d["checks"] if not c["passed"]]
    assert [(c["metric"], c["kind"]) for c in failed] == [("sts", "unmeasured")]
    assert failed[0]["why"] == missing["sts"]
    assert failed[0]["champion"] is None and failed[0]["challenger"] is None
    assert "sts could not be measured (data not found: /nowhere/sts-dev.csv)" in d["reason"]
    assert "evaluate.sts=null" in d["reason"]  # how to update without it, on purpose


def test_unmeasured_lists_the_evaluations_asked_for_but_skipped_on_either_side():
    from ctxvec.artifacts import EvalReport
    from ctxvec.config import EvaluateConfig
    from ctxvec.continual.evaluate import PairReport, unmeasured

    ecfg = EvaluateConfig(sts="/nowhere/sts-dev.csv", wic="/data/wic")
    not_set = "evaluate.retrieval is not set in the recipe"
    pair = PairReport({"old.mlm_loss": 3.0}, EvalReport(
        {"old.mlm_loss": 2.9, "wic_accuracy": 0.6},
        {"sts": "data not found: /nowhere/sts-dev.csv", "retrieval": not_set}),
        champion_skipped={"sts": "data not found: /nowhere/sts-dev.csv", "retrieval": not_set,
                          "wic": "data not found: /data/wic"})
    assert unmeasured(ecfg, pair) == {"sts": "data not found: /nowhere/sts-dev.csv",
                                      "wic": "champion: data not found: /data/wic"}
    assert unmeasured(EvaluateConfig(), pair) == {}  # nothing asked for: nothing missing
    # a switch (evaluate.pseudo) counts only when on, not because it is a key with a value
    no_mined = "no mined data: the mine stage did not run"
    pseudo = PairReport({}, EvalReport({}, {"pseudo": no_mined}),
                        champion_skipped={"pseudo": no_mined})
    assert unmeasured(EvaluateConfig(pseudo=False), pseudo) == {}
    assert unmeasured(EvaluateConfig(pseudo=True), pseudo) == {"pseudo": no_mined}


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))


def test_l2sp_is_zero_at_the_anchor_and_pulls_back():
    model = _model()
    pen = L2SP(model, weight=0.5)
    assert float(pen(model)) == 0.0
    with torch.no_grad():
        model[0].weight += 0.1
    value = pen(model)
    assert float(value) == pytest.approx(0.5 * 12 * 0.01, rel=1e-5)
    value.backward()
    assert torch.all(model[0].weight.grad > 0)  # the gradient points back to the anchor


def test_ewc_fisher_has_mean_one_and_weighs_what_the_old_data_used():
    model = _model()
    x = torch.zeros(8, 4)
    x[:, 0] = torch.randn(8)  # the old data only ever uses input 0

    def loss(m, batch):
        return m(batch).pow(2).sum()

    fisher = fisher_diagonal(model, loss, [x, x])
    total = sum(float(f.sum()) for f in fisher)
    assert total / sum(f.numel() for f in fisher) == pytest.approx(1.0)
    assert float(fisher[0][:, 1:].abs().sum()) == 0.0  # weights of unused inputs: free
    ewc = EWC(model, 1.0, loss, [x])
    with torch.no_grad():
        model[0].weight[:, 1:] += 1.0  # moving unused weights costs nothing
    assert float(ewc(model)) == pytest.approx(0.0, abs=1e-9)
    with torch.no_grad():
        model[0].weight[:, 0] += 0.1  # moving used ones does
    assert float(ewc(model)) > 0


def test_replay_takes_the_ratio_of_earlier_rows():
    new, old = np.zeros((30, 8), np.int32), np.arange(400 * 8, dtype=np.int32).reshape(400, 8)
    assert len(replay_rows(new, old, 0.5, 0)) == 30
    assert len(replay_rows(new, old, 0.25, 0)) == 10
    assert len(replay_rows(new, old, 0.0, 0)) == 0
    assert len(replay_rows(new, old[:5], 0.5, 0)) == 5  # all there is
    a, b = replay_rows(new, old, 0.5, 1), replay_rows(new, old, 0.5, 1)
    assert np.array_equal(a, b)  # seeded: a resumed run sees the same data


def test_distillation_loss_is_zero_on_the_teachers_own_vectors(tmp_path):
    from transformers import AutoModel

    from ctxvec.model.encoder import EncoderSettings, load_tokenizer
    from ctxvec.train.objectives.distill import EmbeddingDistillation
    from ctxvec.train.objectives.sentences import SentenceView

    folder = tiny_bert(tmp_path / "m", SENTENCES)
    model = AutoModel.from_pretrained(folder).eval()
    view = SentenceView(load_tokenizer(folder), 64, EncoderSettings().pooling)
    texts = SENTENCES[:4]
    with torch.no_grad():
        teacher = view.embed(model, view.tokenize(texts)).numpy()
    obj = EmbeddingDistillation(view)
    with torch.no_grad():
        same = obj.loss(model, obj.collate(list(zip(texts, teacher, strict=True))), None)
        other = obj.loss(model, obj.collate(list(zip(texts, teacher[::-1], strict=True))), None)
    assert float(same) == pytest.approx(0.0, abs=1e-5)
    assert float(other) > 0.01


def test_halves_mrr_finds_each_documents_other_half(tmp_path):
    from ctxvec.model.encoder import Encoder
    from ctxvec.model.refs import minilm_dir

    enc = Encoder.load(minilm_dir())
    docs = ["The Danube flows through Vienna and Budapest before it reaches the Black Sea. "
            "Its delta is a wetland of reeds, pelicans and fishing villages.",
            "A sourdough starter is flour and water colonised by wild yeast. "
            "Bakers feed it daily and use it to leaven bread with a sour taste.",
            "The violin has four strings tuned in fifths and is played with a bow. "
            "Orchestras seat the first and second violins to the conductor's left.",
            "Photosynthesis turns light, water and carbon dioxide into sugar. "
            "Chlorophyll in the leaves absorbs red and blue light and reflects green."]
    chance = (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4  # 0.52: each half ranked at random among 4
    assert halves_mrr(enc, docs, 8) >= 0.8 > chance
    assert halves_mrr(enc, docs[:1], 8) is None  # one document ranks nothing
