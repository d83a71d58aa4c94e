"""Builders several test modules share: a tiny real BERT, a tiny trained-and-registered model,
and the CLI run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def tiny_bert(folder: Path, sentences: Sequence[str], with_head: bool = False,
              vocab_size: int = 150) -> Path:
    """A real two-layer, two-head BERT (random weights) with a WordPiece vocabulary learnt from
    ``sentences``, saved as an encoder folder any model reference accepts."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertForMaskedLM, BertModel

    from ctxvec.model.encoder import EncoderSettings, save_encoder
    from ctxvec.tokenizer.trainer import SPECIALS, add_bert_template, to_fast_tokenizer

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(list(sentences) * 3, trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False))
    add_bert_template(tok)
    tokenizer = to_fast_tokenizer(tok, 64)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    model = BertForMaskedLM(config) if with_head else BertModel(config)
    save_encoder(model, tokenizer, EncoderSettings(max_length=64), folder)
    return folder


def train_tiny(cfg, ws):
    """ingest -> tokenizer -> pack -> train -> evaluate, in process, as the pipeline runs them
    -> (snapshot, tokenizer, trained model, evaluation report), ready to register."""
    from ctxvec.evaluate.run import run_evaluate
    from ctxvec.ingest.snapshot import run_ingest
    from ctxvec.tokenizer.packing import run_pack
    from ctxvec.tokenizer.trainer import run_tokenizer
    from ctxvec.train.run import run_train

    snap = run_ingest(cfg, ws)
    tok = run_tokenizer(cfg, ws, snap)
    trained = run_train(cfg, ws, snap, tok, run_pack(cfg, ws, snap, tok))
    return snap, tok, trained, run_evaluate(cfg, ws, trained)


def cli_env(home: Path, prefect_api: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a CLI process on workspace ``home``: none of this process's MLflow
    or Prefect settings, so it runs on the workspace's embedded MLflow store, and on the
    Prefect server ``prefect_api`` (the session's, tests/conftest.py) if given, else on
    Prefect's embedded default (an ephemeral server of its own); plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    env["CTXVEC_HOME"] = str(home)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    if prefect_api:
        env["PREFECT_API_URL"] = prefect_api
    return env | extra


def run_cli(home: Path, *args: str, timeout: int = 600,
            prefect_api: str | None = None) -> subprocess.CompletedProcess:
    """``python -m ctxvec.cli ARGS`` on workspace ``home`` (see ``cli_env``): commands that run
    a flow (run, update) report to ``prefect_api`` if given, else to an ephemeral server."""
    env = cli_env(home, prefect_api)
    return subprocess.run([sys.executable, "-m", "ctxvec.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
