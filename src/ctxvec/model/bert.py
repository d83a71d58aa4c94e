"""Build a BERT-family model for training: from scratch at a named size with a trained
tokenizer's vocabulary, or from a pretrained model folder (``model.init``: minilm, a folder, or a
registry version which the caller resolves into a folder and passes as ``init_dir``).

With an MLM objective the model is an ``*ForMaskedLM`` (its encoder is ``.base_model``); without
one it is the bare encoder. A sentence encoder such as MiniLM has no trained MLM head: the
encoder keeps its pretrained weights and only the small MLM head on top is new (randomly
initialised), which is logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ctxvec.artifacts import TokenizerArtifact
from ctxvec.config import ConfigError, CtxvecConfig
from ctxvec.model.encoder import EncoderSettings, load_tokenizer, read_settings
from ctxvec.model.refs import local_model_dir

log = logging.getLogger(__name__)


def build_model(cfg: CtxvecConfig, tokenizer_art: TokenizerArtifact | None, mlm: bool,
                init_dir: Path | None = None):
    """-> (tokenizer, model, encoder settings, parent reference or None).

    ``init_dir``: the local folder of ``model.init``, resolved by the caller (a registry
    reference can only be resolved above the model layer)."""
    from transformers import AutoModel, AutoModelForMaskedLM, BertConfig, BertForMaskedLM, BertModel
    from transformers.utils import logging as hf_logging

    mcfg = cfg.model
    if mcfg.init == "scratch":
        if tokenizer_art is None:
            raise ConfigError("model.init=scratch needs a tokenizer: run the tokenizer stage "
                              "(ctxvec tokenizer train) or use a pretrained model.init")
        tokenizer = load_tokenizer(Path(tokenizer_art.path))
        dims = mcfg.dims()
        if dims["hidden_size"] % dims["num_heads"]:
            raise ConfigError("model.hidden_size must be divisible by model.num_heads")
        config = BertConfig(
            vocab_size=len(tokenizer), hidden_size=dims["hidden_size"],
            num_hidden_layers=dims["num_layers"], num_attention_heads=dims["num_heads"],
            intermediate_size=dims["intermediate_size"], max_position_embeddings=mcfg.max_position,
            hidden_dropout_prob=mcfg.dropout, attention_probs_dropout_prob=mcfg.dropout,
            pad_token_id=tokenizer.pad_token_id,
        )
        config._attn_implementation = "sdpa"
        model = BertForMaskedLM(config) if mlm else BertModel(config, add_pooling_layer=False)
        settings = EncoderSettings(max_length=min(mcfg.max_position, 512))
        return tokenizer, model, settings, None
    if init_dir is None:  # minilm or a folder; a registry reference is refused with a message
        init_dir = local_model_dir(mcfg.init)
    tokenizer = load_tokenizer(init_dir)
    if tokenizer_art is not None and tokenizer_art.kind != "model":
        raise ConfigError(f"model.init={mcfg.init} brings its own vocabulary: set "
                          "tokenizer.source=model (a trained tokenizer needs model.init=scratch)")
    cls = AutoModelForMaskedLM if mlm else AutoModel
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = cls.from_pretrained(str(init_dir), attn_implementation="sdpa",
                                          output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    if mlm and any("cls.predictions" in k or "lm_head" in k for k in info["missing_keys"]):
        log.info("model: %s is pretrained but has no MLM head: the encoder keeps its pretrained "
                 "weights, a new MLM head (random init) is trained on top", mcfg.init)
    settings = read_settings(init_dir, model.config.max_position_embeddings)
    return tokenizer, model, settings, mcfg.init
