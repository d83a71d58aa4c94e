"""What the server serves, and the hot swap when the ``champion`` alias moves.

``Served`` bundles one model version's searchers. A ``ChampionWatcher`` holds the current one in a
single attribute; a background thread resolves the alias every ``serve.reload_seconds``, and when it
points at another version whose index is attached, builds that version's ``Served`` completely
(encoder, index, id map, sense index, one warm-up query) and only then rebinds the attribute.
Rebinding one reference is atomic, so a request sees the old bundle or the new one, never a mix;
requests in flight keep the bundle they started with, which stays alive until they drop it. A
failed load is logged and retried later with backoff, and the old version keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ctxvec.config import CtxvecConfig
from ctxvec.errors import UserInputError
from ctxvec.model.attention import load_encoder
from ctxvec.model.encoder import Encoder
from ctxvec.refs import ModelRef, ModelRefError
from ctxvec.registry import ModelVersion, Registry
from ctxvec.serve.paths import SourceNames
from ctxvec.serve.search import Searcher
from ctxvec.serve.senses import SenseSearcher
from ctxvec.workspace import Workspace

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 300.0


class Served:
    """One model version, ready to answer: its searcher and, where built, its sense searcher.

    Attention maps need the eager attention implementation; switching the shared encoder to it
    would change the model under concurrent queries, so ``/explain`` gets its own eager copy of
    the encoder, loaded on first use."""

    def __init__(self, registry: Registry, info: ModelVersion, searcher: Searcher,
                 senses: SenseSearcher | None, senses_error: str | None,
                 sources: SourceNames | None = None):
        self.registry = registry
        self.info = info  # the version, resolved once by whoever loaded it
        self.ref: ModelRef = info.ref  # pinned: models:/<name>/<version>
        self.version: str = info.version
        self.searcher = searcher
        self.senses = senses  # None: see senses_error
        self.senses_error = senses_error
        self.sources = sources or SourceNames(())  # how hits name their source files
        self.loaded_at = time.time()
        self._eager: Encoder | None = None
        self._eager_lock = threading.Lock()

    def attention_encoder(self) -> Encoder:
        with self._eager_lock:
            if self._eager is None:
                # the cached download of this pinned version: no registry read
                self._eager = load_encoder(self.registry.local_dir(self.info))
            return self._eager


def load_served(ws: Workspace, version: str | ModelRef | ModelVersion,
                cfg: CtxvecConfig | None = None, registry: Registry | None = None) -> Served:
    """Build everything one version needs to serve; raise rather than return half of it.

    ``version`` is best the ``ModelVersion`` the caller already resolved: then nothing here
    asks the registry where it points again."""
    registry = registry or Registry(ws)
    info = registry.resolve(version)  # a ModelVersion comes back as it is: no read
    searcher = Searcher(ws, info, cfg, registry=registry)  # downloads it once, reads nothing
    senses, senses_error = None, None
    try:
        senses = SenseSearcher.from_registry(ws, info, encoder=searcher.encoder,
                                             registry=registry)
    except UserInputError as e:  # e.g. the version was embedded without word vectors
        senses_error = str(e)
    searcher.embed(["warm up"])  # the first real query should not pay for lazy init
    return Served(registry, info, searcher, senses, senses_error,
                  SourceNames.of_corpus(searcher.corpus))


class ChampionWatcher:
    """Serve ``ref``; when it names an alias, follow the alias as it moves."""

    def __init__(
        self, ws: Workspace, ref: str | ModelRef, interval_s: float,
        loader: Callable[[Workspace, ModelVersion], Served] = load_served,
        registry: Registry | None = None,
    ):
        self.ws = ws
        self.registry = registry or Registry(ws)
        self.ref = ModelRef.parse(ref)
        if not self.ref.is_registry:
            raise ModelRefError(f"the server serves registered versions, not {self.ref}: "
                                 "use models:/<name>@<alias> or models:/<name>/<n>")
        assert self.ref.name is not None
        self.name: str = self.ref.name
        self.alias: str | None = self.ref.alias
        self.interval_s = interval_s
        self._loader = loader
        self.current: Served = loader(ws, self.registry.resolve(self.ref))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures: dict[str, tuple[int, float]] = {}  # version -> (count, retry after)
        self._waiting_for_index: str | None = None
        self.swaps = 0

    def start(self) -> None:
        if self.alias is None or self._thread is not None:
            return  # a pinned version never moves
        self._thread = threading.Thread(target=self._run, name="ctxvec-champion", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # the registry may be briefly unreachable: try again next time
                log.warning("serve: could not resolve %s", self.ref, exc_info=True)

    def poll(self) -> bool:
        """Check the alias once; swap if it moved to a loadable version. True if swapped."""
        if self.alias is None:
            return False
        info = self.registry.resolve(self.ref)  # one registry read per poll
        version = info.version
        if version == self.current.version:
            return False
        if not info.index_uri:
            if self._waiting_for_index != version:
                log.info("serve: %s -> version %s, which has no index yet; still serving %s",
                         self.ref, version, self.current.version)
                self._waiting_for_index = version
            return False
        count, retry_after = self._failures.get(version, (0, 0.0))
        if time.monotonic() < retry_after:
            return False
        log.info("serve: %s moved to version %s; loading it", self.ref, version)
        try:
            served = self._loader(self.ws, info)
        except Exception:
            backoff = min(self.interval_s * 2 ** count, MAX_BACKOFF_S)
            self._failures[version] = (count + 1, time.monotonic() + backoff)
            log.exception("serve: loading version %s failed; still serving %s (retry in %.0f s)",
                          version, self.current.version, backoff)
            return False
        previous = self.current
        self.current = served  # the swap: one reference, rebound atomically
        self.swaps += 1
        self._failures.pop(version, None)
        log.info("serve: now serving version %s (was %s)", served.version, previous.version)
        return True
