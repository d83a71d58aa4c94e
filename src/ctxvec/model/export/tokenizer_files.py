"""The exported tokenizer, set to ctxvec's window wherever a loader looks for one.

Three readers, three places: transformers' ``AutoTokenizer`` and sentence-transformers 6 read
``model_max_length`` from ``tokenizer_config.json``; the ``tokenizers`` library (what ONNX
deployments in Rust, Node or plain Python use) reads the truncation and padding stored in
``tokenizer.json``. A saved tokenizer keeps whatever its source carried there (all-MiniLM-L6-v2
ships truncation at 128 and fixed padding to 128), so each is rewritten here.
"""

from __future__ import annotations

import json
from pathlib import Path


def save_tokenizer(tokenizer, folder: Path, max_length: int) -> None:
    """Save ``tokenizer`` into ``folder``: truncation at ``max_length`` tokens, padding to the
    longest sequence of a batch. The caller's tokenizer object is left as it was."""
    tokenizer.save_pretrained(str(folder))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["model_max_length"] = max_length
    if "max_length" in config:  # transformers 5 mirrors tokenizer.json's truncation here
        config["max_length"] = max_length
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    fast = folder / "tokenizer.json"
    if fast.is_file():
        from tokenizers import Tokenizer  # lazy: only exports touch tokenizer.json directly

        tok = Tokenizer.from_file(str(fast))
        tok.enable_truncation(max_length=max_length)
        pad = tokenizer.pad_token or "[PAD]"
        tok.enable_padding(pad_id=tokenizer.pad_token_id or 0, pad_token=pad)
        tok.save(str(fast))
