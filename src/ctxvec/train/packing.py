"""Pack a snapshot's documents into fixed-length training sequences.

Documents are tokenized without specials, concatenated with ``[SEP]`` between them, and cut into
windows of ``seq_len - 2`` tokens that are then framed as ``[CLS] ... [SEP]``. Packing wastes no
compute on padding, which is what MLM pretraining wants.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ctxvec.errors import UserInputError


def pack_sequences(
    texts: Iterable[str], tokenizer, seq_len: int, max_sequences: int | None = None
) -> torch.Tensor:
    """-> LongTensor (N, seq_len) of packed token ids."""
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        raise UserInputError("the tokenizer needs [CLS] and [SEP] tokens to frame MLM sequences")
    body = seq_len - 2
    stream: list[int] = []
    rows: list[list[int]] = []
    batch: list[str] = []

    def consume(batch: list[str]) -> None:
        for ids in tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]:
            if not ids:
                continue
            stream.extend(ids)
            stream.append(sep_id)
        while len(stream) >= body:
            rows.append([cls_id, *stream[:body], sep_id])
            del stream[:body]

    for text in texts:
        batch.append(text)
        if len(batch) == 256:
            consume(batch)
            batch = []
            if max_sequences is not None and len(rows) >= max_sequences:
                break
    if batch:
        consume(batch)
    if max_sequences is not None:
        rows = rows[:max_sequences]
    if not rows:
        raise UserInputError(
            f"the corpus is too small to fill one training sequence of {seq_len} tokens; "
            "lower train.seq_len or add documents"
        )
    return torch.tensor(rows, dtype=torch.long)
