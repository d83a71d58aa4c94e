"""Stage records as JSON: the form in which a keyed stage's record is cached between runs.

A record is written as ``{"type": "<class name>", "fields": {...}}`` and read back only when its
type is one of the frozen records of ``ctxvec.artifacts`` and its fields are exactly that
record's, each of the declared type (strict: no coercion). Anything else (another type, a missing
or extra field, a string where a count belongs, bytes that are not JSON) is refused with
``RecordError``; nothing in the bytes is ever imported, called or unpickled. The Prefect flows
cache stage results in this form (``flows/caching.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from typing import Any

from ctxvec.artifacts import (
    Embeddings,
    EvalReport,
    IndexArtifact,
    MinedData,
    PackedData,
    RegisteredModel,
    Snapshot,
    TokenizerArtifact,
    TrainedModel,
)

# every record a keyed stage returns, by class name: the only types a cached record can be
RECORD_TYPES: dict[str, type] = {c.__name__: c for c in (
    Snapshot, TokenizerArtifact, PackedData, MinedData, TrainedModel, EvalReport,
    RegisteredModel, Embeddings, IndexArtifact)}


class RecordError(ValueError):
    """Bytes that are not a valid stage record."""


def dumps(record: Any) -> bytes:
    """A record of ``RECORD_TYPES`` as UTF-8 JSON bytes."""
    name = type(record).__name__
    if RECORD_TYPES.get(name) is not type(record):
        raise RecordError(f"not a stage record: {type(record).__qualname__}")
    return json.dumps({"type": name, "fields": record.to_dict()}, sort_keys=True,
                      allow_nan=True).encode("utf-8")


def loads(blob: bytes) -> Any:
    """The record ``dumps`` wrote; ``RecordError`` for anything else."""
    from pydantic import ValidationError  # lazy: pydantic only when reading a cache

    try:
        data = json.loads(blob)
    except (UnicodeDecodeError, ValueError) as e:
        raise RecordError(f"not JSON: {e}") from None
    if not isinstance(data, dict) or set(data) != {"type", "fields"}:
        raise RecordError("not a stage record: expected an object with 'type' and 'fields'")
    cls = RECORD_TYPES.get(data["type"]) if isinstance(data["type"], str) else None
    fields = data["fields"]
    if cls is None:
        raise RecordError(f"unknown record type {data['type']!r}")
    if not isinstance(fields, dict):
        raise RecordError(f"{cls.__name__}: 'fields' is not an object")
    names = {f.name for f in dataclasses.fields(cls)}
    if set(fields) != names:
        raise RecordError(f"{cls.__name__}: fields {sorted(fields)} are not {sorted(names)}")
    hints = typing.get_type_hints(cls)
    for name, value in fields.items():
        try:
            _adapter(hints[name]).validate_python(value, strict=True)
        except ValidationError as e:
            err = e.errors()[0]
            raise RecordError(f"{cls.__name__}.{name}: {err['msg']} at {err['loc']}") from None
    # the values as written (a whole number in a float field stays as the stage made it: the
    # record's identity feeds the keys of the stages after it)
    return cls(**fields)


@functools.cache
def _adapter(annotation: Any) -> Any:
    from pydantic import TypeAdapter  # lazy: pydantic only when reading a cache

    return TypeAdapter(annotation)
