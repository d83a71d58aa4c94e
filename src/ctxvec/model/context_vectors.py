"""Context vectors of word occurrences: the token vectors of a character span, in its sentence.

This is the "I saw a saw" idea behind contextual encoders (Peters et al. 2018, ELMo; Devlin et
al. 2019, BERT): a static embedding gives both "saw"s one vector, while a transformer's hidden
states give each occurrence its own, shaped by the words around it, so the verb and the tool can
land far apart. WiC (Pilehvar & Camacho-Collados 2019) measures exactly that, and per-word
context vectors for a corpus (``ctxvec.embed.words``) are the same computation over many spans
per text; both go through ``occurrence_vectors`` so that they can never disagree.

An occurrence is a text and a character span ``(start, end)``. The text is cut into token windows
of the encoder's fast tokenizer (overlapping by ``stride`` tokens, as corpus chunks are, so a long
text loses no occurrence); the span is mapped to the subword tokens it overlaps through the
tokenizer's ``offset_mapping`` and read off the window where it has the most context on both
sides. Its vector is the mean of those tokens' hidden states (a word split into several pieces
gets the mean of its pieces), taken at one layer or averaged over several. Each window goes
through the model once however many spans it carries; windows are sorted by length and padded
per batch, as in ``Encoder.encode_ids``.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ctxvec.errors import UserInputError
from ctxvec.model.encoder import Encoder, pad_batch

Span = tuple[int, int]


class SpanError(UserInputError):
    """A character span that names no token of its text (empty, out of range, or cut off)."""


def check_layers(layers: int | Sequence[int], n_layers: int) -> list[int]:
    """``layers`` index the hidden states (0 = embeddings, n_layers = last; negatives count from
    the end, -1 = last); returns them as non-negative indexes, checked, duplicates dropped."""
    wanted = [layers] if isinstance(layers, int) else list(layers)
    if not wanted:
        raise UserInputError("no layer chosen: pick at least one (-1 = last)")
    n_states = n_layers + 1
    out: list[int] = []
    for layer in wanted:
        if not -n_states <= layer < n_states:
            raise UserInputError(
                f"layer {layer} does not exist: the model has {n_layers} layers, so pick one in "
                f"[{-n_states}, {n_layers}] (0 = embeddings, -1 = last)"
            )
        if layer % n_states not in out:
            out.append(layer % n_states)
    return out


@torch.inference_mode()
def layer_states(
    encoder: Encoder, input_ids: torch.Tensor, mask: torch.Tensor, layer_idx: Sequence[int]
) -> torch.Tensor:
    """One padded batch -> float32 token vectors (B, T, D): the mean of the hidden states
    ``layer_idx`` (from ``check_layers``). Only the last layer needs no ``output_hidden_states``,
    which saves keeping every layer's activations."""
    n_layers = int(encoder.model.config.num_hidden_layers)
    only_last = list(layer_idx) == [n_layers]
    device = encoder.device
    with torch.autocast(device.type, dtype=torch.bfloat16,
                        enabled=encoder.precision == "bf16"):
        result = encoder.model(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            output_hidden_states=not only_last,
        )
    if only_last:
        return result.last_hidden_state.float()
    states = [result.hidden_states[i].float() for i in layer_idx]  # each (B, T, D)
    return torch.stack(states).mean(dim=0)


@dataclass
class TokenWindows:
    """Token windows of several texts; per window its ids, token char offsets and text."""

    ids: list[list[int]]
    starts: list[np.ndarray]  # (T,) char start per token; special tokens have start == end
    ends: list[np.ndarray]
    text_of: list[int]
    lo: list[int]  # first / last character any real token of the window covers
    hi: list[int]


def token_windows(
    encoder: Encoder, texts: Sequence[str], max_tokens: int, stride: int
) -> TokenWindows:
    """Cut texts into overlapping token windows (``stride`` tokens shared), keeping each token's
    char offsets; corpus chunks (``embed.corpus.chunk_documents``) are these windows."""
    enc = encoder.tokenizer(
        list(texts),
        truncation=True,
        max_length=max_tokens,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        add_special_tokens=True,
    )
    win = TokenWindows([], [], [], [], [], [])
    for ids, offsets, t in zip(enc["input_ids"], enc["offset_mapping"],
                               enc["overflow_to_sample_mapping"], strict=True):
        arr = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        real = arr[arr[:, 1] > arr[:, 0]]
        win.ids.append(ids)
        win.starts.append(arr[:, 0])
        win.ends.append(arr[:, 1])
        win.text_of.append(int(t))
        win.lo.append(int(real[:, 0].min()) if len(real) else 0)
        win.hi.append(int(real[:, 1].max()) if len(real) else 0)
    return win


def _place(win: TokenWindows, candidates: list[int], his: list[int], start: int, end: int):
    """-> (window, token positions) for the span, or None if no token covers it.

    ``candidates`` are the text's windows in order and ``his`` their ``hi``. The best window
    holds the most of the span's tokens (all of them, unless the span is longer than the
    overlap), then the most context on its shorter side."""
    best = None
    for i in range(bisect.bisect_right(his, start), len(candidates)):
        w = candidates[i]
        if win.lo[w] >= end:
            break
        s, e = win.starts[w], win.ends[w]
        pos = np.flatnonzero((e > s) & (s < end) & (e > start))  # specials: s == e, never
        if not len(pos):
            continue
        real = np.flatnonzero(e > s)
        key = (len(pos), min(pos[0] - real[0], real[-1] - pos[-1]))
        if best is None or key > best[0]:
            best = (key, w, pos)
    return None if best is None else (best[1], best[2])


@torch.inference_mode()
def occurrence_vectors(
    encoder: Encoder,
    texts: Sequence[str],
    spans: Sequence[Sequence[Span]],
    layers: int | Sequence[int] = -1,
    max_tokens: int | None = None,
    stride: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """``spans[i]`` are character spans of ``texts[i]`` -> float32 (sum of len(spans[i]), D),
    text by text, span by span: each the mean of its subword vectors, averaged over ``layers``.

    ``max_tokens`` (default: the encoder's window) and ``stride`` (default a quarter of it) cut
    long texts as the corpus chunks are cut. Vectors are not normalised."""
    if len(texts) != len(spans):
        raise ValueError(f"{len(texts)} texts but {len(spans)} span lists")
    layer_idx = check_layers(layers, int(encoder.model.config.num_hidden_layers))
    n = sum(len(s) for s in spans)
    out = np.zeros((n, encoder.dim), dtype=np.float32)
    keep = [i for i, s in enumerate(spans) if s]  # texts without spans need no forward pass
    if not keep:
        return out
    max_tokens = min(max_tokens or encoder.settings.max_length, encoder.settings.max_length)
    stride = min(max_tokens // 4 if stride is None else stride, max_tokens // 2)
    win = token_windows(encoder, [texts[i] for i in keep], max_tokens, stride)
    by_text: list[list[int]] = [[] for _ in keep]
    for w, t in enumerate(win.text_of):
        by_text[t].append(w)

    # Occurrence -> (window, token positions), all checked before any forward pass.
    first = np.cumsum([0, *(len(s) for s in spans)])
    at_window: dict[int, list[tuple[int, np.ndarray]]] = {}
    for k, i in enumerate(keep):
        text, his = texts[i], [win.hi[w] for w in by_text[k]]
        for j, (start, end) in enumerate(spans[i]):
            occ = int(first[i]) + j
            if not 0 <= start < end <= len(text):
                raise SpanError(f"occurrence {occ}: span ({start}, {end}) is not inside its text "
                                f"of {len(text)} characters")
            placed = _place(win, by_text[k], his, start, end)
            if placed is None:
                raise SpanError(f"occurrence {occ}: span ({start}, {end}) {text[start:end]!r} "
                                "covers no token (whitespace only, or characters the tokenizer "
                                "drops)")
            at_window.setdefault(placed[0], []).append((occ, placed[1]))

    windows = sorted(at_window, key=lambda w: -len(win.ids[w]))  # longest first: OOM early
    pad_id = encoder.tokenizer.pad_token_id or 0
    bar = tqdm(total=len(windows), desc="context vectors", unit="window", disable=not progress,
               leave=False)
    for b in range(0, len(windows), batch_size):
        batch = windows[b : b + batch_size]
        input_ids, mask = pad_batch([win.ids[w] for w in batch], pad_id)
        hidden = layer_states(encoder, input_ids, mask, layer_idx).cpu()  # (B, T, D)
        for row, w in enumerate(batch):
            for occ, pos in at_window[w]:
                out[occ] = hidden[row, torch.from_numpy(pos)].mean(dim=0).numpy()
        bar.update(len(batch))
    bar.close()
    return out


def span_vectors(
    encoder: Encoder,
    texts: Sequence[str],
    spans: Sequence[Span],
    layer: int | Sequence[int] = -1,
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """Occurrence i is ``texts[i][spans[i][0]:spans[i][1]]`` -> float32 (N, D), the mean of its
    subword vectors at hidden layer ``layer`` (-1: the last; a list averages several layers).
    Vectors are not normalised. Each distinct text is encoded once, whatever its span count."""
    if len(texts) != len(spans):
        raise ValueError(f"{len(texts)} texts but {len(spans)} spans")
    unique: dict[str, int] = {}
    for t in texts:
        unique.setdefault(t, len(unique))
    grouped: list[list[Span]] = [[] for _ in unique]
    slot: list[tuple[int, int]] = []  # occurrence -> (distinct text, its span number)
    for t, span in zip(texts, spans, strict=True):
        u = unique[t]
        slot.append((u, len(grouped[u])))
        grouped[u].append(span)
    vecs = occurrence_vectors(encoder, list(unique), grouped, layer, batch_size=batch_size,
                              progress=progress)
    first = np.cumsum([0, *(len(g) for g in grouped)])
    return vecs[[int(first[u]) + j for u, j in slot]] if slot else vecs


def word_span(sentence: str, index: int) -> Span:
    """Character span of whitespace token ``index`` of ``sentence`` (WiC's word indices)."""
    spans: list[Span] = []
    pos = 0
    for word in sentence.split():
        start = sentence.index(word, pos)
        pos = start + len(word)
        spans.append((start, pos))
    if not 0 <= index < len(spans):
        raise SpanError(f"word index {index} is out of range: the sentence has {len(spans)} "
                        f"whitespace tokens: {sentence!r}")
    return spans[index]
