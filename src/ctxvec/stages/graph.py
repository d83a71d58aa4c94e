"""A stage, declared once, and the runner that runs a list of them.

A ``Stage`` holds everything the CLI, the Prefect flows and the continual update need to know
about one step: its name (also the Prefect task's name), the config sections it reads, the
stages whose records it takes (``upstream``, in the order its run function takes them), the run
function ``run(cfg, ws, *records) -> record``, and its own idempotence key. A stage without a key
always runs (ingest: new files may land at any time; promote: the alias may have moved); a keyed
stage's key changes exactly when something its output depends on changes (``ctxvec.stages.keys``).

``execute`` runs stages in order, handing each the records of its upstream stages; *how* one
stage is run is the ``call`` it is given: ``run_stage`` in this process, or a Prefect task that
wraps the same stage (``flows/``) and caches its record under the stage's key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ctxvec import __version__
from ctxvec.config import CtxvecConfig
from ctxvec.errors import UserInputError
from ctxvec.faults import crash_point
from ctxvec.stages import keys
from ctxvec.workspace import Workspace

log = logging.getLogger(__name__)

Records = dict[str, Any]  # stage name -> its record
Call = Callable[["Stage", CtxvecConfig, Workspace, tuple], Any]
OnLine = Callable[[str], None]


@dataclass(frozen=True)
class Key:
    """How a stage's idempotence key is made, beyond its name, sections and upstream records.

    ``data``: files the config names that the stage reads (fingerprinted). ``extra``: anything
    else its output depends on (the resolved parent model, the MLflow URIs). ``skip``: a reason
    not to key this run (it must run), or None.
    """

    data: Callable[[CtxvecConfig], list[str]] | None = None
    extra: Callable[[CtxvecConfig, Workspace], Any] | None = None
    skip: Callable[[CtxvecConfig], str | None] | None = None


@dataclass(frozen=True)
class Stage:
    """One step of the graph, declared once (see the module docstring).

    ``kind``: ``io`` stages are retried on a transient failure (a locked SQLite file), ``compute``
    stages are not. ``tags``: Prefect task tags (``gpu-train`` limits trainings per GPU).
    ``streams``: the run function takes ``on_line`` (training streams its torchrun ranks'
    output there). ``halts``: a record after which the graph stops (the continual plan that
    found nothing new). ``returns``: the record type the stage returns (a keyed stage must say:
    a cached record of another type is never used). ``reusable``: whether a record made under
    this key is still usable.
    """

    name: str
    sections: tuple[str, ...]
    upstream: tuple[str, ...]
    run: Callable[..., Any]
    keyed: Key | None = None
    returns: type | None = None
    reusable: Callable[[Any, Workspace], bool] = keys.outputs_exist
    kind: Literal["io", "compute"] = "compute"
    tags: tuple[str, ...] = ()
    streams: bool = False
    halts: Callable[[Any], bool] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.keyed is not None and self.returns is None:
            raise TypeError(f"stage {self.name} is keyed: declare the record type it returns")

    def key_and_reason(self, cfg: CtxvecConfig, ws: Workspace,
                       *records: Any) -> tuple[str | None, str]:
        """(the idempotence key, or None and why this run is not keyed)."""
        if self.keyed is None:
            return None, "runs every time"
        k = self.keyed
        reason = k.skip(cfg) if k.skip else None
        if reason:
            return None, reason
        try:
            extra = k.extra(cfg, ws) if k.extra else None
        except UserInputError as e:  # e.g. an alias naming no version: the stage will say so
            return None, str(e)
        if len(records) != len(self.upstream):
            raise TypeError(f"stage {self.name} takes {len(self.upstream)} upstream records "
                            f"({', '.join(self.upstream)}), got {len(records)}")
        return keys.digest(
            self.name, __version__, str(ws.root), cfg.name,
            {s: keys.section(cfg, s) for s in self.sections},
            {u: keys.identity(r) for u, r in zip(self.upstream, records, strict=True)},
            keys.fingerprint([p for r in records for p in keys.record_paths(r)]),
            keys.fingerprint(k.data(cfg) if k.data else []),
            extra,
        ), ""

    def key(self, cfg: CtxvecConfig, ws: Workspace, *records: Any) -> str | None:
        """The stage's idempotence key for these inputs; None: it runs whatever came before."""
        return self.key_and_reason(cfg, ws, *records)[0]

    def usable(self, record: Any, ws: Workspace) -> bool:
        """Whether a record cached under this stage's key may stand in for running it: of the
        type the stage returns, naming only paths inside this workspace, and ``reusable``."""
        return (self.returns is not None and type(record) is self.returns
                and keys.inside_workspace(record, ws) and self.reusable(record, ws))


def run_stage(stage: Stage, cfg: CtxvecConfig, ws: Workspace, records: tuple,
              on_line: OnLine | None = None) -> Any:
    """Run one stage in this process."""
    log.debug("stage %s", stage.name)
    if stage.streams:
        return stage.run(cfg, ws, *records, on_line=on_line)
    return stage.run(cfg, ws, *records)


def execute(cfg: CtxvecConfig, ws: Workspace, stages: Iterable[Stage], call: Call = run_stage,
            records: Records | None = None) -> Records:
    """Run ``stages`` in order, holding the workspace's writer lock; -> every record by stage
    name (``records`` plus the new ones). An upstream stage that was not planned hands on None.
    Stops after a stage whose ``halts`` says so. Crash point ``stage-done:<name>`` after each
    stage (``ctxvec.faults``)."""
    out: Records = dict(records or {})
    with ws.lock():
        for stage in stages:
            out[stage.name] = call(stage, cfg, ws, tuple(out.get(u) for u in stage.upstream))
            crash_point(f"stage-done:{stage.name}")
            if stage.halts and stage.halts(out[stage.name]):
                break
    return out


def check_order(stages: Sequence[Stage]) -> None:
    """Every stage comes after the stages it takes records from (those that are planned)."""
    seen: set[str] = set()
    names = {s.name for s in stages}
    for s in stages:
        late = [u for u in s.upstream if u in names and u not in seen]
        assert not late, f"stage {s.name} runs before its upstream {late}"
        seen.add(s.name)
