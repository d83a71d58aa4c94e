"""The ONNX format: one graph from token ids to ctxvec's sentence vector, checked in
onnxruntime against ctxvec before it is published.

The graph takes ``input_ids`` and ``attention_mask`` (and ``token_type_ids`` when the tokenizer
makes them), int64, shape (batch, sequence), both axes dynamic; it outputs
``sentence_embedding``, float32 (batch, dim): the transformer, ctxvec's pooling over the
non-padding tokens and, if ctxvec normalises, L2 normalisation, all inside the graph. Tokenising
(and truncating to ctxvec's window) stays outside it: the folder carries the tokenizer, set to
that window (``tokenizer_files``), and ``ctxvec_export.json`` names inputs, outputs and window.

Exporters: ``dynamo`` (default) is ``torch.onnx.export(dynamo=True)``, the exporter torch has
shipped as its default since 2.9, which captures the graph with ``torch.export``: a shape
condition in the model becomes a guard or an error, never a silent specialisation.
``torchscript`` is the older tracing exporter (``dynamo=False``): faster, but deprecated, and a
trace records Python-level branches as taken for the example input (so the example batch is
padded: the attention mask is exercised).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ctxvec.errors import UserInputError
from ctxvec.model.encoder import Encoder
from ctxvec.model.export.checks import check_texts, require_match
from ctxvec.model.export.tokenizer_files import save_tokenizer
from ctxvec.model.pooling import Pooling, pool

FORMAT = "onnx"
GRAPH_FILE = "model.onnx"
OUTPUT = "sentence_embedding"
OPSET = 18
INSTALL_HINT = "pip install 'ctxvec[onnx]'"
Exporter = Literal["dynamo", "torchscript"]
EXPORTERS: tuple[Exporter, ...] = ("dynamo", "torchscript")
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_SINGLE_FILE_BYTES = 1_500_000_000  # protobuf's limit is 2 GiB; larger weights go beside it


class OnnxMissingError(UserInputError):
    """The ONNX export needs onnx, onnxscript and onnxruntime (the ``onnx`` extra)."""


def require_onnx(exporter: Exporter) -> None:
    """Fail before any work when a package the export or its check needs is missing."""
    needed = ["onnx", "onnxruntime"] + (["onnxscript"] if exporter == "dynamo" else [])
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise OnnxMissingError(f"--format onnx needs {', '.join(missing)}: {INSTALL_HINT}")


class SentenceEmbedding(torch.nn.Module):
    """Token ids -> the pooled (and normalised) sentence vector, as ``Encoder.encode_ids``
    computes it: the module the graph is exported from."""

    def __init__(self, model: torch.nn.Module, pooling: Pooling, normalize: bool):
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            **extra).last_hidden_state  # (B, T, D)
        vecs = pool(hidden.float(), attention_mask, self.pooling)  # (B, D)
        if self.normalize:
            vecs = torch.nn.functional.normalize(vecs, p=2, dim=-1)
        return vecs


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hold back the exporters' chatter (deprecation notices, tracer warnings, torchvision
    operators it skips): the check after the export says whether the graph is right."""
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        onnx_log.setLevel(level)


def input_names(enc: Encoder) -> list[str]:
    made = set(enc.tokenizer.model_input_names)
    return [n for n in _INPUTS if n in made or n != "token_type_ids"]


def export_graph(enc: Encoder, path: Path, exporter: Exporter = "dynamo") -> list[str]:
    """Write the graph of ``enc`` to ``path``; -> its input names."""
    if enc.settings.pooling not in ("mean", "cls", "max"):
        raise UserInputError(f"the model pools with {enc.settings.pooling!r}, which the ONNX "
                             "export does not implement (it does mean, cls and max)")
    names = input_names(enc)
    module = SentenceEmbedding(enc.model, enc.settings.pooling, enc.settings.normalize).eval()
    # two texts of different lengths: the example batch is padded
    example = enc.tokenizer(["A river.", "She took out a loan from the bank by the river."],
                            padding=True, truncation=True, max_length=enc.settings.max_length,
                            return_tensors="pt")
    args = tuple(example[n] for n in names)
    common = {"input_names": names, "output_names": [OUTPUT], "opset_version": OPSET}
    if exporter == "dynamo":
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
        weight_bytes = sum(p.numel() * p.element_size() for p in enc.model.parameters())
        with _quiet():
            torch.onnx.export(module, args, str(path), dynamo=True, verbose=False,
                              dynamic_shapes={n: {0: batch, 1: seq} for n in names},
                              external_data=weight_bytes > _SINGLE_FILE_BYTES, **common)
    elif exporter == "torchscript":
        axes = {n: {0: "batch", 1: "sequence"} for n in names} | {OUTPUT: {0: "batch"}}
        with _quiet():
            torch.onnx.export(module, args, str(path), dynamo=False, dynamic_axes=axes,
                              **common)
    else:
        raise UserInputError(f"unknown ONNX exporter {exporter!r}: use one of "
                             f"{', '.join(EXPORTERS)}")
    return names


def run_graph(folder: Path, texts: list[str], names: list[str]) -> np.ndarray:
    """The graph's vectors for ``texts`` in onnxruntime, tokenised with the folder's own files
    as its users will: each text alone through the ``tokenizers`` library (``tokenizer.json``),
    then all of them as one padded batch through transformers' ``AutoTokenizer``."""
    # lazy: optional (the onnx extra), and only for this check
    import onnxruntime as ort
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    session = ort.InferenceSession(str(folder / GRAPH_FILE), providers=["CPUExecutionProvider"])
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    field = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
    out = []
    for text in texts:
        e = raw.encode(text)
        feed = {n: np.asarray([getattr(e, field[n])], dtype=np.int64) for n in names}
        out.append(session.run([OUTPUT], feed)[0][0])
    batch = AutoTokenizer.from_pretrained(str(folder))(texts, padding=True, truncation=True,
                                                      return_tensors="np")
    batched = session.run([OUTPUT], {n: batch[n].astype(np.int64) for n in names})[0]
    return np.concatenate([np.stack(out), batched])


def write_onnx_folder(enc: Encoder, folder: Path, meta: dict, exporter: Exporter) -> dict:
    """The graph, the tokenizer and the model's config in ``folder``; -> the graph's
    description (inputs, outputs, opset, exporter) for ``ctxvec_export.json``."""
    names = export_graph(enc, folder / GRAPH_FILE, exporter)
    save_tokenizer(enc.tokenizer, folder, enc.settings.max_length)
    enc.model.config.save_pretrained(str(folder))
    graph = {
        "file": GRAPH_FILE, "opset": OPSET, "exporter": exporter,
        "inputs": [{"name": n, "dtype": "int64", "shape": ["batch", "sequence"]}
                   for n in names],
        "outputs": [{"name": OUTPUT, "dtype": "float32", "shape": ["batch", enc.dim]}],
    }
    (folder / "README.md").write_text(_card(meta, graph))
    return graph


def check_onnx_folder(enc: Encoder, folder: Path, graph: dict) -> dict:
    """Compare the graph in onnxruntime with ``enc`` on the check texts (``run_graph``)."""
    texts = check_texts(enc.tokenizer, enc.settings.max_length)
    ours = enc.encode(texts)
    names = [i["name"] for i in graph["inputs"]]
    theirs = run_graph(folder, texts, names)
    import onnxruntime as ort  # lazy: see run_graph

    what = f"the ONNX graph ({graph['exporter']} exporter)"
    cos = require_match(np.concatenate([ours, ours]), theirs, what)
    return {"loaded_with": f"onnxruntime {ort.__version__}", "texts": len(texts),
            "min_cosine": cos}


def _card(meta: dict, graph: dict) -> str:
    s = meta["settings"]
    feeds = ", ".join(f'"{i["name"]}": enc["{i["name"]}"]' for i in graph["inputs"])
    return f"""# {meta['name']} (ONNX)

A sentence encoder exported by ctxvec {meta['versions']['ctxvec']} from `{meta['source']}` as one
ONNX graph (opset {graph['opset']}): token ids in, the {meta['dim']}-dimensional sentence vector out
({s['pooling']} pooling{', L2-normalised' if s['normalize'] else ''}, inside the graph).
Tokenise with the tokenizer in this folder, truncating to {s['max_length']} tokens as ctxvec does.

```python
import onnxruntime as ort
from transformers import AutoTokenizer

tok = AutoTokenizer.from_pretrained("path/to/this/folder")
session = ort.InferenceSession("path/to/this/folder/{GRAPH_FILE}")
enc = tok(["A river in Germany."], padding=True, truncation=True, return_tensors="np")
(vectors,) = session.run(["{OUTPUT}"], {{{feeds}}})
```

`ctxvec_export.json` describes the inputs and outputs and records the check against ctxvec.
"""
