"""Masked-language-model objective with dynamic masking (Devlin et al., 2019, BERT).

Each time a batch is drawn, ``mask_prob`` of its non-special tokens are chosen; of those, 80% are
replaced by ``[MASK]``, 10% by a random token and 10% left as they are. The loss is cross-entropy
on the chosen positions only. With ``whole_word``, words are chosen instead of tokens and every
subword of a chosen word is masked (the whole-word masking of the BERT authors' 2019 release).
Input: packed sequences (B, T) of token ids. Model: any ``*ForMaskedLM``.
"""

from __future__ import annotations

import torch

from ctxvec.errors import UserInputError


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to the device without waiting: from pinned memory the copy is queued
    behind the GPU's work instead of blocking the CPU until that work is done."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def continuation_ids(tokenizer) -> torch.Tensor:
    """Bool (V,): tokens that continue a word (WordPiece '##x'; BPE/Unigram tokens without the
    word-start marker 'Ġ' or '▁')."""
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    wordpiece = any(t.startswith("##") for t in tokens)
    out = torch.zeros(len(tokenizer), dtype=torch.bool)
    specials = set(tokenizer.all_special_tokens)
    for t, i in vocab.items():
        if t in specials or i >= len(out):
            continue
        out[i] = t.startswith("##") if wordpiece else not t.startswith(("Ġ", "▁"))
    return out


class MaskedLM:
    name = "mlm"
    head = None

    def __init__(self, tokenizer, mask_prob: float = 0.15, whole_word: bool = False):
        self.mask_id = tokenizer.mask_token_id
        if self.mask_id is None:
            raise UserInputError("the tokenizer has no [MASK] token: it cannot train an MLM")
        self.vocab_size = len(tokenizer)
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.mask_prob = mask_prob
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else -1
        self.continuation = continuation_ids(tokenizer) if whole_word else None

    def collate(self, examples) -> torch.Tensor:
        """Packed rows (numpy int32 (T,) each) -> LongTensor (B, T)."""
        import numpy as np

        return torch.from_numpy(np.stack(examples).astype(np.int64))

    def _choose(self, input_ids: torch.Tensor, special: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        """Bool (B, T): the positions whose tokens become prediction targets."""
        if self.continuation is None:
            probs = torch.full(input_ids.shape, self.mask_prob)
            probs.masked_fill_(special, 0.0)
            return torch.bernoulli(probs, generator=generator).bool()
        cont = self.continuation[input_ids.clamp(max=len(self.continuation) - 1)] & ~special
        start = ~cont & ~special  # (B, T) first token of a word
        word = torch.cumsum(start.long(), dim=1)  # (B, T) word number, 0 before the first word
        pick = torch.bernoulli(torch.full(input_ids.shape, self.mask_prob), generator=generator)
        picked_start = pick.bool() & start
        per_word = torch.zeros(input_ids.shape[0], input_ids.shape[1] + 1, dtype=torch.bool)
        per_word.scatter_(1, word * start, picked_start)  # word w chosen <=> its start picked
        per_word[:, 0] = False
        return per_word.gather(1, word) & ~special
    def mask(
        self, input_ids: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids (B, T) -> (masked inputs (B, T), labels (B, T) with -100 where unmasked)."""
        labels = input_ids.clone()
        special = torch.isin(input_ids, self.special_ids)  # (B, T)
        chosen = self._choose(input_ids, special, generator)
        if not chosen.any():  # an all-unmasked batch has no loss; mask one token instead
            candidates = (~special).nonzero()
            if len(candidates):
                chosen[tuple(candidates[0])] = True
        labels[~chosen] = -100
        inputs = input_ids.clone()
        # 80% of chosen -> [MASK]
        replace = torch.bernoulli(torch.full(inputs.shape, 0.8), generator=generator).bool()
        replace &= chosen
        inputs[replace] = self.mask_id
        # half of the remaining 20% -> a random token; the rest stay unchanged
        randomize = torch.bernoulli(torch.full(inputs.shape, 0.5), generator=generator).bool()
        randomize &= chosen & ~replace
        inputs[randomize] = torch.randint(
            self.vocab_size, inputs.shape, generator=generator, dtype=torch.long
        )[randomize]
        return inputs, labels

    def loss(self, model, input_ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        padded = input_ids == self.pad_id  # packed rows may end in padding
        inputs, labels = self.mask(input_ids, generator)
        device = next(model.parameters()).device
        # Always an explicit mask, even without padding: measured on an H200 (BERT-base, bf16,
        # compiled), SDPA's memory-efficient kernel with a mask ran 17% faster than the flash
        # kernel it picks without one, attention dropout included.
        attention = to_device((~padded).long(), device)
        inputs = to_device(inputs, device)
        head = getattr(model, "cls", None)  # BERT's MLM head
        if head is None:  # another architecture: let it compute every position's logits
            return model(input_ids=inputs, attention_mask=attention,
                         labels=to_device(labels, device)).loss
        # Only the masked positions need vocabulary logits: projecting the other 85% onto the
        # vocabulary would be a fifth of the step's FLOPs, all thrown away. The positions are
        # found on the CPU, where the masks were drawn, so the GPU is never waited for.
        flat = labels.view(-1)
        where = (flat != -100).nonzero().squeeze(1)  # (M,)
        hidden = model.base_model(input_ids=inputs, attention_mask=attention).last_hidden_state
        picked = hidden.reshape(-1, hidden.shape[-1])[to_device(where, device)]
        logits = head(picked)  # (M, V)
        return torch.nn.functional.cross_entropy(logits.float(), to_device(flat[where], device))
