"""``train.nproc_per_node``: validated, resolved against the devices, and turned into the
torchrun command the pipeline's train task runs (the run itself: tests/flows/test_torchrun.py)."""

from __future__ import annotations

import pytest
import torch

from ctxvec.config import ConfigError, load_config
from ctxvec.train.launch import WORKER_MODULE, resolve_nproc, torchrun_command
from ctxvec.train.run import run_key
from tests.helpers import REPO, TINY

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


def test_config_takes_a_count_or_auto():
    assert load_config(TINY).train.nproc_per_node == 1
    assert load_config(TINY, ["train.nproc_per_node=auto"]).train.nproc_per_node == "auto"
    assert load_config(TINY, ["train.nproc_per_node=4"]).train.nproc_per_node == 4
    for bad in ("0", "many"):
        with pytest.raises(ConfigError, match="train.nproc_per_node"):
            load_config(TINY, [f"train.nproc_per_node={bad}"])


@no_gpu
def test_resolve_on_a_machine_without_gpus():
    assert resolve_nproc(load_config(TINY, ["train.nproc_per_node=auto"])) == 1  # in process
    assert resolve_nproc(load_config(TINY, ["train.nproc_per_node=3"])) == 3  # gloo on CPU
    assert resolve_nproc(load_config(TINY, ["train.nproc_per_node=auto",
                                            "train.device=auto"])) == 1


def test_one_gpu_per_rank_is_not_cuda_n():
    cfg = load_config(TINY, ["train.nproc_per_node=2", "train.device=cuda:1"])
    with pytest.raises(ConfigError, match="not cuda:1"):
        resolve_nproc(cfg)


def test_torchrun_command(tmp_path):
    cmd = torchrun_command(2, tmp_path)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert cmd[cmd.index("--nproc_per_node") + 1] == "2"
    assert cmd[cmd.index("-m", 3) + 1] == WORKER_MODULE
    assert cmd[-2:] == ["--folder", str(tmp_path)]


def test_process_count_does_not_change_the_run():
    """DDP splits each batch across ranks: the same recipe, so the same run folder (a finished
    run is reused whatever nproc_per_node trained it)."""
    one = load_config(TINY)
    two = load_config(TINY, ["train.nproc_per_node=2"])
    assert run_key(one, None, None) == run_key(two, None, None)
    assert run_key(one, None, None) != run_key(load_config(TINY, ["train.steps=3"]), None, None)


def test_the_gpu_pools_pipeline_deployment_trains_on_every_gpu_it_sees():
    """infra/prefect.yaml: the nightly pipeline on ctxvec-gpu asks for one rank per GPU, and
    every deployment's recipe and overrides still validate."""
    import yaml

    project = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    gpu_pipelines = []
    for dep in project["deployments"]:
        params = dep["parameters"]
        cfg = load_config(REPO / params["config"], params["overrides"])
        if dep["work_pool"]["name"] == "ctxvec-gpu" and dep["entrypoint"].startswith(
                "flows/pipeline.py"):
            gpu_pipelines.append(cfg.train.nproc_per_node)
    assert gpu_pipelines == ["auto"]
