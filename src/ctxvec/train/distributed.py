"""Data-parallel training across processes with PyTorch DDP, launched by ``torchrun``.

One process is the default and needs none of this. Under ``torchrun --nproc_per_node N`` every
process trains a replica on its own share of each batch, DDP averages the gradients, and rank 0
alone evaluates, checkpoints, saves and registers. The backend is NCCL on GPUs and gloo on CPUs
(which is how the tests run it: two CPU processes).

    torchrun --nproc_per_node 2 -m ctxvec.cli pretrain --config configs/scratch-mini.yaml
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> World:
    """Join the process group torchrun describes in the environment; a no-op without one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        gpu = torch.cuda.is_available() and device != "cpu"
        if gpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if gpu else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def current() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def local_device(device: str) -> str:
    """Each rank's own GPU under torchrun; the configured device otherwise."""
    world = current()
    if world.size > 1 and torch.cuda.is_available() and device in ("auto", "cuda"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (any picklable value of ctxvec's own records)."""
    world = current()
    if world.size <= 1:
        return obj
    box = [obj if world.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if current().size > 1:
        dist.barrier()


class LossModule(torch.nn.Module):
    """The model and the objectives' heads as one module, so that DDP sees every parameter that
    a step's loss touches and averages all of their gradients."""

    def __init__(self, model: torch.nn.Module, heads: dict[str, torch.nn.Module], tasks):
        super().__init__()
        self.model = model
        self.heads = torch.nn.ModuleDict(heads)
        self.tasks = tasks

    def forward(self, generator: torch.Generator):
        return self.tasks.step_loss(self.model, generator)
