"""Masked-language-model objective with dynamic masking (Devlin et al., 2019, BERT).

Each time a batch is drawn, ``mask_prob`` of its non-special tokens are chosen; of those, 80% are
replaced by ``[MASK]``, 10% by a random token and 10% left as they are. The loss is cross-entropy
on the chosen positions only. Input: packed sequences (B, T) of token ids. Model: any
``*ForMaskedLM``.
"""

from __future__ import annotations

import torch

from ctxvec.errors import UserInputError


class MaskedLM:
    name = "mlm"

    def __init__(self, tokenizer, mask_prob: float = 0.15):
        self.mask_id = tokenizer.mask_token_id
        if self.mask_id is None:
            raise UserInputError("the tokenizer has no [MASK] token: it cannot train an MLM")
        self.vocab_size = len(tokenizer)
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.mask_prob = mask_prob
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else -1

    def mask(
        self, input_ids: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids (B, T) -> (masked inputs (B, T), labels (B, T) with -100 where unmasked)."""
        labels = input_ids.clone()
        special = torch.isin(input_ids, self.special_ids)  # (B, T)
        probs = torch.full(input_ids.shape, self.mask_prob)
        probs.masked_fill_(special, 0.0)
        chosen = torch.bernoulli(probs, generator=generator).bool()
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
        attention = (input_ids != self.pad_id).long()  # packed rows may end in padding
        inputs, labels = self.mask(input_ids, generator)
        inputs, labels = inputs.to(model.device), labels.to(model.device)
        out = model(input_ids=inputs, attention_mask=attention.to(model.device), labels=labels)
        return out.loss
