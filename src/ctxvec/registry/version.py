"""One registered model version as ctxvec sees it: a plain record, read once from the registry."""

from __future__ import annotations

from dataclasses import dataclass

from ctxvec.refs import ModelRef


@dataclass(frozen=True)
class ModelVersion:
    """A version resolved from a reference (an alias already followed): what serving, drift and
    ``ctxvec models`` pass around instead of asking the registry again."""

    name: str
    version: str
    tags: dict[str, str]
    aliases: list[str]
    run_id: str | None

    @property
    def ref(self) -> ModelRef:
        """The pinned reference, ``models:/<name>/<version>``: it never moves."""
        return ModelRef.registered(self.name, version=self.version)

    @property
    def index_uri(self) -> str | None:
        """Where the version's index lives (tag ``index_uri``), once one is attached."""
        return self.tags.get("index_uri") or None
