"""The elements of a JSON array, read from a stream one at a time.

A file holding one JSON array is not parsed whole: ``array_elements`` finds where each element of
the top-level array starts and ends (tracking strings, escapes and bracket depth, with a counter,
not recursion) and hands back its raw bytes, so memory is bounded by the largest element kept. An
element over ``max_bytes`` is skipped as it streams past, and comes back as its size alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO

_STRUCTURE = re.compile(rb'["\[\]{},]')  # bytes that matter outside a string
# a string's content up to its closing quote (escapes included) or a backslash ending the chunk
_STRING_BODY = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
# a whole element that is an object without nested objects or arrays, and the separator after
# it: most corpora hold such elements, and one match takes each (the general scan does the rest)
_FLAT_ELEMENT = re.compile(
    rb'[ \t\r\n]*(\{[^"\[\]{}]*(?:"[^"\\]*(?:\\.[^"\\]*)*"[^"\[\]{}]*)*\})[ \t\r\n]*([,\]])',
    re.DOTALL)
_SPACE = b" \t\r\n"
_CHUNK = 1 << 16


class ArrayError(ValueError):
    """The file is not one well-formed JSON array (elements before the damage were yielded)."""


class _Element:
    """The bytes of the element being read, or only its size once it is over the limit."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.size <= self.max_bytes:
            self.parts.append(data)
        else:
            self.parts.clear()

    def take(self) -> bytes | int | None:
        """The element's bytes (None if it is only white space), or its size if too big."""
        size, raw = self.size, b"".join(self.parts).strip(_SPACE)
        self.parts, self.size = [], 0
        if size > self.max_bytes:
            return size
        return raw or None


def array_elements(f: IO[bytes], max_bytes: int) -> Iterator[bytes | int]:
    """The raw bytes of each element of the JSON array that ``f`` holds, in order; the size (an
    int) instead of the bytes of an element over ``max_bytes``. Raises ``ArrayError`` when the
    file does not hold one array: no ``[`` first, mismatched brackets, an end inside the array or
    text after it."""
    split = _Splitter(max_bytes)
    started = False
    while chunk := f.read(_CHUNK):
        if not started:
            chunk = chunk.lstrip(_SPACE)
            if not chunk:
                continue
            if chunk[:1] != b"[":
                raise ArrayError("the file does not start with '['")
            started, chunk = True, chunk[1:]
        yield from split.feed(chunk)
    if not split.ended:
        raise ArrayError("the file ends inside the array" if started else "no '[' in the file")


class _Splitter:
    """Cuts the content of an array (after its ``[``), fed chunk by chunk, into elements."""

    def __init__(self, max_bytes: int):
        self.elem = _Element(max_bytes)
        self.depth, self.in_string, self.escaped, self.ended = 1, False, False, False

    def feed(self, chunk: bytes) -> Iterator[bytes | int]:
        if self.ended:
            if chunk.strip(_SPACE):
                raise ArrayError("text after the end of the array")
            return
        n, elem = len(chunk), self.elem
        pos = seg = 0  # seg: where the part of the element not yet added starts
        if self.escaped:  # the byte after a backslash that ended the previous chunk
            self.escaped, pos = False, 1
        while pos < n:
            if pos == seg and self.depth == 1 and not self.in_string and not elem.size:
                flat = _FLAT_ELEMENT.match(chunk, pos)
                if flat is not None:
                    raw = flat.group(1)
                    yield raw if len(raw) <= elem.max_bytes else len(raw)
                    pos = seg = flat.end()
                    if flat.group(2) == b"]":
                        self._end(chunk[pos:])
                        return
                    continue
            if self.in_string:
                end = _STRING_BODY.match(chunk, pos).end()  # type: ignore[union-attr]
                if end == n or chunk[end] == 0x5C:  # the chunk ends in the string
                    self.escaped = end < n
                    break
                self.in_string, pos = False, end + 1  # past the closing quote
                continue
            m = _STRUCTURE.search(chunk, pos)
            if m is None:
                break
            at = m.start()
            byte, pos = chunk[at], at + 1
            if byte == 0x22:  # "
                self.in_string = True
            elif byte in b"[{":
                self.depth += 1
            elif byte in b"]}":
                self.depth -= 1
            if self.depth == 0 or (byte == 0x2C and self.depth == 1):  # an element ends
                elem.add(chunk[seg:at])
                seg = pos
                if (item := elem.take()) is not None:
                    yield item
                if self.depth == 0:
                    if byte != 0x5D:
                        raise ArrayError("mismatched brackets")
                    self._end(chunk[pos:])
                    return
        elem.add(chunk[seg:])

    def _end(self, rest: bytes) -> None:
        if rest.strip(_SPACE):
            raise ArrayError("text after the end of the array")
        self.depth, self.ended = 0, True
