"""Checkpoints that resume a run exactly: model and head weights (safetensors), optimizer state,
RNG states (Python, torch CPU and CUDA, the objectives' generator), the data position of every
task and the loop's own state (step, tokens, best metric, patience).

A checkpoint is written into a temporary folder and renamed, so a run killed while writing one
leaves the previous checkpoint intact; the oldest are deleted beyond ``keep``.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

CKPT_PREFIX = "step-"


def checkpoints(run_dir: Path) -> list[Path]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CKPT_PREFIX))


def save_checkpoint(run_dir: Path, step: int, model, heads: dict[str, torch.nn.Module],
                    optimizer, generator: torch.Generator, state: dict, keep: int) -> Path:
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{CKPT_PREFIX}{step:08d}"
    tmp = folder / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    for name, head in heads.items():
        save_model(head, str(tmp / f"head-{name}.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng = {"torch": torch.get_rng_state(), "objectives": generator.get_state(),
           "python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64)}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, heads: dict[str, torch.nn.Module], optimizer,
                    generator: torch.Generator) -> dict:
    """Restore everything in place; returns the loop state (with ``step``)."""
    load_model(model, str(path / "model.safetensors"), device=str(next(model.parameters()).device))
    for name, head in heads.items():
        load_model(head, str(path / f"head-{name}.safetensors"))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["objectives"])
    state = random.getstate()
    random.setstate((state[0], tuple(int(x) for x in rng["python"].tolist()), state[2]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((path / "state.json").read_text())
