"""A transformer-based sequential denoising auto-encoder (TSDAE; Wang, Reimers and Gurevych 2021,
"TSDAE: Using Transformer-based Sequential Denoising Auto-Encoder for Unsupervised Sentence
Embedding Learning"; sentence-transformers' DenoisingAutoEncoderLoss).

Input: single sentences (of the corpus). Each sentence is damaged by deleting words (each with
probability ``deletion_ratio``, 0.6 as in the paper; at least one word is kept), the encoder turns
the damaged sentence into one pooled vector, and a decoder must reconstruct the *original*
sentence token by token from that vector alone: its cross-attention sees a sequence of length
one. The loss is the decoder's cross-entropy (teacher forcing, padding ignored). What it teaches
is a sentence vector that holds the sentence's content, with no labels: a domain-adaptation
pre-step.

The decoder is a causal transformer of the encoder's architecture (``AutoModelForCausalLM`` with
``is_decoder`` and ``add_cross_attention``), initialised from the encoder's weights, its output
projection tied to the word embeddings. ``tie``: ``all`` shares every encoder weight with the
decoder except the new cross-attention (the paper's choice and sentence-transformers' default:
few extra weights); ``embeddings`` shares only the word embeddings (input and output) and gives
the decoder its own copy of the rest. The decoder is the objective's ``head``: its own weights
train with the encoder's and are checkpointed with the run, and never saved into the encoder.
Noise is drawn from the loop's generator, so a resumed run damages the same sentences alike.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ctxvec.model.pooling import pool
from ctxvec.train.objectives.sentences import SentenceView


def delete_words(text: str, ratio: float, generator: torch.Generator) -> str:
    """``text`` with each word deleted with probability ``ratio``; one word at least is kept."""
    words = text.split()
    if not words:
        return text
    keep = torch.rand(len(words), generator=generator) >= ratio
    if not keep.any():
        keep[int(torch.randint(len(words), (1,), generator=generator))] = True
    return " ".join(w for w, k in zip(words, keep.tolist(), strict=True) if k)


def _set_param(module: torch.nn.Module, name: str, param: torch.nn.Parameter) -> None:
    owner, _, attr = name.rpartition(".")
    setattr(module.get_submodule(owner) if owner else module, attr, param)


class Decoder(torch.nn.Module):
    """The causal decoder over the encoder's sentence vector. Only the weights it does not share
    with the encoder are its parameters (so that the optimizer and the checkpoint hold each weight
    once); the causal LM itself is held outside the module tree."""

    def __init__(self, encoder: torch.nn.Module, tie: str = "all"):
        super().__init__()
        from transformers import AutoModelForCausalLM  # lazy: only TSDAE builds a decoder

        config = copy.deepcopy(encoder.config)
        config.is_decoder, config.add_cross_attention = True, True
        lm = AutoModelForCausalLM.from_config(config)
        missing, _ = lm.base_model.load_state_dict(encoder.state_dict(), strict=False)
        if any("crossattention" not in k for k in missing):
            raise TypeError(f"TSDAE cannot build a decoder from {type(encoder).__name__}: its "
                            f"weights do not fit ({missing[:3]} ...)")
        shared = dict(encoder.named_parameters())
        for name in [n for n, _ in lm.base_model.named_parameters()]:
            if tie == "all" and name in shared:
                _set_param(lm.base_model, name, shared[name])
        embedding = encoder.get_input_embeddings().weight
        lm.get_input_embeddings().weight = embedding
        lm.get_output_embeddings().weight = embedding
        device = embedding.device
        self.__dict__["lm"] = lm.to(device)  # not a submodule: its shared weights are the encoder's
        ids = {id(p) for p in encoder.parameters()}
        self.own = torch.nn.ParameterDict({n.replace(".", "__"): p for n, p in lm.named_parameters()
                                           if id(p) not in ids})

    def train(self, mode: bool = True) -> Decoder:
        self.lm.train(mode)
        return super().train(mode)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, V) for ``ids`` given one (B, D) sentence vector each."""
        memory = vector[:, None, :]  # (B, 1, D): the only thing the decoder may look at
        out = self.lm(input_ids=ids, attention_mask=mask, encoder_hidden_states=memory,
                      encoder_attention_mask=torch.ones(memory.shape[:2], dtype=mask.dtype,
                                                        device=mask.device), use_cache=False)
        return out.logits


class TSDAE:
    name = "tsdae"

    def __init__(self, view: SentenceView, deletion_ratio: float = 0.6,
                 pooling: str = "model", tie: str = "all"):
        self.view, self.ratio, self.tie = view, deletion_ratio, tie
        self.pooling = view.pooling if pooling == "model" else pooling
        self.head: Decoder | None = None
        self.pad_id = view.tokenizer.pad_token_id

    def bind(self, model, device: torch.device) -> None:
        """Build the decoder from the encoder it will train with (on ``device``)."""
        self.head = Decoder(model.base_model, self.tie).to(device)

    def collate(self, examples: list[str]):
        texts = list(examples)
        return {**self.view.tokenize(texts), "texts": texts}

    def loss(self, model, batch, generator: torch.Generator) -> torch.Tensor:
        if self.head is None:
            raise RuntimeError("tsdae: bind(model, device) builds the decoder before training")
        encoder = model.base_model
        device = next(encoder.parameters()).device
        noisy = self.view.tokenize([delete_words(t, self.ratio, generator)
                                    for t in batch["texts"]])
        mask = noisy["attention_mask"].to(device)
        hidden = encoder(input_ids=noisy["input_ids"].to(device),
                         attention_mask=mask).last_hidden_state
        vector = pool(hidden, mask, self.pooling)  # (B, D)
        target = batch["input_ids"].to(device)
        target_mask = batch["attention_mask"].to(device)
        logits = self.head(target[:, :-1], target_mask[:, :-1], vector)  # (B, T - 1, V)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                               target[:, 1:].reshape(-1), ignore_index=self.pad_id)
