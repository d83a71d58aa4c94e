"""The records of a CSV or TSV file as raw bytes, one at a time, each of bounded size.

A record ends at a line end outside a quoted field; a field is quoted when it starts with ``"``,
and inside it ``""`` is a quote (the rules of Python's ``csv`` module). Splitting the file into
records before parsing them means one bad record (too long, undecodable, unbalanced quotes) is
rejected alone and the records after it are still read; a record over the limit is skipped as it
streams past, never held whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO

_PIECE = 1 << 16
# scanner states at a position of a record
FIELD_START, UNQUOTED, QUOTED, QUOTE_IN_QUOTED = range(4)


def scan(piece: bytes, state: int, delimiter: int) -> int:
    """The quoting state after ``piece`` (part of a record), from ``state`` before it."""
    pos, n, quote = 0, len(piece), 0x22
    while pos < n:
        if state == QUOTED:
            at = piece.find(b'"', pos)
            if at < 0:
                return QUOTED
            state, pos = QUOTE_IN_QUOTED, at + 1
        elif state == QUOTE_IN_QUOTED:
            # "" is a quote inside the field; anything else closes it
            state = QUOTED if piece[pos] == quote else UNQUOTED
            pos += piece[pos] == quote
        elif state == FIELD_START and piece[pos] == quote:
            state, pos = QUOTED, pos + 1
        else:  # unquoted: up to the next delimiter, or the line end
            at = piece.find(bytes((delimiter,)), pos)
            if at < 0:
                return FIELD_START if piece.endswith(b"\n") else UNQUOTED
            state, pos = FIELD_START, at + 1
    return state


def csv_records(f: IO[bytes], delimiter: str, max_bytes: int) -> Iterator[tuple[int, bytes | int]]:
    """``(first line, raw bytes)`` of each record of the file; ``(first line, size)`` for a
    record over ``max_bytes``. The last record may end inside a quoted field (the file ends
    there): the CSV parser then says what is wrong with it."""
    delim = ord(delimiter)
    lineno, start, state = 0, 1, FIELD_START
    parts: list[bytes] = []
    size = 0
    while piece := f.readline(_PIECE):
        size += len(piece)
        if size <= max_bytes:
            parts.append(piece)
        else:
            parts.clear()
        state = scan(piece, state, delim)
        if not piece.endswith(b"\n"):
            continue  # the rest of a long line follows (or the file ends here)
        lineno += 1
        if state == QUOTED:
            continue  # a line break inside a quoted field: the record goes on
        yield start, (b"".join(parts) if size <= max_bytes else size)
        parts, size, start, state = [], 0, lineno + 1, FIELD_START
    if size:
        yield start, (b"".join(parts) if size <= max_bytes else size)
