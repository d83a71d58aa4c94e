"""``run_train``: build or load an encoder, pack the snapshot, run the loop, save safetensors."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from ctxvec.artifacts import PackedData, Snapshot, TokenizerArtifact, TrainedModel
from ctxvec.config import ConfigError, CtxvecConfig, ModelConfig
from ctxvec.model.encoder import (
    EncoderSettings,
    load_tokenizer,
    pick_device,
    read_settings,
    save_encoder,
)
from ctxvec.model.refs import resolve_model_ref
from ctxvec.tokenizer.packing import read_packed
from ctxvec.train.loop import train
from ctxvec.train.mlm import MaskedLM
from ctxvec.workspace import Workspace, write_manifest

log = logging.getLogger(__name__)


def build_scratch_model(mcfg: ModelConfig, tokenizer):
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=mcfg.hidden_size,
        num_hidden_layers=mcfg.num_layers,
        num_attention_heads=mcfg.num_heads,
        intermediate_size=mcfg.intermediate_size,
        max_position_embeddings=mcfg.max_position,
        hidden_dropout_prob=mcfg.dropout,
        attention_probs_dropout_prob=mcfg.dropout,
        pad_token_id=tokenizer.pad_token_id,
    )
    config._attn_implementation = "sdpa"
    return BertForMaskedLM(config)


def load_pretrained_mlm(path: Path):
    from transformers import AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # a sentence encoder has no MLM head yet: it starts fresh
    return AutoModelForMaskedLM.from_pretrained(str(path), attn_implementation="sdpa")


def run_train(
    cfg: CtxvecConfig,
    ws: Workspace,
    snapshot: Snapshot,
    tokenizer_art: TokenizerArtifact,
    packed: PackedData | None,
) -> TrainedModel:
    started = time.time()
    tcfg = cfg.train
    torch.manual_seed(tcfg.seed)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    tokenizer = load_tokenizer(Path(tokenizer_art.path))
    parent: str | None = None
    if cfg.model.init == "scratch":
        model = build_scratch_model(cfg.model, tokenizer)
        settings = EncoderSettings(max_length=min(cfg.model.max_position, 512))
    else:
        parent = cfg.model.init
        init_dir = resolve_model_ref(cfg.model.init, ws.root)
        model = load_pretrained_mlm(init_dir)
        settings = read_settings(init_dir, model.config.max_position_embeddings)
        if model.config.vocab_size != len(tokenizer):
            raise ConfigError(
                f"model.init={cfg.model.init} has {model.config.vocab_size} tokens but the "
                f"tokenizer has {len(tokenizer)}: use tokenizer.source=model with a pretrained init"
            )
    device = pick_device(tcfg.device)
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("train: %s, %.1fM parameters, on %s", cfg.model.init, n_params / 1e6, device)

    # data: the packed sequences, with a held-out slice for the evaluation loss
    result = None
    objective = MaskedLM(tokenizer, tcfg.mask_prob)
    if tcfg.steps > 0 and packed is None:
        raise ValueError("run_train needs packed data when train.steps > 0")
    if packed is not None and packed.mode == "pair":
        raise ConfigError("pack.mode=pair makes sentence pairs; MLM trains on concat or doc")
    if tcfg.steps > 0:
        need = tcfg.steps * tcfg.batch_size * tcfg.grad_accum
        limit = int(need / max(1 - tcfg.eval_fraction, 0.5)) + 64
        data = torch.from_numpy(read_packed(packed.path, limit).astype(np.int64))
        if packed.seq_len > model.config.max_position_embeddings:
            raise ConfigError(
                f"train.seq_len={packed.seq_len} exceeds the model's "
                f"{model.config.max_position_embeddings} positions"
            )
        n_eval = int(len(data) * tcfg.eval_fraction)
        if tcfg.eval_fraction > 0 and len(data) >= 2:
            n_eval = max(n_eval, 1)
        gen = torch.Generator().manual_seed(tcfg.seed)
        perm = torch.randperm(len(data), generator=gen)
        eval_data, train_data = data[perm[:n_eval]], data[perm[n_eval:]]
        log.info("train: %d train / %d held-out sequences of %d tokens",
                 len(train_data), len(eval_data), packed.seq_len)
        result = train(model, objective, train_data, eval_data if n_eval else None, tcfg)
    else:
        log.info("train: train.steps=0, keeping %s's weights as they are", cfg.model.init)

    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    final = ws.runs / run_id
    with ws.stage_dir(final) as tmp:
        model.to("cpu")
        save_encoder(model, tokenizer, settings, tmp / "model")
        history = result.history if result else []
        (tmp / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
        write_manifest(
            tmp, "train", started,
            snapshot=snapshot.snapshot_id, tokenizer_sha256=tokenizer_art.sha256,
            packed=packed.path if packed else None,
            parent=parent, parameters=n_params, device=str(device),
            steps=result.steps if result else 0,
            tokens_seen=result.tokens_seen if result else 0,
            final_loss=result.final_loss if result else None,
            eval_loss=result.eval_loss if result else None,
            config={"model": cfg.model.model_dump(mode="json"),
                    "train": tcfg.model_dump(mode="json")},
        )
    return TrainedModel(
        run_dir=str(final),
        model_dir=str(final / "model"),
        steps=result.steps if result else 0,
        tokens_seen=result.tokens_seen if result else 0,
        final_loss=result.final_loss if result else None,
        eval_loss=result.eval_loss if result else None,
        parent=parent,
    )
