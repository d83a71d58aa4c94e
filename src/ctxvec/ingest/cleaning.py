"""Text cleaning and the filters that decide which documents a snapshot keeps.

Cleaning is deterministic and idempotent (``clean(clean(x)) == clean(x)``), so a document's content
hash is the same in every snapshot that sees it: NFKC normalisation, control characters removed
(tabs and newlines become spaces and paragraph breaks), runs of spaces collapsed, at most one blank
line between paragraphs.
"""

from __future__ import annotations

import re
import unicodedata

from ctxvec.config import IngestConfig

_SPACES = re.compile(r"[^\S\n]+")  # whitespace other than newline
_BLANKS = re.compile(r"\n\s*\n+")
_REDIRECT = re.compile(r"^\s*#?\s*redirect\b", re.IGNORECASE)
# C0/C1 control characters except \n and \t (which are whitespace), lone surrogates, zero-width
# characters and the byte-order mark, and the two Unicode non-characters.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u200b-\u200d\ufeff\ufffe\uffff]")


def clean_text(text: str, nfkc: bool = True) -> str:
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = _BLANKS.sub("\n\n", text)
    return text.strip()


def filter_reason(text: str, cfg: IngestConfig) -> str | None:
    """Why a cleaned document is filtered out, or None to keep it."""
    if not text:
        return "empty text"
    if cfg.drop_redirects and _REDIRECT.match(text):
        return "redirect stub"
    if len(text) < cfg.min_chars:
        return f"shorter than ingest.min_chars={cfg.min_chars}"
    if cfg.max_chars is not None and len(text) > cfg.max_chars:
        return f"longer than ingest.max_chars={cfg.max_chars}"
    return None
