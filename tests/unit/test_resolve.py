"""The one place a command's --model becomes a folder, an encoder, an indexed registry reference
or the label its embeddings carry."""

from __future__ import annotations

import pytest

from ctxvec.refs import ModelRef, ModelRefError
from ctxvec.serve.resolve import champion_ref, embedding_label, indexed_ref, model_dir


def test_indexed_ref_defaults_to_the_champion_and_refuses_what_has_no_index():
    assert indexed_ref(None, "my-encoder") == champion_ref("my-encoder") == \
        ModelRef.registered("my-encoder", alias="champion")
    assert str(champion_ref("my-encoder")) == "models:/my-encoder@champion"
    assert indexed_ref("models:/x/3", "my-encoder") == ModelRef.registered("x", version=3)
    for ref in ("minilm", "/some/folder"):
        with pytest.raises(ModelRefError, match="only registered versions have an index"):
            indexed_ref(ref, "my-encoder")


def _folder(tmp_path, name, weights: bytes):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(weights)
    return d


def test_folder_labels_differ_by_place_and_weights_and_are_stable(workspace, tmp_path):
    a = _folder(tmp_path, "enc", b"1234")
    assert model_dir(workspace, str(a)) == a.resolve()
    label = embedding_label(workspace, str(a), a)
    assert label.startswith("enc-") and label == embedding_label(workspace, str(a), a)
    (tmp_path / "other").mkdir()
    b = _folder(tmp_path / "other", "enc", b"1234")
    assert embedding_label(workspace, str(b), b) != label  # same name, another folder
    (a / "model.safetensors").write_bytes(b"12345")
    assert embedding_label(workspace, str(a), a) != label  # retrained in place
    assert embedding_label(workspace, "minilm", a) == "minilm"
