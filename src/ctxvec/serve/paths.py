"""What the HTTP API shows of the server's files: names relative to the workspace or the corpus,
never the absolute paths that tell a caller how the server's disk is laid out.

- ``WorkspacePaths``: registry tags (``index_uri``, ...) and error messages name workspace
  folders relative to the workspace (``indexes/v1``); an absolute path outside it is shown by
  its last component.
- ``SourceNames``: a hit's ``source`` (the file a document was ingested from) is shown relative
  to the folder all the corpus's source files share (one file: its name, ``wiki_00.gz``; a
  wikiextractor tree: ``AA/wiki_00``). A ``source`` filter takes the name shown, as it takes
  any trailing part of the stored path (``ctxvec.index.id_map.path_matches``).

``ctxvec query`` is the local user's own tool and keeps the full paths (``SourceNames.stored``
turns a server's answer back into them). This module imports nothing heavy, for that client.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ctxvec.workspace import Workspace

log = logging.getLogger(__name__)

_ABSOLUTE = re.compile(r"^(/|[A-Za-z]:[\\/]|file:/)")


def _last_part(value: str) -> str:
    return value.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]


class WorkspacePaths:
    """Workspace paths and URIs shown relative to the workspace."""

    def __init__(self, ws: Workspace):
        root = str(ws.root).rstrip("/")
        homes = [root, Path(root).as_uri(), f"file://{root}"] + ([ws.uri.rstrip("/")]
                                                                if ws.uri else [])
        self._homes = sorted(set(homes), key=len, reverse=True)  # longest first

    def relative(self, value: str) -> str:
        """A path or URI inside the workspace -> relative to it; another absolute path -> its
        last component; anything else unchanged."""
        for home in self._homes:
            if value == home:
                return "."
            if value.startswith(home + "/"):
                return value[len(home) + 1:]
        return _last_part(value) if _ABSOLUTE.match(value) else value

    def scrub(self, message: str) -> str:
        """A message with every mention of the workspace's location made relative."""
        for home in self._homes:
            message = message.replace(home + "/", "").replace(home, ".")
        return message

    def tags(self, tags: Mapping[str, str]) -> dict[str, str]:
        return {k: self.relative(v) for k, v in tags.items()}


class SourceNames:
    """A corpus's source files, each shown relative to the folder they all share."""

    def __init__(self, sources: Iterable[str]):
        files = sorted(set(sources))
        dirs = [f.split("/")[:-1] for f in files]
        common = dirs[0] if dirs else []
        for parts in dirs[1:]:
            n = 0
            while n < min(len(common), len(parts)) and common[n] == parts[n]:
                n += 1
            common = common[:n]
        cut = len(common)
        self._shown = {f: "/".join(f.split("/")[cut:]) for f in files}
        self._stored = {shown: f for f, shown in self._shown.items()}

    @classmethod
    def of_corpus(cls, corpus: Iterable[str | Path]) -> SourceNames:
        """The source files the snapshot manifests of ``corpus`` (local folders) list."""
        files: list[str] = []
        for folder in corpus:
            try:
                manifest = json.loads((Path(folder) / "manifest.json").read_text("utf-8"))
                files += [f["path"] for f in manifest["files"]]
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("serve: no source list in %s (%s): sources are shown by name",
                            folder, e)
        return cls(files)

    def shown(self, source: str) -> str:
        return self._shown.get(source) or _last_part(source)

    def stored(self, shown: str) -> str:
        """The stored path of a name ``shown`` gave (itself when unknown)."""
        return self._stored.get(shown, shown)
