"""Loading recipes: YAML, dotted ``--set`` overrides, paths relative to the recipe, and
error messages that name the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ctxvec.config.base import ConfigError
from ctxvec.config.objectives import OBJECTIVES, objective_key_error, objective_names
from ctxvec.config.tree import CtxvecConfig


def _parse_value(raw: str) -> Any:
    """Parse an override value as YAML so that numbers, booleans, null and lists work."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override to a nested dict in place; a numeric segment indexes a
    list (``train.objectives.0.weight=0.5``)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.path=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {assignment!r} has an empty key segment")
    node: Any = tree
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {assignment!r}: {where} is not an item of the list")
            node = node[int(part)]
            continue
        child = node.setdefault(part, {})
        if not isinstance(child, dict | list):
            raise ConfigError(f"override {assignment!r}: {where} is a value, not a section")
        node = child
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"override {assignment!r}: {key} is not an item of the list")
        node[int(last)] = _parse_value(raw)
    else:
        node[last] = _parse_value(raw)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc, tag = _untag(e["loc"])
        key = ".".join(str(p) for p in loc) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            if tag is not None and isinstance(loc[-2], int):  # a key of the objective itself
                msg = objective_key_error(tag, str(loc[-1]))
            else:
                msg = "unknown key (check the spelling; see configs/tiny.yaml for every key)"
        elif e["type"] == "union_tag_invalid":
            key, msg = f"{key}.name", (f"unknown objective {e['ctx']['tag']!r}; choose one of "
                                       f"{objective_names()}")
        elif e["type"] == "union_tag_not_found":
            key, msg = f"{key}.name", f"missing; choose one of {objective_names()}"
        lines.append(f"  {key}: {msg}")
    return "invalid config:\n" + "\n".join(lines)


def _untag(loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], str | None]:
    """Drop the union tag pydantic puts in an objective's error location
    (``train.objectives.0.mnrl.scale`` -> ``train.objectives.0.scale``) and return it."""
    for i in range(2, len(loc)):
        if loc[i] in OBJECTIVES and loc[i - 2] == "objectives" and isinstance(loc[i - 1], int):
            return loc[:i] + loc[i + 1:], str(loc[i])
    return loc, None


def _resolve_paths(tree: dict[str, Any], base: Path) -> None:
    """Make data paths in a recipe relative to the recipe's folder, not the caller's cwd."""
    ingest = tree.get("ingest")
    if isinstance(ingest, dict) and isinstance(ingest.get("sources"), list):
        ingest["sources"] = [_rebase(s, base) for s in ingest["sources"]]
    evaluate = tree.get("evaluate")
    if isinstance(evaluate, dict):
        for key in ("sts", "retrieval", "wic"):
            if isinstance(evaluate.get(key), str):
                evaluate[key] = _rebase(evaluate[key], base)
    train = tree.get("train")
    if isinstance(train, dict) and isinstance(train.get("objectives"), list):
        for obj in train["objectives"]:
            data = obj.get("data") if isinstance(obj, dict) else None
            if isinstance(data, dict) and isinstance(data.get("path"), str):
                data["path"] = _rebase(data["path"], base)


def _is_path_key(key: str) -> bool:
    return (key in ("ingest.sources", "evaluate.sts", "evaluate.retrieval", "evaluate.wic")
            or (key.startswith("train.objectives.") and key.endswith(".data.path")))


def _rebase_value(raw: str, base: Path) -> str:
    """Rebase the path(s) in an override's raw YAML value (a path or a list of paths)."""
    value = _parse_value(raw)
    if isinstance(value, list):
        return json.dumps([_rebase(v, base) if isinstance(v, str) else v for v in value])
    return _rebase(value, base) if isinstance(value, str) else raw


def _rebase(path: str, base: Path) -> str:
    if not isinstance(path, str) or "://" in path or Path(path).is_absolute():
        return path
    try:
        return str((base / path).resolve())
    except (RuntimeError, OSError):  # a symlink loop: whoever reads the path reports it
        return str(base / path)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> CtxvecConfig:
    """Load a recipe, apply ``--set`` overrides, and validate the whole tree.

    Relative data paths in the recipe are resolved against the recipe's folder (so a recipe works
    from any cwd); paths given through overrides are resolved against the cwd.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: a recipe must be a mapping of sections, got {type(loaded)}")
        tree = loaded
        _resolve_paths(tree, p.parent.resolve())
    for assignment in overrides or []:
        # a path given on the command line is relative to the cwd, not to the recipe
        key, _, value = assignment.partition("=")
        if _is_path_key(key.strip()) and value and "://" not in value:
            value = _rebase_value(value, Path.cwd())
            assignment = f"{key}={value}"
        apply_override(tree, assignment)
    try:
        return CtxvecConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(e)) from None


def config_to_yaml(cfg: CtxvecConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flatten(cfg: CtxvecConfig) -> dict[str, Any]:
    """``{"train.lr": 5e-4, ...}``: the form MLflow params and manifests want."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = node

    walk("", cfg.model_dump(mode="json"))
    return out
