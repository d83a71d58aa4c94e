"""``ctxvec export``: a model as a folder other tools load, sentence-transformers or ONNX."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ctxvec.cli._common import JsonOpt, command, dump, workspace
from ctxvec.refs import ModelRef


class Format(StrEnum):  # ctxvec.model.export.FORMATS (copied: importing it loads torch)
    sentence_transformers = "sentence-transformers"
    onnx = "onnx"


class OnnxExporter(StrEnum):  # ctxvec.model.export.EXPORTERS
    dynamo = "dynamo"
    torchscript = "torchscript"


def _model_folder(model: str) -> tuple[Path, str]:
    """The local encoder folder MODEL names, and the reference the export records: a registry
    alias is recorded as the version it points at now."""
    mref = ModelRef.parse(model)
    if not mref.is_registry:
        from ctxvec.model.refs import local_model_dir  # lazy: keep start-up fast (torch)

        return local_model_dir(mref), str(mref)
    from ctxvec.registry import Registry  # lazy: keep start-up fast (mlflow)

    registry = Registry(workspace())
    info = registry.resolve(mref)
    return registry.local_dir(info), str(info.ref)


@command
def export(
    model: Annotated[str, typer.Argument(help="Model reference: minilm, a folder, "
                                         "models:/<name>/<N> or models:/<name>@<alias>.")],
    fmt: Annotated[Format, typer.Option("--format", "-f", help="sentence-transformers: a "
                                        "folder SentenceTransformer(DIR) loads; onnx: one "
                                        "graph, token ids -> sentence vector.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (must not hold "
                                      "files, unless --force).")],
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it holds files "
                                        "(only once the new export is complete).")] = False,
    onnx_exporter: Annotated[OnnxExporter, typer.Option(
        "--onnx-exporter", help="torch.onnx exporter: dynamo (torch.export) or torchscript "
        "(the older tracer).")] = OnnxExporter.dynamo,
    as_json: JsonOpt = False,
) -> str:
    """Export MODEL with ctxvec's pooling, normalisation and token window, so that other tools
    give ctxvec's vectors. The export is loaded back (sentence-transformers or onnxruntime) and
    compared with ctxvec's own fp32 vectors before it is written; the minimum cosine is
    printed."""
    from ctxvec.model.export import export_model  # lazy: keep start-up fast (torch)

    folder, source = _model_folder(model)
    result = export_model(folder, fmt.value, out, source=source, force=force,
                          exporter=onnx_exporter.value)
    if as_json:
        return dump(result.as_dict())
    r = result
    return (f"exported {r.source} as {r.format} to {r.out} ({r.seconds:.0f} s)\n"
            f"  dim {r.dim}, {r.pooling} pooling, "
            f"{'normalised' if r.normalize else 'not normalised'}, max {r.max_length} tokens\n"
            f"  checked with {r.loaded_with} on {r.texts} texts: min cosine to ctxvec "
            f"{r.min_cosine:.6f}")
