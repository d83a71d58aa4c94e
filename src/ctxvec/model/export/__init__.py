"""Taking a model out of ctxvec: a folder that other tools load as ctxvec's encoder, giving
ctxvec's vectors.

``export_model(folder, fmt, out)`` loads the encoder folder (``minilm``, a model folder, or a
registry version the caller has already fetched) in fp32 on the CPU, writes the export into a
staging folder next to ``out``, loads it back the way its users will (sentence-transformers or
onnxruntime) and compares the vectors with ctxvec's own on a few texts, one longer than the
window; only an export that matches (cosine >= ``MIN_COSINE``) is renamed into place. The two
formats:

- ``sentence-transformers`` (``st_folder``): ``SentenceTransformer(out)`` with ctxvec's pooling,
  normalisation and window;
- ``onnx`` (``onnx_graph``): one graph, token ids -> the normalised sentence vector, with the
  tokenizer beside it.

``ctxvec_export.json`` in the folder records the source, the settings and the check.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers

from ctxvec import __version__
from ctxvec.errors import UserInputError
from ctxvec.model.encoder import Encoder
from ctxvec.model.export import onnx_graph, st_folder
from ctxvec.model.export.checks import MIN_COSINE, ExportCheckError
from ctxvec.model.export.staging import OutputExistsError, check_output, staged_dir

log = logging.getLogger(__name__)

FORMATS = (st_folder.FORMAT, onnx_graph.FORMAT)
EXPORTERS = onnx_graph.EXPORTERS
META_FILE = "ctxvec_export.json"

__all__ = ["EXPORTERS", "FORMATS", "MIN_COSINE", "ExportCheckError", "ExportResult",
           "OutputExistsError", "export_model"]


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and how well it reproduced ctxvec's vectors."""

    format: str
    out: str
    source: str
    dim: int
    pooling: str
    normalize: bool
    max_length: int
    loaded_with: str
    texts: int
    min_cosine: float
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def _meta(enc: Encoder, fmt: str, source: str, out: Path) -> dict:
    return {
        "format": fmt, "name": out.name, "source": source, "dim": enc.dim,
        "settings": asdict(enc.settings),
        "versions": {"ctxvec": __version__, "transformers": transformers.__version__,
                     "pytorch": torch.__version__},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def export_model(folder: Path, fmt: str, out: Path, *, source: str | None = None,
                 force: bool = False, exporter: onnx_graph.Exporter = "dynamo") -> ExportResult:
    """Export the encoder in ``folder`` as ``fmt`` into ``out`` (refused if it holds files,
    unless ``force``); ``source`` is the reference recorded in the export (default: the folder).
    Raises ``UserInputError`` for what the caller can fix, ``ExportCheckError`` if the export
    does not reproduce ctxvec's vectors (nothing is written then)."""
    t0 = time.perf_counter()
    if fmt not in FORMATS:
        raise UserInputError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == onnx_graph.FORMAT:
        onnx_graph.require_onnx(exporter)
    out = check_output(out, force)  # before the model loads: fail fast
    src = Path(folder).resolve()
    if out.resolve() == src or out.resolve() in src.parents:
        raise UserInputError(f"--out {out} holds the model being exported: choose another folder")
    enc = Encoder.load(folder, device="cpu", precision="fp32")
    if fmt == st_folder.FORMAT:
        st_folder.pooling_flag(enc.settings.pooling)
    meta = _meta(enc, fmt, source or str(folder), out)
    with staged_dir(out, force) as staging:
        log.info("export: writing %s to %s", fmt, staging)
        if fmt == st_folder.FORMAT:
            st_folder.write_st_folder(enc, staging, meta)
            check = st_folder.check_st_folder(enc, staging)
        else:
            meta["graph"] = onnx_graph.write_onnx_folder(enc, staging, meta, exporter)
            check = onnx_graph.check_onnx_folder(enc, staging, meta["graph"])
        meta["check"] = check | {"against": "ctxvec Encoder.encode, fp32, CPU",
                                 "threshold": MIN_COSINE}
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    s = enc.settings
    return ExportResult(fmt, str(out), meta["source"], enc.dim, s.pooling, s.normalize,
                        s.max_length, check["loaded_with"], check["texts"],
                        check["min_cosine"], round(time.perf_counter() - t0, 1))
