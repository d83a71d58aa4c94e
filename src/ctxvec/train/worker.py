"""One torchrun rank of a training that ``ctxvec.train.launch`` started (never run by hand).

    python -m torch.distributed.run --standalone --nproc_per_node N -m ctxvec.train.worker \\
        --folder DIR

Reads the resolved recipe, the workspace, the upstream artifacts and the local folder of a
registry ``model.init`` from ``DIR`` (see ``launch``), runs ``run_train`` (which joins the process
group torchrun describes and trains a DDP replica), and on rank 0 writes the ``TrainedModel``
record to ``DIR/result.json``. It runs no data stage: its inputs are what the flow already made.
Only rank 0 logs at INFO, so the flow's log reads as one training, not N.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import yaml

from ctxvec.artifacts import MinedData, PackedData, Snapshot, TokenizerArtifact
from ctxvec.errors import UserInputError
from ctxvec.workspace import Workspace, read_json, write_json

log = logging.getLogger("ctxvec.train.worker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ctxvec.train.worker", description=__doc__)
    parser.add_argument("--folder", required=True, type=Path,
                        help="config.yaml and inputs.json from the launcher; result.json goes here")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("ctxvec").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    try:
        _train(args.folder)
    except BaseException as e:
        # the launcher tells a user's mistake (exit 2 in the CLI) from a failure by this file
        write_json(args.folder / f"error-rank{rank}.json", {
            "user_error": isinstance(e, UserInputError), "type": type(e).__name__,
            "message": str(e)})
        raise
    return 0


def _train(folder: Path) -> None:
    # lazy: inside main's try, so a rank that fails even to import reports it in error-rank*.json
    from ctxvec.config import CtxvecConfig
    from ctxvec.train import distributed
    from ctxvec.train.launch import CONFIG_FILE, INPUTS_FILE, RESULT_FILE
    from ctxvec.train.run import run_train

    # validated as it is: the launcher wrote the resolved tree (paths already absolute)
    cfg = CtxvecConfig.model_validate(yaml.safe_load((folder / CONFIG_FILE).read_text("utf-8")))
    inputs = read_json(folder / INPUTS_FILE)
    snap = Snapshot(**inputs["snapshot"]) if inputs["snapshot"] else None
    tok = TokenizerArtifact(**inputs["tokenizer"]) if inputs["tokenizer"] else None
    packed = PackedData(**inputs["packed"]) if inputs["packed"] else None
    mined = MinedData(**inputs["mined"]) if inputs.get("mined") else None
    ws = Workspace(**inputs["workspace"])
    trained = run_train(cfg, ws, snap, tok, packed, inputs.get("init_dir"), mined)
    if distributed.current().main:  # rank 0 alone saved the model; it alone reports
        write_json(folder / RESULT_FILE, trained.to_dict())
        log.info("train: rank 0 wrote %s", folder / RESULT_FILE)
    distributed.barrier()
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
