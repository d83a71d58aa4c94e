"""``ctxvec encode``'s library half: lines in, one Parquet row per line out, in input order."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from ctxvec.embed.lines import LinesError, encode_lines, read_lines


class _FakeEncoder:
    """Stands in for Encoder (its contract: encode -> float32 (N, D)); the real one is covered
    by tests/integration/test_cli.py through `ctxvec encode`."""

    dim = 3

    def encode(self, texts, batch_size=64, progress=False):
        assert batch_size == 2
        return np.array([[len(t), i, 1.0] for i, t in enumerate(texts)], dtype=np.float32)


def test_rows_follow_the_lines_and_hold_their_vectors(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("un\ndeux trois\n\nquatre\n", encoding="utf-8")
    lines = read_lines(src)
    assert lines == ["un", "deux trois", "", "quatre"]
    out = tmp_path / "out.parquet"
    assert encode_lines(_FakeEncoder(), lines, out, batch_size=2) == 3
    table = pq.read_table(out).to_pydict()
    assert table["line"] == [1, 2, 3, 4] and table["text"] == lines
    assert table["vector"][1] == [10.0, 1.0, 1.0]
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no leftovers


def test_missing_or_non_utf8_input_is_a_user_error(tmp_path):
    with pytest.raises(LinesError, match="input file not found"):
        read_lines(tmp_path / "none.txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café\n".encode("latin-1"))
    with pytest.raises(LinesError, match=r"not valid UTF-8 \(byte 3\)"):
        read_lines(bad)
