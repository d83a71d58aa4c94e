"""Aliases and the champion's history: promote a version, roll the champion back.

The registered model keeps a tag ``champion_history`` (the champions in order, comma-separated):
MLflow keeps only where an alias points now, and a rollback needs where it pointed before.
"""

from __future__ import annotations

import logging

from ctxvec.refs import ModelRef, ModelRefError
from ctxvec.registry.access import RegistryAccess

log = logging.getLogger(__name__)

HISTORY_TAG = "champion_history"  # registered-model tag: the champions in order, comma-separated
CHAMPION = "champion"


def champion_history(c, name: str) -> list[str]:
    raw = c.get_registered_model(name).tags.get(HISTORY_TAG, "")
    return [v for v in raw.split(",") if v]


def _set_champion_history(c, name: str, history: list[str]) -> None:
    c.set_registered_model_tag(name, HISTORY_TAG, ",".join(history[-100:]))


def _require_index(reg: RegistryAccess, name: str, version: str, index_uri: str | None,
                   doing: str) -> None:
    """Refuse to point an alias at ``version`` unless its index is on disk (or on the store):
    a server that follows the alias would otherwise fail every query."""
    if index_uri and reg.ws.stage_manifest(index_uri) is not None:
        return
    ref = ModelRef.registered(name, version=version)
    why = f"its index ({index_uri}) is gone" if index_uri else "it has no index yet"
    raise ModelRefError(f"cannot {doing} version {version}: {why}; build it with "
                        f"`ctxvec embed --model {ref} --index`")


def _set_alias(reg: RegistryAccess, name: str, alias: str, version: str) -> None:
    from mlflow.exceptions import MlflowException  # lazy: mlflow takes seconds to import

    try:
        reg.client.set_registered_model_alias(name, alias, version)
    except MlflowException as e:
        if e.error_code != "INVALID_PARAMETER_VALUE":
            raise
        raise ModelRefError(f"invalid alias {alias!r}: {e.message}") from None


def promote(reg: RegistryAccess, name: str, version: str, alias: str = CHAMPION) -> str | None:
    """Point ``alias`` at ``version``, whose index must be in place; returns the version it
    pointed at before, if any."""
    c = reg.client
    previous = reg.alias_version(name, alias)
    info = reg.resolve(ModelRef.registered(name, version=version))
    _require_index(reg, name, version, info.index_uri, "promote")
    _set_alias(reg, name, alias, version)
    if previous and previous != version:
        c.set_model_version_tag(name, version, "previous_champion", previous)
    if alias == CHAMPION and previous != version:
        history = champion_history(c, name) or ([previous] if previous else [])
        _set_champion_history(c, name, [*history, version])
    log.info("promote: %s@%s -> version %s (was %s)", name, alias, version, previous)
    return previous


def rollback(reg: RegistryAccess, name: str) -> tuple[str, str]:
    """Point ``champion`` back at the version that was champion before the current one, if its
    index is still on disk (or on the store); -> (version rolled back from, version now serving)."""
    c = reg.client
    current = reg.alias_version(name, CHAMPION)
    if current is None:
        raise ModelRefError(f"{name} has no champion to roll back")
    history = champion_history(c, name)
    if history and history[-1] != current:  # the alias was moved by hand: start from it
        history.append(current)
    if len(history) < 2:
        raise ModelRefError(f"{name}@champion (version {current}) has no earlier champion to "
                            "roll back to")
    target = history[-2]
    index_uri = c.get_model_version(name, target).tags.get("index_uri")
    _require_index(reg, name, target, index_uri, "roll back to")
    c.set_registered_model_alias(name, CHAMPION, target)
    c.set_model_version_tag(name, current, "rolled_back_to", target)
    _set_champion_history(c, name, history[:-1])
    log.info("rollback: %s@champion -> version %s (was %s)", name, target, current)
    return current, target
