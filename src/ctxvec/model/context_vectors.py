"""Context vectors of word occurrences: the token vectors of a character span, in its sentence.

This is the "I saw a saw" idea behind contextual encoders (Peters et al. 2018, ELMo; Devlin et
al. 2019, BERT): a static embedding gives both "saw"s one vector, while a transformer's hidden
states give each occurrence its own, shaped by the words around it, so the verb and the tool can
land far apart. WiC (Pilehvar & Camacho-Collados 2019) measures exactly that, and per-word
context vectors for a corpus are the same computation over many spans per text.

An occurrence is a text and a character span ``(start, end)``. The text is run through the
encoder's fast tokenizer and model (no pooling over the sentence); the span is mapped to the
subword tokens it overlaps through the tokenizer's ``offset_mapping``, and their vectors are
averaged (a word split into several pieces gets the mean of its pieces). Each distinct text goes
through the model once however many spans it carries; texts are sorted by length and padded per
batch, as in ``Encoder.encode_ids``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ctxvec.errors import UserInputError
from ctxvec.model.encoder import Encoder, pad_batch


class SpanError(UserInputError):
    """A character span that names no token of its text (empty, out of range, or cut off)."""


def _token_range(offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Positions of the (non-special) tokens whose characters overlap [start, end)."""
    return [
        i for i, (s, e) in enumerate(offsets)
        if e > s and s < end and e > start  # special tokens have (0, 0): never selected
    ]


def _check_layer(layer: int, n_layers: int) -> int:
    """``layer`` indexes the hidden states (0 = embeddings, n_layers = last; negatives count
    from the end, -1 = last); returns the non-negative index."""
    n_states = n_layers + 1
    if not -n_states <= layer < n_states:
        raise UserInputError(
            f"layer {layer} does not exist: the model has {n_layers} layers, so pick one in "
            f"[{-n_states}, {n_layers}] (0 = embeddings, -1 = last)"
        )
    return layer % n_states


@torch.inference_mode()
def span_vectors(
    encoder: Encoder,
    texts: Sequence[str],
    spans: Sequence[tuple[int, int]],
    layer: int = -1,
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """Occurrence i is ``texts[i][spans[i][0]:spans[i][1]]`` -> float32 (N, D), the mean of its
    subword vectors at hidden layer ``layer`` (-1: the last). Vectors are not normalised."""
    if len(texts) != len(spans):
        raise ValueError(f"{len(texts)} texts but {len(spans)} spans")
    n_layers = int(encoder.model.config.num_hidden_layers)
    layer_idx = _check_layer(layer, n_layers)
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    if not texts:
        return out

    # Each distinct text is encoded once; its spans are read off the same hidden states.
    unique: dict[str, int] = {}
    for t in texts:
        unique.setdefault(t, len(unique))
    utexts = list(unique)
    enc = encoder.tokenizer(
        utexts,
        truncation=True,
        max_length=encoder.settings.max_length,
        add_special_tokens=True,
        return_offsets_mapping=True,
    )
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    # Occurrence -> token positions, checked before any forward pass.
    positions: list[list[int]] = []
    for i, (t, (start, end)) in enumerate(zip(texts, spans, strict=True)):
        if not 0 <= start < end <= len(t):
            raise SpanError(f"occurrence {i}: span ({start}, {end}) is not inside its text "
                            f"of {len(t)} characters")
        pos = _token_range(offsets[unique[t]], start, end)
        if not pos:
            raise SpanError(
                f"occurrence {i}: span ({start}, {end}) {t[start:end]!r} covers no token "
                f"(whitespace only, or past the {encoder.settings.max_length}-token window)"
            )
        positions.append(pos)
    by_text: list[list[int]] = [[] for _ in utexts]
    for i, t in enumerate(texts):
        by_text[unique[t]].append(i)

    order = np.argsort([-len(x) for x in ids], kind="stable")  # longest first: OOM early
    pad_id = encoder.tokenizer.pad_token_id or 0
    device = encoder.device
    use_bf16 = device.type == "cuda"
    bar = tqdm(total=len(utexts), desc="context vectors", unit="seq", disable=not progress,
               leave=False)
    for b in range(0, len(utexts), batch_size):
        batch = order[b : b + batch_size]
        input_ids, mask = pad_batch([ids[u] for u in batch], pad_id)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            result = encoder.model(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                output_hidden_states=layer_idx != n_layers,
            )
        hidden = result.last_hidden_state if layer_idx == n_layers else (
            result.hidden_states[layer_idx])
        hidden = hidden.float().cpu()  # (B, T, D)
        for row, u in enumerate(batch):
            for i in by_text[u]:
                out[i] = hidden[row, positions[i]].mean(dim=0).numpy()
        bar.update(len(batch))
    bar.close()
    return out


def word_span(sentence: str, index: int) -> tuple[int, int]:
    """Character span of whitespace token ``index`` of ``sentence`` (WiC's word indices)."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for word in sentence.split():
        start = sentence.index(word, pos)
        pos = start + len(word)
        spans.append((start, pos))
    if not 0 <= index < len(spans):
        raise SpanError(f"word index {index} is out of range: the sentence has {len(spans)} "
                        f"whitespace tokens: {sentence!r}")
    return spans[index]
