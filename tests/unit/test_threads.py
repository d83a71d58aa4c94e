"""Thread counts that fit the machine: the cgroup quota (v2 and v1 files), the CPU affinity mask,
an explicit embed.threads / serve.threads, bad values refused, and ``ctxvec embed`` computing
with the count it was given (then handing the process's own count back)."""

from __future__ import annotations

import json
import logging
import os
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from ctxvec.config import ConfigError, load_config
from ctxvec.embed.threads import (
    Threads,
    apply_threads,
    available_threads,
    cgroup_cpu_quota,
    resolve_threads,
    restore_threads,
)
from ctxvec.serve.batcher import MicroBatcher
from tests.helpers import tiny_bert
from tests.unit.test_evaluators import SENTENCES

linux_only = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux affinity")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def _proc(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "proc-self-cgroup"
    p.write_text(text + "\n")
    return p


@pytest.mark.parametrize(("cpu_max", "cpus"), [
    ("150000 100000", 1.5), ("200000 100000", 2.0), ("50000 100000", 0.5), ("max 100000", None),
    ("max", None),
])
def test_cgroup_v2_cpu_max(tmp_path, cpu_max, cpus):
    _write(tmp_path / "cg" / "cpu.max", cpu_max)
    proc = _proc(tmp_path, "0::/")
    assert cgroup_cpu_quota(tmp_path / "cg", proc) == cpus


def test_cgroup_v2_takes_the_lowest_limit_along_the_path(tmp_path):
    root = tmp_path / "cg"
    _write(root / "cpu.max", "max 100000")
    _write(root / "kube" / "cpu.max", "300000 100000")
    _write(root / "kube" / "pod" / "cpu.max", "max 100000")
    proc = _proc(tmp_path, "0::/kube/pod")
    assert cgroup_cpu_quota(root, proc) == 3.0


@pytest.mark.parametrize(("folder", "quota", "period", "cpus"), [
    ("cpu", "-1", "100000", None),
    ("cpu", "250000", "100000", 2.5),
    ("cpu,cpuacct", "100000", "50000", 2.0),
])
def test_cgroup_v1_cfs_quota(tmp_path, folder, quota, period, cpus):
    root = tmp_path / "cg"
    _write(root / folder / "docker" / "abc" / "cpu.cfs_quota_us", quota)
    _write(root / folder / "docker" / "abc" / "cpu.cfs_period_us", period)
    proc = _proc(tmp_path, f"4:memory:/x\n3:{folder}:/docker/abc\n0::/")
    assert cgroup_cpu_quota(root, proc) == cpus


def test_no_cgroup_files_no_quota(tmp_path):
    assert cgroup_cpu_quota(tmp_path / "none", tmp_path / "missing") is None
    _write(tmp_path / "cg" / "cpu.max", "garbage here")  # unreadable: ignored, with a warning
    assert cgroup_cpu_quota(tmp_path / "cg", tmp_path / "missing") is None


def test_the_quota_caps_the_affinity_rounded_down_at_least_one(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    root, proc = tmp_path / "cg", _proc(tmp_path, "0::/")
    _write(root / "cpu.max", "150000 100000")
    assert available_threads(root, proc) == Threads(1, "cgroup quota 1.5 CPUs")
    assert str(available_threads(root, proc)) == "1 (cgroup quota 1.5 CPUs)"
    _write(root / "cpu.max", "50000 100000")
    assert available_threads(root, proc).count == 1
    _write(root / "cpu.max", "800000 100000")  # more than the affinity allows
    assert available_threads(root, proc) == Threads(4, "CPU affinity")
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS, Windows
    assert available_threads(root, proc) == Threads(8, "cgroup quota 8 CPUs")
    assert available_threads(tmp_path / "no", proc) == Threads(os.cpu_count() or 1,
                                                               "os.cpu_count")


@linux_only
def test_the_affinity_mask_is_respected(tmp_path):
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})  # as `taskset -c N` would
        assert available_threads(tmp_path / "no", tmp_path / "none") == \
            Threads(1, "CPU affinity")
    finally:
        os.sched_setaffinity(0, before)
    assert available_threads(tmp_path / "no", tmp_path / "none").count == len(before)


def test_an_explicit_setting_wins(tmp_path):
    root, proc = tmp_path / "cg", _proc(tmp_path, "0::/")
    _write(root / "cpu.max", "100000 100000")
    assert resolve_threads(3, "embed.threads", root, proc) == Threads(3, "embed.threads")
    assert resolve_threads(None, "embed.threads", root, proc).count == 1
    with pytest.raises(ValueError, match="at least 1"):
        resolve_threads(0, "serve.threads", root, proc)


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5", "true"])
@pytest.mark.parametrize("key", ["embed.threads", "serve.threads"])
def test_bad_thread_counts_are_refused(key, bad):
    with pytest.raises(ConfigError, match=key):
        load_config(None, [f"{key}={bad}"])
    assert getattr(load_config(None, [f"{key}=3"]), key.split(".")[0]).threads == 3
    assert getattr(load_config(None, []), key.split(".")[0]).threads is None


def test_apply_and_restore_torch_and_faiss_threads():
    import faiss  # noqa: F401  (loaded: its OpenMP threads are set too)

    before = apply_threads(1)
    try:
        assert torch.get_num_threads() == 1 and faiss.omp_get_max_threads() == 1
    finally:
        restore_threads(before)
    assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == before


class _ThreadsSeen:
    """Answers each text with the torch thread count of the thread encoding it."""

    def embed(self, texts):
        return np.full((len(texts), 1), torch.get_num_threads(), dtype=np.float32)


def test_the_batcher_thread_computes_with_the_servers_count():
    faiss = sys.modules.get("faiss")
    before = torch.get_num_threads(), faiss.omp_get_max_threads() if faiss else None
    batcher = MicroBatcher(4, thread_init=partial(apply_threads, 1))
    try:
        seen = batcher.embed(_ThreadsSeen(), ["a", "b"]).result(timeout=30)
    finally:
        batcher.close()
        restore_threads(before)
    assert seen.ravel().tolist() == [1.0, 1.0]


@pytest.mark.parametrize("how", [["--set", "embed.threads=1"], ["--threads", "1"]])
def test_ctxvec_embed_computes_with_embed_threads(workspace, tmp_path, caplog, monkeypatch, how):
    from typer.testing import CliRunner

    from ctxvec.cli import app
    from ctxvec.ingest.snapshot import run_ingest

    model = tiny_bert(tmp_path / "tiny", SENTENCES)
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": s}) + "\n"
                           for i, s in enumerate(SENTENCES)))
    run_ingest(load_config(None, [f"ingest.sources=[{src}]", "ingest.min_chars=1",
                                  "ingest.near_dup.enabled=false"]), workspace)
    before = torch.get_num_threads()
    caplog.set_level(logging.INFO, logger="ctxvec")
    result = CliRunner().invoke(app, ["embed", "--model", str(model), *how, "--set",
                                      "embed.precision=fp32", "--set", "train.device=cpu",
                                      "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["embeddings"]["docs"] == len(SENTENCES)
    lines = [r.getMessage() for r in caplog.records if r.name == "ctxvec.embed.threads"]
    assert "embed: 1 thread (embed.threads); torch computes with 1" in lines
    assert torch.get_num_threads() == before  # the process's own count is back


@pytest.mark.parametrize("preset, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_threads_wait_passively_unless_the_user_says_otherwise(preset, expected):
    """Set before torch loads (importing ctxvec's CLI loads it), and a user's value wins."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    code = ("import sys, ctxvec.cli, torch, os; "
            "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [expected, "True"]
