"""Kill -9 a training run half-way, resume it, and compare with a run never interrupted: the same
number of steps and the same final loss (within 1e-4), because a checkpoint holds the weights, the
optimizer, every RNG state and the data position."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from ctxvec.config import load_config
from ctxvec.ingest.snapshot import run_ingest
from ctxvec.tokenizer.packing import run_pack
from ctxvec.tokenizer.trainer import run_tokenizer
from ctxvec.train.run import run_key

REPO = Path(__file__).resolve().parents[2]
SETS = ["train.steps=160", "train.checkpoint_every=20", "train.batch_size=16",
        "train.log_every=20", "train.warmup_steps=10", "evaluate.sts=null"]

SCRIPT = r'''
import json, sys
from ctxvec.artifacts import PackedData, Snapshot, TokenizerArtifact
from ctxvec.config import load_config
from ctxvec.train.run import run_train
from ctxvec.workspace import Workspace
a = json.loads(sys.argv[1])
cfg = load_config(a["config"], a["sets"])
out = run_train(cfg, Workspace(a["home"]), Snapshot(**a["snap"]), TokenizerArtifact(**a["tok"]),
                PackedData(**a["packed"]))
print(json.dumps(out.to_dict()))
'''


def _launch(args: dict) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same kernels in every run: bitwise repeatable
    return subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_and_resume_matches_an_uninterrupted_run(workspace):
    cfg = load_config(REPO / "configs" / "tiny.yaml", SETS)
    snap = run_ingest(cfg, workspace)
    tok = run_tokenizer(cfg, workspace, snap)
    packed = run_pack(cfg, workspace, snap, tok)
    args = {"config": str(REPO / "configs" / "tiny.yaml"), "home": str(workspace.root),
            "snap": asdict(snap), "tok": asdict(tok), "packed": asdict(packed)}

    straight = _launch({**args, "sets": SETS + ["train.resume=false"]})
    out, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err
    reference = json.loads(out.strip().splitlines()[-1])

    first = _launch({**args, "sets": SETS})
    ckpt_dir = workspace.runs / f"tiny-{run_key(cfg, snap, tok)}" / "checkpoints"
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and first.poll() is None:
        done = sorted(c.name for c in ckpt_dir.glob("step-*")) if ckpt_dir.is_dir() else []
        if done:
            first.send_signal(signal.SIGKILL)
            killed_at = done[-1]
            break
        time.sleep(0.005)
    first.wait(timeout=30)
    assert killed_at is not None and first.returncode == -signal.SIGKILL, "not killed mid-run"

    resumed = _launch({**args, "sets": SETS})
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    manifest = json.loads((Path(result["run_dir"]) / "manifest.json").read_text())
    assert manifest["resumed_from"] is not None and manifest["resumed_from"] < 160
    print(f"killed after {killed_at}, resumed from step {manifest['resumed_from']}: final loss "
          f"{result['final_loss']:.6f} vs uninterrupted {reference['final_loss']:.6f}, "
          f"held-out loss {result['eval_loss']:.6f} vs {reference['eval_loss']:.6f}")
    assert result["steps"] == reference["steps"] == 160
    assert result["final_loss"] == pytest.approx(reference["final_loss"], abs=1e-4)
    assert result["eval_loss"] == pytest.approx(reference["eval_loss"], abs=1e-4)
