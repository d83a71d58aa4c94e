"""Model references: parsed once into a ``ModelRef``, printed back canonically, and refused with a
message naming the input; the model layer loads only ``minilm`` and folders."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ctxvec.errors import UserInputError
from ctxvec.model.refs import local_model_dir, minilm_dir
from ctxvec.refs import ModelRef, ModelRefError

SRC = Path(__file__).resolve().parents[2] / "src" / "ctxvec"


@pytest.mark.parametrize("text, kind, name, version, alias", [
    ("minilm", "minilm", None, None, None),
    ("models:/ctxvec-encoder@champion", "registry", "ctxvec-encoder", None, "champion"),
    ("models:/ctxvec-encoder/12", "registry", "ctxvec-encoder", "12", None),
    ("  models:/m.v2@challenger ", "registry", "m.v2", None, "challenger"),
])
def test_parse_and_str_round_trip(text, kind, name, version, alias):
    ref = ModelRef.parse(text)
    assert (ref.kind, ref.name, ref.version, ref.alias) == (kind, name, version, alias)
    assert str(ref) == text.strip()
    assert ModelRef.parse(str(ref)) == ref
    assert ModelRef.parse(ref) is ref  # parsing a parsed reference is the identity


def test_a_folder_is_a_path_reference(tmp_path):
    ref = ModelRef.parse(str(tmp_path))
    assert ref.kind == "path" and ref.path == tmp_path and str(ref) == str(tmp_path)
    assert ModelRef.parse(str(ref)) == ref and ModelRef.parse(tmp_path) == ref
    assert not ref.is_registry and not ref.is_pinned
    assert ModelRef.parse("~/m").path == Path("~/m").expanduser()


def test_registered_builds_what_parse_reads():
    pinned = ModelRef.registered("enc", version=3)
    assert str(pinned) == "models:/enc/3" and pinned.is_pinned
    alias = ModelRef.registered("enc", alias="champion")
    assert str(alias) == "models:/enc@champion" and alias.is_registry and not alias.is_pinned
    assert alias.pinned("4") == ModelRef.parse("models:/enc/4")
    assert hash(pinned) == hash(ModelRef.parse("models:/enc/3"))  # frozen: usable as a key


@pytest.mark.parametrize("bad", [
    "models:/", "models:/enc", "models:/enc/latest", "models:/enc@", "models:/a/b/c",
    "models:/enc/1@x", "models:/@champion", "s3://bucket/model", "models:enc@x",
])
def test_bad_references_are_refused_naming_the_input(bad):
    with pytest.raises(ModelRefError) as e:
        ModelRef.parse(bad)
    assert repr(bad.strip()) in str(e.value)
    assert isinstance(e.value, UserInputError)  # the CLI's exit code 2, the API's 4xx


def test_empty_and_non_text_references_are_refused():
    with pytest.raises(ModelRefError, match="empty model reference"):
        ModelRef.parse("  ")
    with pytest.raises(ModelRefError, match="42"):
        ModelRef.parse(42)  # type: ignore[arg-type]
    with pytest.raises(ModelRefError, match="version or an alias"):
        ModelRef.registered("enc")
    with pytest.raises(ModelRefError, match="version or an alias"):
        ModelRef.registered("enc", version="1", alias="champion")
    with pytest.raises(ModelRefError, match="not a registry reference"):
        ModelRef.parse("minilm").pinned("1")


def test_the_model_layer_refuses_registry_references():
    with pytest.raises(ModelRefError, match=r"models:/enc@champion is a registry reference.*"
                       r"Registry\(ws\)\.local_dir"):
        local_model_dir("models:/enc@champion")
    with pytest.raises(ModelRefError, match="registry reference"):
        local_model_dir(ModelRef.registered("enc", version=2))


def test_the_model_layer_resolves_minilm_and_folders(tmp_path):
    assert local_model_dir("minilm") == minilm_dir()
    (tmp_path / "config.json").write_text("{}")
    assert local_model_dir(str(tmp_path)) == tmp_path.resolve()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelRefError, match="holds no config.json"):
        local_model_dir(empty)
    with pytest.raises(ModelRefError, match="'/no/such/model'"):
        local_model_dir("/no/such/model")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_registry_imports_mlflow_and_refs_import_neither_layer():
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if p.parent.name != "registry"
                 and any(n == "mlflow" or n.startswith("mlflow.") for n in _imports(p))]
    assert offenders == []
    refs = _imports(SRC / "refs.py")
    assert not any(n.startswith(("ctxvec.model", "ctxvec.registry")) for n in refs)
