"""What a continual update would do: which version it starts from, and which documents are new.

The champion's ``data_snapshot`` tag says what it has seen; the documents whose newest version
lives in a later snapshot are the new domain, the rest the old one. Every
``continual.heldout_every``-th document of each domain (by a hash of its id) is held out for the
gate. The plan's ``key`` (parent version, snapshot, recipe) names the update's run folder and
tags its registered version, so a re-run after a crash finds both instead of redoing them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ctxvec.adapt.text import Doc
from ctxvec.artifacts import Snapshot
from ctxvec.config import CtxvecConfig
from ctxvec.errors import UserInputError
from ctxvec.ingest.corpus import committed_snapshots, iter_corpus
from ctxvec.refs import ModelRef
from ctxvec.registry import Registry
from ctxvec.workspace import Workspace, sha256_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpdatePlan:
    status: str  # "ready" | "nothing-new"
    name: str
    parent_version: str
    parent_dir: str
    parent_snapshot: str
    snapshot_id: str  # the newest snapshot: the challenger's data_snapshot
    corpus: list[str]  # every snapshot folder, oldest first
    new_docs: int
    old_docs: int
    key: str  # (parent version, snapshot, recipe): names the run and tags the version

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def parent(self) -> ModelRef:
        """The version the update starts from, pinned: an alias moves, this does not."""
        return ModelRef.registered(self.name, version=self.parent_version)

    @property
    def parent_ref(self) -> str:
        """``parent`` as text: what ``model.init`` and the train manifest record."""
        return str(self.parent)


@dataclass
class Domains:
    """Texts by doc_id: training and held-out documents of the old and the new domain; and the
    titles of those that have one (mined signals pair a title with its text)."""

    old_train: dict[str, str] = field(default_factory=dict)
    old_heldout: dict[str, str] = field(default_factory=dict)
    new_train: dict[str, str] = field(default_factory=dict)
    new_heldout: dict[str, str] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)

    def docs(self, texts: Mapping[str, str]) -> list[Doc]:
        """The documents of ``texts`` (one of the four) with text, titled, as mining takes
        them."""
        return [Doc(i, self.titles.get(i, ""), t) for i, t in texts.items() if t and t.strip()]


def _hash_bucket(doc_id: str, every: int) -> bool:
    h = int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little")
    return h % every == 0


def trains_on_mined(cfg: CtxvecConfig) -> bool:
    """Whether an objective trains on mined examples (``data.source: mined``): the update then
    mines its new and replayed documents (``ctxvec.continual.mining``)."""
    return any(o.data.source == "mined" for o in cfg.train.objectives)


def update_key(cfg: CtxvecConfig, parent_version: str, snapshot_id: str) -> str:
    what = {
        "parent": parent_version, "snapshot": snapshot_id,
        "continual": cfg.continual.model_dump(mode="json", exclude={"gate"}),
        "train": cfg.train.model_dump(mode="json", exclude={"resume", "device", "threads"}),
        "pack": cfg.pack.mode,
    }
    if trains_on_mined(cfg):  # the examples are mined by the adapt section
        what["adapt"] = cfg.adapt.model_dump(mode="json")
    return sha256_text(json.dumps(what, sort_keys=True))[:12]


def plan_update(cfg: CtxvecConfig, ws: Workspace) -> UpdatePlan:
    """What the update would do: which version it starts from and how much is new."""
    name, ccfg = cfg.registry.model_name, cfg.continual
    ref = (ModelRef.registered(name, version=ccfg.parent) if ccfg.parent.isdigit()
           else ModelRef.registered(name, alias=ccfg.parent))
    registry = Registry(ws)
    info = registry.resolve(ref)
    parent_snapshot = info.tags.get("data_snapshot", "")
    if not parent_snapshot:
        raise UserInputError(
            f"{ref} (version {info.version}) records no data_snapshot: it was not trained on "
            "this workspace's corpus, so there is no 'new since' to update it with")
    snaps = committed_snapshots(ws)
    if parent_snapshot not in {p.name for p in snaps}:
        raise UserInputError(f"{ref} was trained on snapshot {parent_snapshot}, which is not in "
                             f"{ws.snapshots}: is CTXVEC_HOME the workspace it was trained in?")
    new = old = 0
    for batch in iter_corpus([str(p) for p in snaps], ("snapshot",)):
        col = batch.column(0).to_pylist()
        n_new = sum(s > parent_snapshot for s in col)
        new, old = new + n_new, old + len(col) - n_new
    latest = snaps[-1].name
    status = "ready" if new >= ccfg.min_new_docs else "nothing-new"
    parent_dir = registry.local_dir(info)  # the version resolved above, not the alias again
    plan = UpdatePlan(status, name, info.version, str(parent_dir), parent_snapshot,
                      latest, [str(p) for p in snaps], new, old,
                      update_key(cfg, info.version, latest))
    log.info("update: %s version %s saw snapshot %s; %d new and %d earlier documents: %s",
             name, info.version, parent_snapshot, new, old, status)
    return plan


def split_domains(cfg: CtxvecConfig, plan: UpdatePlan) -> Domains:
    """Each document's newest text, by domain, with every ``heldout_every``-th held out."""
    d = Domains()
    every, cap = cfg.continual.heldout_every, cfg.continual.eval_docs
    for batch in iter_corpus(plan.corpus, ("doc_id", "title", "text", "snapshot")):
        cols = [batch.column(c).to_pylist() for c in ("doc_id", "title", "text", "snapshot")]
        for doc_id, title, text, snap in zip(*cols, strict=True):
            is_new = snap > plan.parent_snapshot
            if title:
                d.titles[doc_id] = title
            if _hash_bucket(doc_id, every):
                held = d.new_heldout if is_new else d.old_heldout
                if len(held) < cap:
                    held[doc_id] = text
                continue
            (d.new_train if is_new else d.old_train)[doc_id] = text
    if not d.new_train:
        raise UserInputError(f"all {len(d.new_heldout)} new documents were held out for "
                             "evaluation: lower continual.heldout_every or add more data")
    return d


def snapshot_record(plan: UpdatePlan) -> Snapshot:
    """The corpus the update trained on, as the Snapshot record register and embed take."""
    return Snapshot(plan.snapshot_id, plan.corpus[-1], plan.corpus,
                    plan.new_docs + plan.old_docs, False, 0, 0, 0, 0, 0, 0, 0, 0)
