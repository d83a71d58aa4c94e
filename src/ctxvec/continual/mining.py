"""The update's mined examples: the signal the recipe trains on, from the documents it has not
seen, with earlier ones replayed.

A recipe whose objective reads ``data.source: mined`` learned the corpus from examples mined
from its documents (``ctxvec.adapt``). Its update mines the same way (``mine_examples``), on the
new domain's training documents plus ``replay_count(new, continual.replay_ratio)`` earlier
training documents drawn by ``train.seed``, so the new domain makes ``1 - replay_ratio`` of the
mined documents as it makes that share of an MLM update's sequences; ``adapt.max_docs`` caps the
two together, the new ones sampled by a hash of doc_id as the mine stage samples a corpus. Hard
negatives are searched among those same documents, and the encoder that filters pseudo-queries
and mines negatives (where the adapt section asks for it) is the parent version: the model being
updated, as the starting model is for the recipe's own mining. No document is held out here: the
gate's held-out documents are the domains' own (``Domains.old_heldout`` / ``new_heldout``),
never mined.

The examples go to ``mined/update-<plan key>/train.parquet`` (the plan key covers the adapt
section when an objective trains on mined examples), so training reads them as it reads the
mine stage's (``load_examples``), and a re-run after a crash finds them instead of mining again.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np

from ctxvec.adapt.mine import (
    MINED,
    TRAIN_FILE,
    build_search,
    hash_sample,
    mine_examples,
    write_examples,
)
from ctxvec.adapt.text import stable_hash
from ctxvec.artifacts import MinedData
from ctxvec.config import CtxvecConfig
from ctxvec.continual.plan import Domains, UpdatePlan
from ctxvec.continual.replay import replay_rows
from ctxvec.errors import UserInputError
from ctxvec.workspace import Workspace, read_json, write_manifest

log = logging.getLogger(__name__)


def _record(folder: Path, key: str) -> tuple[MinedData, dict[str, int]]:
    m = read_json(folder / "manifest.json")
    return MinedData(str(folder), key, m["counts"], 0, m["docs"]), m["update_counts"]


def mine_update(cfg: CtxvecConfig, ws: Workspace, plan: UpdatePlan,
                domains: Domains) -> tuple[MinedData, dict[str, int]]:
    """Mine the new training documents and the replayed earlier ones -> (the mined record
    training reads, the update's counts: ``mined_new`` and ``mined_replay`` examples,
    ``mined_docs_new`` and ``mined_docs_replay`` documents)."""
    started = time.time()
    acfg, tcfg = cfg.adapt, cfg.train
    key = f"update-{plan.key}"
    folder = ws.root / MINED / key
    if (folder / "manifest.json").is_file():
        log.info("update: the examples of %s are mined already", key)
        return _record(folder, key)
    ratio = cfg.continual.replay_ratio
    new = domains.docs(domains.new_train)
    if acfg.max_docs is not None:  # new and replayed documents together: about max_docs
        new = hash_sample(new, max(1, round(acfg.max_docs * (1 - ratio))))
    old = domains.docs(domains.old_train)
    picked = replay_rows(np.arange(len(new)), np.arange(len(old)), ratio, tcfg.seed)
    docs = new + [old[i] for i in picked]
    if len(docs) < 2:
        raise UserInputError(f"the update has {len(docs)} document(s) with text to mine; "
                             "mining needs at least 2")
    log.info("update: mining %d new and %d replayed earlier documents", len(new), len(picked))
    search = build_search(acfg, docs, plan.parent_dir, tcfg.device)
    examples, _, stats = mine_examples(acfg, docs, list(range(len(docs))), [], search)
    if not examples:
        raise UserInputError("mining the new documents found no training example: they are too "
                             "short for every signal on (see the adapt section)")
    # by a hash of the document: a data.max_examples cap keeps new and replayed alike
    examples.sort(key=lambda e: stable_hash("update", e.doc_id))
    new_ids = {d.doc_id for d in new}
    n_new = sum(e.doc_id in new_ids for e in examples)
    update_counts = {"mined_new": n_new, "mined_replay": len(examples) - n_new,
                     "mined_docs_new": len(new), "mined_docs_replay": len(picked)}
    counts = dict(sorted(Counter(e.signal for e in examples).items()))
    with ws.stage_dir(folder) as tmp:
        write_examples(tmp / TRAIN_FILE, examples)
        write_manifest(
            tmp, "mine", started, key=key, update=plan.key, parent=plan.parent_ref,
            docs=len(docs), counts=counts, update_counts=update_counts,
            examples=len(examples),
            pseudo_queries={"made": stats.made, "kept": stats.kept,
                            "filter": acfg.pseudo_queries.filter},
            negatives={"with_negatives": stats.negatives.with_negatives,
                       "negatives": stats.negatives.negatives,
                       "dropped_by_margin": stats.negatives.dropped_by_margin},
            model=plan.parent_dir if acfg.uses_encoder() else None,
            config=acfg.model_dump(mode="json"))
    log.info("update: mined %d examples (%d of new documents, %d replayed), %.1fs",
             len(examples), n_new, len(examples) - n_new, time.time() - started)
    return _record(folder, key)
