"""Training in several processes from inside a running program (the Prefect flow): ``torchrun``.

``train.nproc_per_node`` > 1 (or ``auto`` with several GPUs visible) makes ``train_with_launch``
start ``python -m torch.distributed.run --standalone --nproc_per_node N -m ctxvec.train.worker``
as a subprocess instead of training in this process. Why a subprocess: DDP needs one process per
GPU, each with its own CUDA context and process group, and a flow run (a Prefect worker's
process) is one process; torchrun is the engine that starts, watches and tears down the ranks.

What crosses the process boundary, in a temporary folder:
- ``config.yaml``: the resolved recipe (every override applied, paths absolute), so the ranks
  train exactly what the flow would have trained in process;
- ``inputs.json``: the workspace, the upstream artifacts (snapshot, tokenizer, packed data) the
  flow already has, and the local folder of ``model.init`` when that names a registry version
  (resolved by the caller, so the ranks never talk to the registry): the ranks run no data stage
  at all, nothing is ingested, tokenized, packed or downloaded twice;
- ``result.json``: written by rank 0 alone (it alone saves the model and the run's manifest),
  the same ``TrainedModel`` record ``run_train`` returns in process, so registering, embedding
  and indexing downstream do not know how training ran.

The ranks' output (logs on stderr) is streamed line by line to ``on_line`` (the flow's logger);
a non-zero exit fails with the last lines of it. A rank that failed on bad input (a
``UserInputError``) says so in ``error-rank<r>.json``, and the launcher raises that error again,
so the CLI still exits 2 for it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ctxvec.artifacts import MinedData, PackedData, Snapshot, TokenizerArtifact, TrainedModel
from ctxvec.config import ConfigError, CtxvecConfig, config_to_yaml
from ctxvec.errors import UserInputError
from ctxvec.train.run import finished_run, run_train
from ctxvec.workspace import Workspace, read_json, write_json

log = logging.getLogger(__name__)

WORKER_MODULE = "ctxvec.train.worker"
CONFIG_FILE = "config.yaml"
INPUTS_FILE = "inputs.json"
RESULT_FILE = "result.json"
TAIL_LINES = 60  # of the ranks' output, in the error of a failed launch


def visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_nproc(cfg: CtxvecConfig) -> int:
    """``train.nproc_per_node`` as a number of processes, checked against the devices.

    ``auto``: one per visible GPU, and 1 (in process) without GPUs or with ``train.device=cpu``.
    A number > 1 on a machine without GPUs (or with ``train.device=cpu``) means gloo processes
    on the CPU, which is how the tests run DDP.
    """
    tcfg = cfg.train
    gpus = 0 if tcfg.device == "cpu" else visible_gpus()
    n = max(1, gpus) if tcfg.nproc_per_node == "auto" else int(tcfg.nproc_per_node)
    if n > 1 and tcfg.device.startswith("cuda:"):
        raise ConfigError(f"train.nproc_per_node={tcfg.nproc_per_node} gives each process its "
                          f"own GPU (LOCAL_RANK): use train.device=cuda or auto, not "
                          f"{tcfg.device}")
    if n > 1 and gpus and n > gpus:
        raise ConfigError(f"train.nproc_per_node={n}, but {gpus} GPU(s) are visible: use at "
                          f"most {gpus}, or auto")
    return n


def torchrun_command(nproc: int, folder: Path) -> list[str]:
    """The command line that trains the recipe saved in ``folder`` with ``nproc`` ranks."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc_per_node", str(nproc), "-m", WORKER_MODULE, "--folder", str(folder)]


def train_with_launch(
    cfg: CtxvecConfig,
    ws: Workspace,
    snapshot: Snapshot | None,
    tokenizer_art: TokenizerArtifact | None,
    packed: PackedData | None,
    on_line: Callable[[str], None] | None = None,
    init_dir: str | Path | None = None,
    mined: MinedData | None = None,
) -> TrainedModel:
    """``run_train`` in this process, or under torchrun when ``train.nproc_per_node`` asks for
    more than one process; the same record comes back either way. ``init_dir``: the local folder
    of a registry ``model.init``; ``mined``: the mine stage's record (see ``run_train``)."""
    nproc = resolve_nproc(cfg)
    if nproc <= 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:  # already one of the ranks
        return run_train(cfg, ws, snapshot, tokenizer_art, packed, init_dir, mined)
    done = finished_run(cfg, ws, snapshot, tokenizer_art, mined)
    if done is not None:  # nothing to train: no processes to start
        return done
    return launch(cfg, ws, snapshot, tokenizer_art, packed, nproc, on_line, init_dir, mined)


def launch(
    cfg: CtxvecConfig,
    ws: Workspace,
    snapshot: Snapshot | None,
    tokenizer_art: TokenizerArtifact | None,
    packed: PackedData | None,
    nproc: int,
    on_line: Callable[[str], None] | None = None,
    init_dir: str | Path | None = None,
    mined: MinedData | None = None,
) -> TrainedModel:
    """Train with ``nproc`` torchrun ranks on the given inputs; rank 0's record comes back."""
    emit = on_line or (lambda line: log.info("torchrun: %s", line))
    with tempfile.TemporaryDirectory(prefix="ctxvec-torchrun-") as tmp:
        folder = Path(tmp)
        (folder / CONFIG_FILE).write_text(config_to_yaml(cfg), encoding="utf-8")
        write_json(folder / INPUTS_FILE, {
            # every field of the workspace (its root, and a store URI where it has one)
            "workspace": {f.name: getattr(ws, f.name) for f in dataclasses.fields(ws)},
            "snapshot": snapshot.to_dict() if snapshot else None,
            "tokenizer": tokenizer_art.to_dict() if tokenizer_art else None,
            "packed": packed.to_dict() if packed else None,
            "init_dir": str(init_dir) if init_dir is not None else None,
            "mined": mined.to_dict() if mined else None,
        })
        cmd = torchrun_command(nproc, folder)
        log.info("train: launching %d processes: %s", nproc, " ".join(cmd))
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        # unbuffered, so lines arrive as written; no progress bars, which are noise in a log
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
        # the ranks' stdout and stderr as one stream, in the order they wrote it
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, env=env)
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                tail.append(line)
                emit(line)
            rc = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted (flow cancelled): take the ranks down too
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if rc != 0:
            _raise_user_error(folder)
            raise RuntimeError(f"training under torchrun ({nproc} processes) exited with code "
                               f"{rc}; its last lines:\n" + "\n".join(tail))
        result = folder / RESULT_FILE
        if not result.is_file():
            raise RuntimeError(f"training under torchrun ({nproc} processes) exited 0 but rank 0 "
                               f"wrote no {RESULT_FILE}; its last lines:\n" + "\n".join(tail))
        return TrainedModel(**read_json(result))


def _raise_user_error(folder: Path) -> None:
    """Re-raise a rank's ``UserInputError`` (bad config or data) as one in this process."""
    for path in sorted(folder.glob("error-rank*.json")):
        err: dict = {}
        with contextlib.suppress(OSError, ValueError):  # a rank killed while writing it
            err = json.loads(path.read_text(encoding="utf-8"))
        if err.get("user_error"):
            raise UserInputError(err["message"])
