"""Multiple-negatives ranking at a large batch on small memory: gradient caching (GradCache; Gao,
Zhang, Han and Callan 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup"; sentence-transformers' CachedMultipleNegativesRankingLoss).

Input: the same ``(anchor, positive, *negatives)`` examples as ``mnrl``, and the same loss and
gradients at the same batch: the in-batch negatives come from the whole batch, while the encoder
runs with gradients on at most ``mini_batch_size`` texts at once. Three passes:

1. embed every text in chunks of ``mini_batch_size`` without a graph, keeping each chunk's RNG
   state (so that dropout draws the same masks again in 3);
2. compute the loss over the whole batch from those vectors and its gradient with respect to
   them (cheap: the vectors are leaves; the encoder is not involved);
3. when the loop back-propagates, run each chunk again with a graph and back-propagate
   ``<vectors, cached gradient>`` through it, one chunk at a time: the encoder's gradient is the
   full loss's, by the chain rule.

The loop's contract is kept: ``loss`` returns the real loss value as a leaf tensor whose backward
hook runs pass 3, scaled by whatever multiplies it (the task weight, ``1 / grad_accum``), so the
loop calls ``backward()`` as for any other objective. Not under DDP (``train.nproc_per_node`` > 1):
the chunked backward happens outside the graph DDP synchronises.
"""

from __future__ import annotations

import contextlib
from functools import partial

import torch

from ctxvec.config import ConfigError
from ctxvec.model.pooling import pool
from ctxvec.train import distributed
from ctxvec.train.objectives.mnrl import Example, ranking_loss, split_examples
from ctxvec.train.objectives.sentences import SentenceView


class RandState:
    """The CPU and CUDA generator states at one moment, restorable later without disturbing the
    states around the restore (as torch.utils.checkpoint does for recomputation)."""

    def __init__(self, device: torch.device):
        self.cpu = torch.get_rng_state()
        self.cuda = device.type == "cuda"
        self.devices = [device.index or 0] if self.cuda else []
        self.gpu = [torch.cuda.get_rng_state(d) for d in self.devices]

    @contextlib.contextmanager
    def restored(self):
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            for d, state in zip(self.devices, self.gpu, strict=True):
                torch.cuda.set_rng_state(state, d)
            yield


def chunks(enc: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    """Row slices of a tokenized batch, each cut to its own longest sequence."""
    out = []
    for begin in range(0, len(enc["input_ids"]), size):
        mask = enc["attention_mask"][begin : begin + size]
        width = int(mask.sum(dim=1).max())
        out.append({"input_ids": enc["input_ids"][begin : begin + size, :width],
                    "attention_mask": mask[:, :width]})
    return out


class CachedMultipleNegativesRanking:
    name = "cached_mnrl"
    head = None

    def __init__(self, view: SentenceView, scale: float = 20.0, symmetric: bool = False,
                 mini_batch_size: int = 32):
        if distributed.current().size > 1:
            raise ConfigError("cached_mnrl back-propagates chunk by chunk outside the graph that "
                              "DDP synchronises: train it with train.nproc_per_node=1 (or use "
                              "mnrl)")
        self.view, self.scale, self.symmetric = view, scale, symmetric
        self.mini_batch_size = mini_batch_size

    def collate(self, examples: list[Example]):
        anchors, positives, negatives = split_examples(examples)
        return (self.view.tokenize(anchors), self.view.tokenize(positives),
                self.view.tokenize(negatives) if negatives else None)

    def _embed(self, model, chunk: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        ids = chunk["input_ids"].to(device)
        mask = chunk["attention_mask"].to(device)
        hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        return pool(hidden, mask, self.view.pooling)

    def loss(self, model, batch, generator: torch.Generator) -> torch.Tensor:
        device = next(model.base_model.parameters()).device
        columns = [chunks(enc, self.mini_batch_size) for enc in batch if enc is not None]
        train = torch.is_grad_enabled()
        # pass 1: every chunk without a graph, remembering the RNG state it started from
        vectors, states = [], []
        with torch.no_grad():
            for column in columns:
                for chunk in column:
                    states.append(RandState(device) if train else None)
                    vectors.append(self._embed(model, chunk, device))
        sizes = [len(column) for column in columns]
        leaves = [v.detach().requires_grad_(train) for v in vectors]
        parts = [torch.cat(leaves[sum(sizes[:i]) : sum(sizes[: i + 1])]) for i in range(len(sizes))]
        loss = ranking_loss(parts[0], parts[1], parts[2] if len(parts) > 2 else None,
                            self.scale, self.symmetric)
        if not train:
            return loss
        # pass 2: the loss's gradient with respect to the vectors
        grads = torch.autograd.grad(loss, leaves)
        out = loss.detach().requires_grad_()
        chunk_list = [chunk for column in columns for chunk in column]
        autocast = (torch.is_autocast_enabled(device.type),
                    torch.get_autocast_dtype(device.type))
        out.register_hook(partial(self._replay, model, chunk_list, states, grads, device,
                                  autocast))
        return out

    def _replay(self, model, chunk_list, states, grads, device, autocast,
                grad_output: torch.Tensor) -> None:
        """Pass 3, run by ``backward``: each chunk again with a graph, its cached gradient (times
        what multiplied the loss) pushed through it, then the graph freed."""
        enabled, dtype = autocast
        with torch.enable_grad(), torch.autocast(device.type, dtype, enabled=enabled):
            for chunk, state, grad in zip(chunk_list, states, grads, strict=True):
                with state.restored():
                    vec = self._embed(model, chunk, device)
                if not vec.requires_grad:  # every weight it touches is frozen
                    continue
                surrogate = torch.dot(vec.flatten().float(), grad.flatten().float())
                (surrogate * grad_output.float()).backward()
