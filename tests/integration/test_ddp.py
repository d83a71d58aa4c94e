"""DDP through torchrun on CPU: two gloo processes train one model.

The replicas must stay identical (DDP averages the gradients), each rank must see its own half of
every batch, and `torchrun -m ctxvec.cli pretrain` must run the data stages once, train on both
ranks and register from rank 0 alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import hashlib, json, sys
import numpy as np, torch
from transformers import BertConfig, BertForMaskedLM
from transformers import AutoTokenizer
from ctxvec.config import TrainConfig
from ctxvec.model.refs import minilm_dir
from ctxvec.train import distributed
from ctxvec.train.datasets import Sampler
from ctxvec.train.loop import train
from ctxvec.train.multitask import MultiTask, Task
from ctxvec.train.objectives.mlm import MaskedLM

world = distributed.setup("cpu")
tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
torch.manual_seed(world.rank)  # different on purpose: DDP must broadcast rank 0's weights
model = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=64))
rows = np.tile(np.array([101] + [2000 + (i % 7) for i in range(30)] + [102], np.int32), (64, 1))
sampler = Sampler(len(rows), 0, rank=world.rank, world=world.size)
seen = []
real_take = sampler.take
sampler.take = lambda k: (lambda idx: (seen.extend(idx), idx)[1])(real_take(k))
tasks = MultiTask([Task(MaskedLM(tok), rows, 1.0, 8, sampler)])
res = train(model, tasks, TrainConfig(steps=30, batch_size=8, lr=3e-3, warmup_steps=3,
                                      log_every=10, grad_accum=2))
h = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters()))
json.dump({"rank": world.rank, "hash": h.hexdigest(), "seen": seen[:16],
           "first": res.history[0]["loss"], "last": res.history[-1]["loss"]},
          open(sys.argv[1] + f"/rank{world.rank}.json", "w"))
'''


def _torchrun(args: list[str], env: dict, cwd: Path = REPO) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *args]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def test_two_processes_keep_identical_replicas(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    proc = _torchrun([str(script), str(tmp_path)], _env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["hash"] == r1["hash"]  # one model, two processes
    assert not set(r0["seen"]) & set(r1["seen"][:8])  # each rank its own half of a batch
    assert r0["last"] < r0["first"] - 1.0  # and it learns


def test_torchrun_pretrain_registers_once(tmp_path):
    home = tmp_path / "home"
    proc = _torchrun(["-m", "ctxvec.cli", "pretrain", "--config", "configs/tiny.yaml",
                      "--set", "evaluate.sts=null", "--json"], _env(CTXVEC_HOME=str(home)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1  # rank 0 alone reports
    out = json.loads(lines[0])
    assert out["model"] == "models:/ctxvec-encoder/1" and out["steps"] == 12
    manifest = json.loads((Path(out["run_dir"]) / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert len(list((home / "snapshots").iterdir())) == 1  # the data stages ran once
