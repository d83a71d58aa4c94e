"""Reading a query vector from a file (``ctxvec query --vector-file``): light, so that a query
sent to a running server (``ctxvec.serve.client``) reads it without loading the search stack."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ctxvec.errors import UserInputError


class VectorFileError(UserInputError):
    """A vector file the caller can fix (missing, not numbers, wrong shape)."""


def read_query_vector(path: str | Path) -> np.ndarray:
    """A query vector from a file: ``.npy`` of shape (D,) or (1, D), or text holding D numbers
    separated by spaces, commas or newlines. The dimension is checked by the search."""
    p = Path(path)
    if not p.is_file():
        raise VectorFileError(f"vector file not found: {p}")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise VectorFileError(f"{p}: not a readable .npy array ({e})") from None
    else:
        try:
            fields = [f for f in re.split(r"[\s,]+", p.read_text(encoding="utf-8")) if f]
            arr = np.array([float(f) for f in fields], dtype=np.float32)
        except (UnicodeDecodeError, ValueError) as e:
            raise VectorFileError(f"{p}: expected numbers separated by spaces or commas ({e})") \
                from None
    if not np.issubdtype(arr.dtype, np.number):
        raise VectorFileError(f"{p}: holds {arr.dtype} values, not numbers")
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or arr.size == 0:
        raise VectorFileError(f"{p}: expected one vector of shape (D,) or (1, D), got {arr.shape}")
    return arr.astype(np.float32)
