"""Sense search served by one registered model version and its own sense index.

``SenseSearcher.from_registry(ws, "models:/ctxvec-encoder@champion")`` (or a ``ModelVersion``
already resolved) finds the version's index folder (tag ``index_uri``, as ``Searcher`` does) and
its ``senses/`` subfolder, and refuses a sense index built for another version.
``senses(word, context, k)`` embeds the word in the given sentence with the index's own settings
(layers, windows), so a sentence that is in the corpus finds itself with score 1, and returns the
closest occurrences of that word with a snippet of their documents.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from ctxvec.embed.precision import follow_recorded, recorded
from ctxvec.embed.words import sense_query
from ctxvec.errors import UserInputError
from ctxvec.index.senses import SENSES_DIR, SenseIndex
from ctxvec.ingest.corpus import read_docs
from ctxvec.model.encoder import Encoder
from ctxvec.refs import ModelRef
from ctxvec.registry import ModelVersion, Registry
from ctxvec.workspace import Workspace, read_json

log = logging.getLogger(__name__)

SNIPPET_CHARS = 300
MAX_K = 1000


class SenseSearchError(UserInputError):
    """A sense query the caller can fix (bad k, no sense index for this version)."""


@dataclass(frozen=True)
class SenseHit:
    doc_id: str
    score: float
    word: str
    start: int  # char offsets of the occurrence in the document
    end: int
    text: str  # a snippet of the document around the occurrence
    title: str
    snippet_start: int  # where ``text`` starts in the document: the word is at start - this

    def to_dict(self) -> dict:
        return asdict(self)


def snippet(text: str, start: int, end: int, width: int = SNIPPET_CHARS) -> tuple[str, int]:
    """About ``width`` characters of ``text`` centred on [start, end), cut at spaces where it
    can be -> (snippet, its start offset)."""
    pad = max(0, (width - (end - start)) // 2)
    a, b = max(0, start - pad), min(len(text), end + pad)
    if a > 0:
        space = text.find(" ", a, start)
        a = space + 1 if space >= 0 else a
    if b < len(text):
        space = text.rfind(" ", end, b)
        b = space if space >= 0 else b
    return text[a:b], a


class SenseSearcher:
    """An encoder and the sense index built from its word vectors."""

    def __init__(self, encoder: Encoder, senses_dir: str | Path, version: str | None = None,
                 corpus: list[str] | None = None):
        """``corpus``: the snapshot folders to read texts from, when not the ones the sense
        manifest names (those are another machine's paths when the workspace is remote)."""
        self.encoder = encoder
        self.index = SenseIndex.load(senses_dir)
        m = self.index.manifest
        if version is not None and str(m["model_version"]) != str(version):
            raise RuntimeError(
                f"sense index {senses_dir} was built for version {m['model_version']}, not "
                f"{version}: refusing to mix model versions"
            )
        if self.index.dim != encoder.dim:
            raise RuntimeError(f"sense index {senses_dir} has dimension {self.index.dim}, the "
                               f"encoder {encoder.dim}")
        # the occurrences' precision, which the query's context vector must share
        follow_recorded(encoder.precision, recorded(m.get("precision")),
                        f"sense index {senses_dir}")
        self.version = str(m["model_version"])
        self.corpus = corpus if corpus is not None else m["corpus"]
        log.info("senses: version %s, %d occurrences of %d words", self.version,
                 self.index.count, len(self.index.slices))

    @classmethod
    def from_registry(cls, ws: Workspace, ref: str | ModelRef | ModelVersion,
                      encoder: Encoder | None = None, registry: Registry | None = None
                      ) -> SenseSearcher:
        """The sense index of a registered version (``<index_uri>/senses``), with that version's
        encoder (pass one already loaded, e.g. ``Searcher.encoder``, to share it). A
        ``ModelVersion`` already resolved is used as it is: no registry read."""
        registry = registry or Registry(ws)
        info = registry.resolve(ref)
        index_uri = info.index_uri
        if not index_uri:
            raise SenseSearchError(f"{info.ref} (version {info.version}) has no index: run the "
                                   "pipeline")
        index_dir = ws.local_dir(index_uri)  # fetched when the workspace is on a store
        folder = index_dir / SENSES_DIR
        if not (folder / "manifest.json").is_file():
            raise SenseSearchError(
                f"{info.ref} (version {info.version}) has no sense index in {folder}: run the "
                "pipeline with embed.words.enabled=true"
            )
        if encoder is None:  # in the precision the occurrences were embedded in
            precision = recorded(read_json(folder / "manifest.json").get("precision"))
            encoder = Encoder.load(registry.local_dir(info), precision=precision or "auto")
        # the index's own corpus references: the same snapshots, named so that this machine
        # can resolve them (a sense index without its dense index's manifest keeps its own)
        manifest = index_dir / "manifest.json"
        corpus = ([str(ws.local_dir(c)) for c in read_json(manifest)["corpus"]]
                  if manifest.is_file() else None)
        return cls(encoder, folder, info.version, corpus)

    def senses(self, word: str, context: str, k: int = 10, occurrence: int = 1
               ) -> list[SenseHit]:
        """Occurrences of ``word`` in the corpus used most like its ``occurrence``-th use in
        ``context`` (count from 1), best first."""
        if not 1 <= k <= MAX_K:
            raise SenseSearchError(f"k must be between 1 and {MAX_K}, got {k}")
        w = self.index.check_word(word)  # before the model runs: an absent word fails fast
        m = self.index.manifest
        vec = sense_query(self.encoder, w, context, m["layers"], occurrence,
                          max_tokens=m["max_tokens"], stride=m["stride"])
        found = self.index.search(w, vec, k)
        docs = read_docs(self.corpus, list(dict.fromkeys(o.doc_id for o in found)),
                         ("text", "title"))
        hits = []
        for o in found:
            doc = docs.get(o.doc_id, {})
            text, at = snippet(doc.get("text") or "", o.start, o.end)
            hits.append(SenseHit(o.doc_id, o.score, o.word, o.start, o.end, text,
                                 doc.get("title") or "", at))
        return hits
