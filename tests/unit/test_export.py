"""`ctxvec export`: the exported folder, loaded by sentence-transformers or onnxruntime, gives
ctxvec's own vectors (``Encoder.encode`` in fp32), truncation included; a half-written export is
never left behind. Tiny real BERTs here; all-MiniLM-L6-v2 in the slow tier."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from ctxvec.model.encoder import SETTINGS_FILE, Encoder, EncoderSettings
from ctxvec.model.export import MIN_COSINE, ExportCheckError, OutputExistsError, export_model
from ctxvec.model.export.checks import require_match
from ctxvec.model.export.staging import staged_dir
from tests.helpers import tiny_bert

SENTENCES = [
    "the river flows past the old mill in the village",
    "she took out a loan from the bank by the river",
    "the fishermen waited on the muddy bank until the rain stopped",
    "a castle stands on the hill above the town",
]
WINDOW = 24  # shorter than the tiny model's 64 positions: the window, not the model, truncates
LONG = " ".join(SENTENCES * 3)  # about 60 tokens


def _texts() -> list[str]:
    return [*SENTENCES[:3], LONG]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("export") / "bert", SENTENCES)


def _model(tiny: Path, dest: Path, **settings) -> Path:
    """A copy of the tiny model whose ctxvec settings are ``settings`` (window ``WINDOW``)."""
    shutil.copytree(tiny, dest)
    s = EncoderSettings(**({"max_length": WINDOW} | settings))
    (dest / SETTINGS_FILE).write_text(json.dumps(asdict(s)))
    return dest


def _ours(model: Path, texts: list[str]) -> np.ndarray:
    enc = Encoder.load(model, device="cpu", precision="fp32")
    assert len(enc.tokenize([LONG])[0]) == WINDOW  # the long text is truncated by ctxvec
    return enc.encode(texts)


def _assert_same(ours: np.ndarray, theirs: np.ndarray) -> None:
    cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cos.min() >= MIN_COSINE, cos
    np.testing.assert_allclose(np.linalg.norm(theirs, axis=1), np.linalg.norm(ours, axis=1),
                               rtol=1e-4)


@pytest.mark.parametrize("pooling,normalize", [("mean", True), ("cls", True), ("max", False)])
def test_sentence_transformers_folder_gives_ctxvecs_vectors(tiny, tmp_path, pooling, normalize):
    sentence_transformers = pytest.importorskip("sentence_transformers",
                                                reason="sentence-transformers (dev extra)")
    model = _model(tiny, tmp_path / "model", pooling=pooling, normalize=normalize)
    out = tmp_path / "st"
    result = export_model(model, "sentence-transformers", out)
    assert result.loaded_with.startswith("sentence-transformers")
    assert result.min_cosine >= MIN_COSINE and (result.pooling, result.normalize) == (
        pooling, normalize)

    modules = [m["type"].rsplit(".", 1)[1] for m in json.loads((out / "modules.json").read_text())]
    assert modules == ["Transformer", "Pooling"] + (["Normalize"] if normalize else [])
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == WINDOW
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == WINDOW
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    assert not list(tmp_path.glob(".st.*"))  # the staging folder is gone
    (tmp_path / "new.txt").touch()  # every file has the mode a new file gets here (umask)
    modes = {p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert modes == {(tmp_path / "new.txt").stat().st_mode & 0o777}

    st = sentence_transformers.SentenceTransformer(str(out), device="cpu")
    assert st.max_seq_length == WINDOW
    texts = _texts()
    _assert_same(_ours(model, texts), st.encode(texts, convert_to_numpy=True))
    # and ctxvec reads the exported folder back with the same settings
    assert Encoder.load(out, device="cpu").settings == Encoder.load(model, device="cpu").settings


@pytest.mark.parametrize("exporter,pooling", [
    # the dynamo exporter (the default) takes ~20 s even on a tiny model: MiniLM goes through
    # it in the slow tier (test_minilm_exports_reproduce_ctxvec)
    pytest.param("dynamo", "mean", marks=pytest.mark.slow), ("torchscript", "cls")])
def test_onnx_graph_gives_ctxvecs_vectors(tiny, tmp_path, exporter, pooling):
    for module in ("onnx", "onnxruntime") + (("onnxscript",) if exporter == "dynamo" else ()):
        pytest.importorskip(module, reason=f"{module} (the onnx extra) is not installed")
    import onnxruntime as ort
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    model = _model(tiny, tmp_path / "model", pooling=pooling)
    out = tmp_path / "onnx"
    result = export_model(model, "onnx", out, exporter=exporter)
    assert result.loaded_with.startswith("onnxruntime") and result.min_cosine >= MIN_COSINE

    meta = json.loads((out / "ctxvec_export.json").read_text())
    assert meta["settings"] == {"pooling": pooling, "normalize": True, "max_length": WINDOW}
    assert meta["graph"]["exporter"] == exporter
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == [i["name"] for i in meta["graph"]["inputs"]] == ["input_ids",
                                                                     "attention_mask"]
    for i in session.get_inputs():  # batch and sequence axes are dynamic (symbolic)
        assert all(isinstance(d, str) for d in i.shape), i.shape

    # as users run it: the folder's tokenizer truncates to ctxvec's window by itself, read by
    # transformers (a padded batch) or by the tokenizers library (tokenizer.json, one by one)
    tok = AutoTokenizer.from_pretrained(str(out))
    texts = _texts()
    ours = _ours(model, texts)
    feed = tok(texts, padding=True, truncation=True, return_tensors="np")
    (theirs,) = session.run(["sentence_embedding"], {n: feed[n] for n in names})
    _assert_same(ours, theirs)
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    one_by_one = [session.run(["sentence_embedding"], {
        "input_ids": np.asarray([e.ids]), "attention_mask": np.asarray([e.attention_mask])})[0][0]
        for e in map(raw.encode, texts)]
    _assert_same(ours, np.stack(one_by_one))


def test_refusals_leave_nothing_behind(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not empty.*--force"):
        export_model(tiny, "sentence-transformers", out)
    with pytest.raises(ValueError, match="unknown export format 'gguf'"):
        export_model(tiny, "gguf", tmp_path / "other")
    for inside in (tiny, tiny.parent):  # --force never replaces the model being exported
        with pytest.raises(ValueError, match="holds the model being exported"):
            export_model(tiny, "sentence-transformers", inside, force=True)
    assert (tiny / "config.json").is_file()
    assert (out / "keep.txt").read_text() == "mine" and not (tmp_path / "other").exists()

    # a failure while writing: neither the staging folder nor a partial --out survives, and
    # with --force the old export is kept until a new one is complete
    for target in (out, tmp_path / "fresh"):
        with pytest.raises(RuntimeError, match="boom"), staged_dir(target, force=True) as d:
            (d / "half.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert (out / "keep.txt").read_text() == "mine" and not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_check_refuses_other_directions_and_lengths():
    rng = np.random.default_rng(0)
    ours = rng.normal(size=(4, 8)).astype(np.float32)
    ours /= np.linalg.norm(ours, axis=1, keepdims=True)
    assert require_match(ours, ours.copy(), "same") >= MIN_COSINE
    with pytest.raises(ExportCheckError, match="length ratio"):
        require_match(ours, 2 * ours, "unnormalised")  # same directions, other lengths
    with pytest.raises(ExportCheckError, match="min cosine"):
        require_match(ours, ours + 0.05 * rng.normal(size=ours.shape), "perturbed")


def test_cli_exit_codes_and_force(tiny, tmp_path):
    from typer.testing import CliRunner

    from ctxvec.cli import app

    def ctxvec(*args: str):
        return CliRunner().invoke(app, ["export", *map(str, args)])

    bad_format = ctxvec(tiny, "--format", "gguf", "--out", tmp_path / "x")
    assert bad_format.exit_code == 2 and "gguf" in bad_format.output
    missing = ctxvec(tmp_path / "nowhere", "--format", "onnx", "--out", tmp_path / "x")
    assert missing.exit_code == 2 and "unknown model reference" in missing.output
    out = tmp_path / "st"
    out.mkdir()
    (out / "old.txt").write_text("old")
    refused = ctxvec(tiny, "--format", "sentence-transformers", "--out", out)
    assert refused.exit_code == 2 and "--force" in refused.output
    assert not (tmp_path / "x").exists() and (out / "old.txt").is_file()

    done = ctxvec(tiny, "--format", "sentence-transformers", "--out", out, "--force", "--json")
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert summary["min_cosine"] >= MIN_COSINE and summary["source"] == str(tiny)
    assert not (out / "old.txt").exists() and (out / "modules.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["sentence-transformers", "onnx"])
def test_minilm_exports_reproduce_ctxvec(tmp_path, fmt):
    """all-MiniLM-L6-v2 (window 256) in both formats: the export's own check (one text longer
    than 256 tokens among its texts) and the numbers ``ctxvec export`` prints."""
    pytest.importorskip("sentence_transformers" if fmt != "onnx" else "onnxruntime")
    from ctxvec.model.refs import minilm_dir

    result = export_model(minilm_dir(), fmt, tmp_path / "out", source="minilm")
    assert (result.max_length, result.dim, result.pooling) == (256, 384, "mean")
    assert result.texts == 4 and result.min_cosine >= MIN_COSINE
