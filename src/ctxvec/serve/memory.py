"""Handing memory the encoder freed back to the operating system while the server runs.

Under load the server's resident memory grew from 668 to 1,485 MB in 60 s (32 clients). The
cause is glibc's malloc, not a cache of ours: every batch has another shape (its number of texts
times its longest text), and the encoder's activations (megabytes each) are freed at the end of
the forward pass. glibc serves a large block with ``mmap`` and returns it on free, but each such
free raises its ``mmap`` threshold (up to 32 MB) to the freed size, so from then on the
activations come from the heap, where blocks of ever-different sizes fragment it and the freed
space is kept. Measured on the encoder alone (all-MiniLM-L6-v2, batches of 1 to 32 texts of 3 to
60 words, one thread): 448 -> 761 MB after 40 batches; with ``malloc_trim(0)`` every 8 batches
486 MB for 0.4 s more system time; with the ``mmap`` threshold pinned (128 KB to 4 MB) 487 to
524 MB, but every activation then costs fresh page faults (4 to 5.5 s more system time).

So the micro-batcher calls ``release_free_memory`` between batches, at most every
``TRIM_EVERY_S``: the free pages of every malloc arena go back to the system, the memory in use
stays. Elsewhere than glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

TRIM_EVERY_S = 2.0  # between two trims, at most: one costs a few ms to ~0.1 s of system time


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_free_memory() -> bool:
    """Give the free pages of every malloc arena back to the system; False where that is not
    possible (not glibc)."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
