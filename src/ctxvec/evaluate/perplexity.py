"""MLM pseudo-perplexity: how well a masked language model predicts held-out text.

A masked LM defines no left-to-right probability, so ordinary perplexity does not apply. Salazar
et al. (2020), "Masked Language Model Scoring", score a sequence by masking each token in turn and
summing the log-probability the model gives the true token (the pseudo-log-likelihood, PLL);
pseudo-perplexity is ``PPPL = exp(-sum PLL / number of tokens)``. Lower is better; 1 is perfect,
and a model guessing uniformly scores the vocabulary size.

Input: a UTF-8 text file with one passage per line (WikiText-2 ``valid.txt`` / ``test.txt``, or
``wiki.test.raw`` with CRLF endings). Blank lines and WikiText section headers (`` = = Title = =
``) are skipped. Each passage is tokenised without special tokens and cut into windows of
``max_length - 2`` tokens, each scored as ``[CLS] window [SEP]`` with no context from its
neighbours; [CLS] and [SEP] themselves are never scored. Every scored token costs one forward
pass (the window with that one position masked), so ``max_tokens`` caps the cost: scoring stops
after exactly that many tokens. Masked copies of one or several windows are batched together.

The checkpoint needs a trained MLM head. One without (a sentence-transformers model such as
``minilm``) still runs, with a randomly initialised head (seeded, so the figure repeats), and a
warning says the figure is then meaningless.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ctxvec.errors import DataFormatError, UserInputError
from ctxvec.model.encoder import load_tokenizer, pick_device

log = logging.getLogger(__name__)

HEADER = re.compile(r"^(= )+.*?( =)+$")  # WikiText: "= Title =", "= = Section = =", ...
HEAD_SEED = 0  # a missing MLM head is initialised from this seed, so the figure repeats


def read_passages(path: str | Path) -> list[str]:
    """Non-blank lines that are not WikiText section headers (CRLF or LF endings)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"text file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")  # universal newlines: \r\n and \n alike
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path} is not valid UTF-8 (byte {e.start})") from None
    passages = []
    for line in text.split("\n"):
        line = line.strip()
        if line and not HEADER.match(line):
            passages.append(line)
    if not passages:
        raise DataFormatError(f"{path}: no text (only blank lines and section headers)")
    return passages


def load_mlm(model_dir: str | Path):
    """AutoModelForMaskedLM, warning when the checkpoint carries no trained MLM head."""
    from transformers import AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # we report a missing head ourselves, once and plainly
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(HEAD_SEED)
        model, info = AutoModelForMaskedLM.from_pretrained(
            str(model_dir), output_loading_info=True)
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.endswith("position_ids"))
    head = [k for k in missing if k.startswith(("cls.predictions", "lm_head", "vocab_"))]
    if head:
        log.warning(
            "perplexity: %s has no trained masked-LM head (%d head weights missing, e.g. %s); "
            "it was initialised at random, so the pseudo-perplexity says nothing about the "
            "model", model_dir, len(head), head[0])
    elif missing:
        log.warning("perplexity: %d weights missing from %s, initialised at random (e.g. %s)",
                    len(missing), model_dir, missing[0])
    return model


def _windows(
    passages: list[str], tokenizer, width: int, max_tokens: int
) -> Iterator[tuple[int, list[int]]]:
    """(passage index, content token ids) windows of at most ``width`` tokens, stopping once
    ``max_tokens`` tokens have been handed out (the last window is cut to fit)."""
    left = max_tokens
    for start in range(0, len(passages), 256):
        chunk = passages[start : start + 256]
        ids = tokenizer(chunk, add_special_tokens=False)["input_ids"]
        for offset, seq in enumerate(ids):
            for w in range(0, len(seq), width):
                window = seq[w : w + width][:left]  # non-empty: left > 0 here
                yield start + offset, window
                left -= len(window)
                if left == 0:
                    return


def _head(model):
    """The MLM head as a module on hidden states, where the architecture has one (BERT's
    ``cls``, RoBERTa's ``lm_head``): scoring only the masked rows avoids (B, T, V) logits."""
    for name in ("cls", "lm_head"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    return None


@torch.inference_mode()
def _masked_log_probs(model, head, input_ids, mask, rows, cols, targets) -> torch.Tensor:
    """log p(target) at (rows, cols) of a batch whose masked positions are (rows, cols)."""
    if head is not None:
        hidden = model.base_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        logits = head(hidden[rows, cols])  # (B, V)
    else:
        logits = model(input_ids=input_ids, attention_mask=mask).logits[rows, cols]
    return torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)


def evaluate_perplexity(
    model_dir: str | Path,
    path: str | Path,
    max_tokens: int = 20000,
    max_length: int = 128,
    batch_size: int = 64,
    device: str = "auto",
) -> dict[str, float]:
    """-> {"pseudo_perplexity", "tokens", "passages"} over the first ``max_tokens`` tokens."""
    if max_tokens < 1:
        raise UserInputError(f"max_tokens must be at least 1, got {max_tokens}")
    if batch_size < 1:
        raise UserInputError(f"batch_size must be at least 1, got {batch_size}")
    if max_length < 3:
        raise UserInputError(f"max_length must be at least 3 ([CLS] token [SEP]), got {max_length}")
    passages = read_passages(path)
    model = load_mlm(model_dir)
    limit = int(model.config.max_position_embeddings)
    if max_length > limit:
        log.info("perplexity: windows cut to the model's %d positions (max_length %d)",
                 limit, max_length)
        max_length = limit
    tokenizer = load_tokenizer(Path(model_dir))
    if tokenizer.mask_token_id is None:
        raise UserInputError(f"the tokenizer of {model_dir} has no mask token: not a masked LM")
    dev = pick_device(device)
    model = model.to(dev).eval()
    head = _head(model)
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    mask_id, pad_id = tokenizer.mask_token_id, tokenizer.pad_token_id or 0

    # One row per scored token: (window with specials, position to mask).
    total_pll = 0.0
    tokens = 0
    seen: set[int] = set()
    rows: list[tuple[list[int], int]] = []
    bar = tqdm(total=max_tokens, desc="pseudo-perplexity", unit="tok", leave=False)

    def flush() -> None:
        nonlocal total_pll
        longest = max(len(seq) for seq, _ in rows)
        input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for r, (seq, _) in enumerate(rows):
            input_ids[r, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            mask[r, : len(seq)] = 1
        r_idx = torch.arange(len(rows))
        c_idx = torch.as_tensor([pos for _, pos in rows], dtype=torch.long)
        targets = input_ids[r_idx, c_idx].clone()
        input_ids[r_idx, c_idx] = mask_id  # one mask per row
        logp = _masked_log_probs(model, head, input_ids.to(dev), mask.to(dev), r_idx.to(dev),
                                 c_idx.to(dev), targets.to(dev))
        total_pll += float(logp.double().sum())
        bar.update(len(rows))
        rows.clear()

    for passage, window in _windows(passages, tokenizer, max_length - 2, max_tokens):
        seen.add(passage)
        seq = [cls_id, *window, sep_id]
        for pos in range(1, len(seq) - 1):
            rows.append((seq, pos))
            tokens += 1
            if len(rows) == batch_size:
                flush()
    if rows:
        flush()
    bar.close()
    if tokens == 0:
        raise DataFormatError(f"{path}: the tokenizer of {model_dir} makes no token of its text")
    pppl = math.exp(-total_pll / tokens)
    log.info("perplexity: %.3f over %d tokens in %d passages", pppl, tokens, len(seen))
    return {"pseudo_perplexity": pppl, "tokens": tokens, "passages": len(seen)}
