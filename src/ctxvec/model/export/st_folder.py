"""The sentence-transformers format: a folder ``SentenceTransformer(DIR)`` loads as ctxvec's
encoder, in the module layout sentence-transformers has read since version 2 (and still reads).

The folder is the transformer (safetensors weights, config, tokenizer) at its root plus the
modules ctxvec applies after it, each with the setting ctxvec uses:

- ``modules.json``: Transformer -> Pooling -> Normalize (Normalize only if ctxvec normalises);
- ``sentence_bert_config.json``: ``max_seq_length`` = ctxvec's window (the tokenizer's
  ``model_max_length`` says the same, for sentence-transformers 6 and plain ``AutoTokenizer``
  users). Without it sentence-transformers falls back to the model's 512 positions;
- ``1_Pooling/config.json``: ctxvec's pooling (mean, cls or max); without it, mean;
- ``config_sentence_transformers.json``: cosine similarity, no prompts.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from ctxvec.errors import UserInputError
from ctxvec.model.encoder import Encoder
from ctxvec.model.export.checks import check_texts, require_match
from ctxvec.model.export.tokenizer_files import save_tokenizer

FORMAT = "sentence-transformers"

# ctxvec's pooling -> the flag in sentence-transformers' Pooling config
POOLING_FLAG = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
                "max": "pooling_mode_max_tokens"}
_ALL_FLAGS = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
              "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
              "pooling_mode_lasttoken")


class PoolingNotExpressible(UserInputError):
    """A pooling sentence-transformers' Pooling module has no mode for."""


def pooling_flag(pooling: str) -> str:
    if pooling not in POOLING_FLAG:
        raise PoolingNotExpressible(
            f"the model pools with {pooling!r}, which sentence-transformers cannot express (its "
            f"Pooling module does {', '.join(POOLING_FLAG)} as ctxvec does): export it as onnx, "
            "or re-save the encoder with one of those")
    return POOLING_FLAG[pooling]


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def save_transformer(enc: Encoder, folder: Path) -> None:
    """The encoder's weights (safetensors, fp32, without any MLM head) and its tokenizer, set to
    ctxvec's window (``tokenizer_files``)."""
    enc.model.save_pretrained(str(folder), safe_serialization=True)
    save_tokenizer(enc.tokenizer, folder, enc.settings.max_length)


def write_st_folder(enc: Encoder, folder: Path, meta: dict) -> None:
    """Write the sentence-transformers folder for ``enc`` into ``folder`` (which exists)."""
    s = enc.settings
    flag = pooling_flag(s.pooling)
    save_transformer(enc, folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
    ]
    if s.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir()  # Normalize has no settings: an empty folder
    _write_json(folder / "modules.json", modules)
    _write_json(folder / "sentence_bert_config.json",
                {"max_seq_length": s.max_length, "do_lower_case": False})
    _write_json(folder / "1_Pooling" / "config.json",
                {"word_embedding_dimension": enc.dim, **{f: f == flag for f in _ALL_FLAGS},
                 "include_prompt": True})
    _write_json(folder / "config_sentence_transformers.json", {
        "__version__": {k: v for k, v in meta["versions"].items() if k != "ctxvec"},
        "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"})
    (folder / "README.md").write_text(_card(meta))


def check_st_folder(enc: Encoder, folder: Path) -> dict:
    """Load the written folder as its users will and compare with ``enc`` on the check texts:
    with sentence-transformers when it is installed, else with ctxvec's own reader of the same
    files (which honours the same pooling, normalisation and window)."""
    texts = check_texts(enc.tokenizer, enc.settings.max_length)
    ours = enc.encode(texts)
    if importlib.util.find_spec("sentence_transformers") is not None:
        # lazy: sentence-transformers is optional (the dev extra); ctxvec never needs it
        import sentence_transformers
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        theirs = model.encode(texts, batch_size=8, convert_to_numpy=True,
                              show_progress_bar=False)
        loader = f"sentence-transformers {sentence_transformers.__version__}"
    else:
        theirs = Encoder.load(folder, device="cpu", precision="fp32").encode(texts)
        loader = "ctxvec's reader of the folder (sentence-transformers is not installed)"
    cos = require_match(ours, theirs, f"SentenceTransformer({folder.name})")
    return {"loaded_with": loader, "texts": len(texts), "min_cosine": cos}


def _card(meta: dict) -> str:
    s = meta["settings"]
    return f"""---
library_name: sentence-transformers
pipeline_tag: sentence-similarity
tags:
- sentence-transformers
- feature-extraction
- sentence-similarity
- ctxvec
---

# {meta['name']}

A sentence encoder exported by ctxvec {meta['versions']['ctxvec']} from `{meta['source']}`.

- embedding dimension: {meta['dim']}
- pooling: {s['pooling']}; normalised to unit length: {'yes' if s['normalize'] else 'no'}
- input window: {s['max_length']} tokens (longer texts are truncated, as in ctxvec)

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("path/to/this/folder")
vectors = model.encode(["A river in Germany.", "She took out a loan from the bank."])
```

The vectors match ctxvec's own (fp32) to cosine >= 0.9999; `ctxvec_export.json` records the check.
"""
