"""`ctxvec run --set embed.engine=ray` end to end, as a user runs it: the pipeline starts a local
Ray inside its embed task, and the index, the registry and the sample query take its output.

Slow (about a minute on 2 busy cores: the tiny pipeline plus Ray's start and its actors)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers import TINY, run_cli


@pytest.mark.slow
def test_pipeline_embeds_on_ray(tmp_path, prefect_api):
    pytest.importorskip("ray")
    home = tmp_path / "home"
    proc = run_cli(home, "run", "--config", str(TINY), "--set", "embed.engine=ray",
                   "--set", "evaluate.sts=null", "--json", prefect_api=prefect_api)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout)  # stdout holds the one JSON object, nothing from Ray
    emb, idx = out["embeddings"], out["index"]
    manifest = json.loads((Path(emb["path"]) / "manifest.json").read_text())
    assert manifest["engine"] == "ray" and manifest["ray"]["started_here"] is True
    assert manifest["ray"]["startup_seconds"] > 0 and manifest["words"]["docs"] > 0
    rows = sum(pq.ParquetFile(p).metadata.num_rows
               for p in Path(emb["path"]).glob("part-r*.parquet"))
    assert rows == emb["rows"] == idx["count"] > 0
    assert emb["docs"] == out["snapshot"]["corpus_docs"]
    assert out["sample_query"]["hits"]
