"""Processes the registry fault tests start and kill: ``python -m tests.fault.registry_scripts
legacy|register ...`` (run from the repository root, with ctxvec importable).

- ``legacy DB KILL_AT [BACK]``: MLflow's own set-up of ``DB``, as ctxvec ran it before its
  set-up became atomic, killed (SIGKILL) before its ``KILL_AT``-th SQL statement. With
  ``BACK`` > 0 the file first holds the schema ``BACK`` revisions before MLflow's newest and one
  registered model with two versions (tags, an alias), so the kill lands in MLflow upgrading a
  database that holds data.
- ``register HOME MODEL_DIR``: register a tiny encoder (made at ``MODEL_DIR`` if absent) in
  workspace ``HOME``, as the pipeline's register stage does; prints the record as JSON.
  ``CTXVEC_CRASH_AT`` kills it at a named point.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path

MODEL = "ctxvec-encoder"
SENTENCES = ["the bank of the river", "money in the bank", "a saw to cut wood",
             "I saw a saw", "the river bank flooded", "cut the wood with a saw"]


def legacy(db: str, kill_at: int, back: int = 0) -> None:
    import sqlalchemy
    from alembic import command
    from alembic.script import ScriptDirectory
    from mlflow.store.db import utils
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    if back:
        revisions = [r.revision for r in ScriptDirectory.from_config(
            utils._get_alembic_config("")).walk_revisions()]
        engine = sqlalchemy.create_engine(f"sqlite:///{db}")
        utils.InitialBase.metadata.create_all(engine)
        config = utils._get_alembic_config(str(engine.url))
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revisions[back])
        engine.dispose()
        _registered_versions(db)
    count = itertools.count(1)

    @sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "before_cursor_execute")
    def _kill(*_args) -> None:
        if next(count) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    SqlAlchemyStore(f"sqlite:///{db}", str(Path(db).parent / "mlartifacts"))
    print("set-up finished before the kill point", file=sys.stderr)


def _registered_versions(db: str) -> None:
    """One registered model, versions 1 and 2, a tag on each, alias champion -> 2: written as
    the MLflow of that older schema would have, with the columns every schema since 1.x has."""
    with sqlite3.connect(db) as con:
        con.execute("INSERT INTO registered_models (name, creation_time, last_updated_time) "
                    "VALUES (?, 1, 1)", (MODEL,))
        for v in (1, 2):
            con.execute("INSERT INTO model_versions (name, version, creation_time, "
                        "last_updated_time, current_stage, source, status) "
                        "VALUES (?, ?, 1, 1, 'None', ?, 'READY')",
                        (MODEL, v, f"file:///nowhere/{v}"))
            con.execute("INSERT INTO model_version_tags (key, value, name, version) "
                        "VALUES ('data_snapshot', ?, ?, ?)", (f"snap-{v}", MODEL, v))
        con.execute("INSERT INTO registered_model_aliases (alias, version, name) "
                    "VALUES ('champion', 2, ?)", (MODEL,))


def register(home: str, model_dir: str, reuse: str = "") -> None:
    from ctxvec.artifacts import EvalReport, TrainedModel
    from ctxvec.config import load_config
    from ctxvec.registry import Registry
    from ctxvec.workspace import Workspace
    from tests.helpers import TINY, tiny_bert

    model = Path(model_dir)
    if not model.is_dir():
        tiny_bert(model, SENTENCES, vocab_size=60)
    cfg = load_config(TINY, [])
    trained = TrainedModel(str(model.parent), str(model), steps=2, tokens_seen=100,
                           final_loss=1.0, eval_loss=None, parent=None)
    reg = Registry(Workspace.at(home).ensure()).register(
        cfg, None, None, trained, EvalReport({"mlm_perplexity": 9.5}, {}), reuse=bool(reuse))
    print(json.dumps(reg.to_dict()))


if __name__ == "__main__":
    what, *args = sys.argv[1:]
    if what == "legacy":
        legacy(args[0], int(args[1]), int(args[2]) if len(args) > 2 else 0)
    else:
        register(*args)
