"""Embedding a plain text file line by line (``ctxvec encode``): one Parquet row per line.

Unlike the corpus embeddings (``embed/corpus.py``: chunks of documents, sharded and resumable),
this is for small ad-hoc inputs, so that a user can embed a list of sentences without ingesting
them first. The output keeps the input's order: row ``i`` is line ``i + 1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ctxvec.errors import UserInputError
from ctxvec.workspace import atomic_write_bytes

if TYPE_CHECKING:
    from ctxvec.model.encoder import Encoder


class LinesError(UserInputError):
    """The text file to embed is missing or is not UTF-8."""


def read_lines(path: Path) -> list[str]:
    """Every line of a UTF-8 text file, checked before a model is loaded so bad input fails fast."""
    if not path.is_file():
        raise LinesError(f"input file not found: {path}")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise LinesError(f"{path} is not valid UTF-8 (byte {e.start})") from None


def lines_table(lines: list[str], vectors: np.ndarray, dim: int) -> pa.Table:
    """Columns line (1-based), text and vector (fixed-size list of float32), one row per line."""
    assert vectors.size == len(lines) * dim, (vectors.shape, len(lines), dim)  # (N, D)
    return pa.table({
        "line": pa.array(range(1, len(lines) + 1), pa.int64()),
        "text": lines,
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
    })


def encode_lines(encoder: Encoder, lines: list[str], output: Path, batch_size: int = 64) -> int:
    """Embed ``lines`` and write them to ``output`` atomically (a reader never sees half a file);
    returns the vector dimension."""
    vectors = encoder.encode(lines, batch_size=batch_size, progress=True)
    sink = pa.BufferOutputStream()
    pq.write_table(lines_table(lines, vectors, encoder.dim), sink)
    atomic_write_bytes(output, sink.getvalue().to_pybytes())
    return encoder.dim
