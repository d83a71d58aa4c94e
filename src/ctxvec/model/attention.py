"""Attention weights of one layer and head (or their mean), and a heatmap of them.

``attention_map`` returns plain data (tokens, a (T, T) matrix whose rows sum to 1), so the HTTP
API can send it as JSON and ``draw_attention`` can plot it; neither depends on the other.

PyTorch's fused attention (SDPA, our default) never materialises the weights, so a model asked
for ``output_attentions`` under SDPA returns none; the forward pass here runs with the eager
implementation (``set_attn_implementation("eager")``, restored afterwards), which computes the
same outputs and also returns softmax(QK^T / sqrt(d)) per head.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ctxvec.errors import UserInputError
from ctxvec.model.encoder import Encoder
from ctxvec.model.refs import local_model_dir
from ctxvec.refs import ModelRef

MAX_TOKENS = 64  # beyond this a heatmap's labels stop being readable


class AttentionError(UserInputError):
    """A text, layer or head that has no attention map (empty text, no such layer or head)."""


@dataclass(frozen=True)
class AttentionMap:
    tokens: list[str]
    weights: np.ndarray  # (T, T) float32: row i = how token i attends to every token
    layer: int  # 0-based transformer layer
    head: int | None  # None: the mean over heads
    n_layers: int
    n_heads: int
    truncated: bool  # the text had more than the tokens shown

    def to_dict(self, decimals: int = 4) -> dict:
        return {
            "tokens": self.tokens,
            "weights": np.round(self.weights.astype(np.float64), decimals).tolist(),
            "layer": self.layer,
            "head": "mean" if self.head is None else self.head,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "truncated": self.truncated,
        }

    def title(self, model: str = "") -> str:
        """A heatmap title that says what is drawn, and whether the text was cut."""
        head = "mean of heads" if self.head is None else f"head {self.head}"
        text = f"{model + ': ' if model else ''}layer {self.layer}, {head}"
        if self.truncated:
            text += f" (text truncated to its first {len(self.tokens)} tokens)"
        return text


def check_layer_head(layer: int, head: int | None, n_layers: int, n_heads: int) -> int:
    """-> the layer as a 0-based index; layers count transformer blocks (-1 = last)."""
    if not -n_layers <= layer < n_layers:
        raise AttentionError(f"layer {layer} does not exist: the model has {n_layers} layers, "
                             f"so pick one in [{-n_layers}, {n_layers - 1}] (-1 = last)")
    if head is not None and not 0 <= head < n_heads:
        raise AttentionError(f"head {head} does not exist: each layer has {n_heads} heads, so "
                             f"pick one in [0, {n_heads - 1}] or 'mean'")
    return layer % n_layers


@contextlib.contextmanager
def eager_attention(model) -> Iterator[None]:
    """Run the block with eager attention (which can return weights), then switch back."""
    before = model.config._attn_implementation
    if before == "eager":
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def load_encoder(model: str | Path | ModelRef | Encoder) -> Encoder:
    """An Encoder as is; a model folder (or ``minilm``) loaded eager. A registry reference is
    resolved into a folder by the caller (``Registry(ws).local_dir``) and refused here."""
    if isinstance(model, Encoder):
        return model
    return Encoder.load(local_model_dir(model), attn_implementation="eager")


@torch.inference_mode()
def attention_map(
    model: str | Path | ModelRef | Encoder,
    text: str,
    layer: int = -1,
    head: int | None = None,
    max_tokens: int = MAX_TOKENS,
) -> AttentionMap:
    """Attention of ``layer`` (-1 = last) and ``head`` (None = mean over heads) on ``text``,
    cut to its first ``max_tokens`` tokens (special tokens included)."""
    if not text or not text.strip():
        raise AttentionError("the text is empty")
    if max_tokens < 3:
        raise AttentionError(f"max_tokens must be at least 3, got {max_tokens}")
    encoder = load_encoder(model)
    config = encoder.model.config
    n_layers, n_heads = int(config.num_hidden_layers), int(config.num_attention_heads)
    layer_idx = check_layer_head(layer, head, n_layers, n_heads)

    enc = encoder.tokenizer(
        text, truncation=True, max_length=min(max_tokens, encoder.settings.max_length),
        return_overflowing_tokens=True, stride=0,
    )
    ids = enc["input_ids"][0]  # the first window; more windows mean the text was cut
    input_ids = torch.tensor([ids], device=encoder.device)
    with eager_attention(encoder.model):
        out = encoder.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                            output_attentions=True)
    per_head = out.attentions[layer_idx][0].float()  # (H, T, T)
    weights = per_head.mean(dim=0) if head is None else per_head[head]
    return AttentionMap(
        tokens=encoder.tokenizer.convert_ids_to_tokens(ids),
        weights=weights.cpu().numpy().astype(np.float32),
        layer=layer_idx, head=head, n_layers=n_layers, n_heads=n_heads,
        truncated=len(enc["input_ids"]) > 1,
    )


def draw_attention(tokens: Sequence[str], weights: np.ndarray, out_path: str | Path,
                   title: str = "") -> Path:
    """A heatmap PNG of ``weights`` (rows: attending tokens, columns: attended-to tokens),
    written under a temporary name and renamed, so ``out_path`` is never half a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    weights = np.asarray(weights, dtype=np.float32)
    n = len(tokens)
    if weights.shape != (n, n):
        raise ValueError(f"weights {weights.shape} do not match {n} tokens")
    out = Path(out_path)
    if out.suffix.lower() != ".png":
        raise AttentionError(f"{out} must end in .png: the heatmap is written as a PNG")
    out.parent.mkdir(parents=True, exist_ok=True)

    # A figure of its own (no pyplot state): safe from several threads of a server.
    side = min(max(4.0, 0.2 * n + 2.0), 16.0)  # inches; 64 tokens -> about 15
    fontsize = 9 if n <= 24 else 7 if n <= 48 else 6
    fig = Figure(figsize=(side + 1.5, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, aspect="equal",
                      interpolation="nearest")
    ax.set_xticks(range(n), labels=list(tokens), rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), labels=list(tokens), fontsize=fontsize)
    ax.set_xlabel("attended-to token")
    ax.set_ylabel("attending token")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="attention weight")
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
