"""``embed.engine: ray``: the embed stage on a Ray cluster, through Ray Data.

Why: the local path embeds on the GPUs of one machine; a corpus that no single worker holds
(docs/architecture.md, Beyond one machine) is embedded by a pool of Ray actors, each with the
encoder loaded once, fed the corpus snapshot's Parquet by Ray Data's streaming reads
(``read_parquet`` -> ``map_batches``).

The output is the local path's. Each actor chunks, encodes and builds the table of a batch of
documents with the code the local path uses too (``shards.embed_shard``: ``chunk_documents``,
``Encoder.encode_ids``, ``embeddings_schema``) and writes it atomically (``write_shard``) as one
part file into the staging folder ``run_embed`` uses, renamed into place when every document is
there, with the same manifest (plus ``engine: ray`` and the Ray figures). Only the layout differs:
one file per ``map_batches`` batch, named by a hash of its doc ids (``part-r<hash>.parquet``),
instead of one per ``embed.shard_docs`` documents in corpus order. Readers take every
``part-*.parquet`` and key rows by (doc_id, chunk), so nothing downstream sees a difference.

Resume: a file holds every chunk of its documents or is absent, so an interrupted run resumes by
leaving out the documents already in the folder, whatever batches the next run forms.

On a cluster of several machines every node must import the same ctxvec and see the workspace
(the staging folder and the snapshots) at the same path, e.g. the ReadWriteMany volume of
docs/deploy.md; the run checks the paths on every node before it starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ctxvec.artifacts import Embeddings, Snapshot
from ctxvec.config import CtxvecConfig, RayEmbedConfig
from ctxvec.embed.shards import (
    SHARD_GLOB,
    WORDS_DIR,
    EmbedJob,
    count_embedded,
    embed_devices,
    embed_shard,
    output_settings,
    write_embed_manifest,
    write_shard,
)
from ctxvec.embed.truncate import stored_dim
from ctxvec.embed.words import run_words
from ctxvec.errors import UserInputError
from ctxvec.ingest.corpus import DOCS_GLOB, count_docs
from ctxvec.workspace import Workspace, sha256_text

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'ctxvec[ray]'"


class RayMissingError(UserInputError):
    """``embed.engine: ray`` without Ray Data installed."""


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a message that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - ray[data], not only ray core
    except ImportError as e:
        raise RayMissingError(
            f"embed.engine=ray needs Ray Data ({e.name or 'ray'} is missing): {INSTALL_HINT}, "
            "or set embed.engine=local") from e
    return ray


# --- the actor pool --------------------------------------------------------------------------


@dataclass(frozen=True)
class ActorPlan:
    """How many embedding actors, and what each one reserves on the cluster."""

    actors: int
    num_cpus: float
    num_gpus: float

    @property
    def device(self) -> str:
        # Ray sets CUDA_VISIBLE_DEVICES per actor: its GPU is always "cuda" (cuda:0) inside it
        return "cuda" if self.num_gpus > 0 else "cpu"

    @property
    def threads(self) -> int | None:
        """torch threads of a CPU actor: the whole CPUs it reserved, at least one."""
        return None if self.num_gpus > 0 else max(1, int(self.num_cpus))


def plan_actors(
    rcfg: RayEmbedConfig, resources: Mapping[str, float], train_device: str = "auto"
) -> ActorPlan:
    """Resolve ``embed.ray``'s defaults against the cluster's resources, and refuse a pool the
    cluster cannot hold: Ray would not fail, it would wait for ever. Ray Data's file listing and
    read tasks need one CPU each besides the actors, so the pool leaves one CPU free."""
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    num_gpus = rcfg.num_gpus
    if num_gpus is None:
        num_gpus = 1.0 if gpus >= 1 and train_device != "cpu" else 0.0
    if num_gpus > gpus:
        raise UserInputError(
            f"embed.ray.num_gpus={num_gpus:g} but the Ray cluster has {gpus:g} GPU(s): set "
            "embed.ray.num_gpus=0 to embed on CPUs, or join a cluster with GPUs")
    free_cpus = cpus - 1
    by_cpu = int(free_cpus // rcfg.num_cpus)
    default = min(int(gpus // num_gpus), by_cpu) if num_gpus > 0 else by_cpu
    actors = rcfg.actors or max(1, default)
    if actors * num_gpus > gpus + 1e-9:
        raise UserInputError(
            f"embed.ray.actors={actors} x num_gpus={num_gpus:g} needs {actors * num_gpus:g} GPUs; "
            f"the Ray cluster has {gpus:g}: lower embed.ray.actors or embed.ray.num_gpus")
    if actors * rcfg.num_cpus > free_cpus + 1e-9:
        raise UserInputError(
            f"embed.ray.actors={actors} x num_cpus={rcfg.num_cpus:g} needs "
            f"{actors * rcfg.num_cpus:g} CPUs, and Ray Data's read tasks one more; the Ray "
            f"cluster has {cpus:g}: lower embed.ray.actors or embed.ray.num_cpus")
    return ActorPlan(actors, rcfg.num_cpus, num_gpus)


class EmbedActor:
    """One actor of the pool: loads the encoder once, then embeds one batch of documents per
    call and writes it as one part file. Returns one summary row per batch (not the vectors:
    they go to the workspace directly, not through the driver)."""

    def __init__(self, job: EmbedJob, device: str, threads: int | None,
                 skip: frozenset[str], superseded: dict[str, frozenset[str]]):
        import torch

        t0 = time.perf_counter()
        if threads:
            torch.set_num_threads(threads)
        self.job, self.skip, self.superseded = job, skip, superseded
        self.encoder = job.load_encoder(device)
        self.load_seconds = time.perf_counter() - t0
        self.ready_at = time.time()  # wall clock: the driver measures start-up against it
        self.node = socket.gethostname()

    def _wanted(self, doc_id: str, path: str | None) -> bool:
        """Not written by an earlier attempt, and (several snapshots) the newest version."""
        if doc_id in self.skip:
            return False
        return path is None or doc_id not in self.superseded.get(Path(path).parent.name, ())

    def __call__(self, batch: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        ids = batch.column("doc_id").to_pylist()
        texts = batch.column("text").to_pylist()
        paths = batch.column("path").to_pylist() if "path" in batch.column_names else \
            [None] * len(ids)
        keep = [i for i, (d, p) in enumerate(zip(ids, paths, strict=True)) if self._wanted(d, p)]
        ids, texts = [ids[i] for i in keep], [texts[i] for i in keep]
        name, rows = "", 0
        if ids:
            table = embed_shard(self.encoder, self.job, ids, texts)
            name = shard_name(ids)
            write_shard(table, Path(self.job.work_dir) / name)
            rows = table.num_rows
        s = self.encoder.settings
        return pa.table({
            "file": [name], "docs": [len(ids)], "rows": [rows],
            "seconds": [time.perf_counter() - t0], "load_seconds": [self.load_seconds],
            "ready_at": [self.ready_at],
            "device": [str(self.encoder.device)], "precision": [self.encoder.precision],
            "dim": [self.encoder.dim], "max_tokens": [s.max_length], "pooling": [s.pooling],
            "normalized": [s.normalize], "node": [self.node], "pid": [os.getpid()],
        })


def shard_name(doc_ids: list[str]) -> str:
    """A batch's file name: a hash of its doc ids, so a retried batch rewrites its own file."""
    return f"part-r{sha256_text(chr(10).join(doc_ids))[:16]}.parquet"


# --- the corpus view and what an earlier attempt wrote ----------------------------------------


@dataclass(frozen=True)
class CorpusPlan:
    """The Parquet files Ray Data reads, and which rows of them the corpus view leaves out."""

    files: list[str]  # newest snapshot first, like iter_corpus
    superseded: dict[str, frozenset[str]]  # snapshot folder name -> ids a newer one replaces
    docs: int  # documents of the view, each doc_id once (its newest version)


def plan_corpus(corpus: list[str]) -> CorpusPlan:
    """Latest wins, as ``iter_corpus`` reads it: with several snapshots, the doc ids of each one
    that a newer snapshot holds too (read from the doc_id column only) are left out."""
    snaps = list(reversed(corpus))
    files = {s: sorted(str(f) for f in Path(s).glob(DOCS_GLOB)) for s in snaps}
    all_files = [f for s in snaps for f in files[s]]
    if len(snaps) == 1:
        return CorpusPlan(all_files, {}, count_docs(corpus))
    seen: set[str] = set()
    superseded: dict[str, frozenset[str]] = {}
    for s in snaps:
        ids = {d for f in files[s] for d in pq.read_table(f, columns=["doc_id"])
               .column(0).to_pylist()}
        if old := frozenset(ids & seen):
            superseded[Path(s).name] = old
        seen |= ids
    return CorpusPlan(all_files, superseded, len(seen))


def written_doc_ids(work: Path) -> tuple[frozenset[str], int]:
    """(doc ids in the part files already in the staging folder, how many files)."""
    files = sorted(work.glob(SHARD_GLOB))
    done = {d for f in files for d in pq.read_table(f, columns=["doc_id"]).column(0).to_pylist()}
    return frozenset(done), len(files)


# --- Ray: session, checks, dataset -----------------------------------------------------------


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[tuple[float, bool]]:
    """Yield (start-up seconds, whether this call started Ray). A Ray already initialised in
    this process (a notebook, a test, a benchmark) is used as it is and left running."""
    ray = import_ray()
    if ray.is_initialized():
        yield 0.0, False
        return
    t0 = time.perf_counter()
    # Worker output forwarded to the driver would land on stdout, which `--json` keeps for its
    # one JSON object; errors still reach the driver as exceptions.
    common: dict[str, Any] = {"log_to_driver": False}
    try:
        if address is None:
            # One logical CPU above the cores: Ray Data's listing and read tasks (short, I/O
            # bound) get one while the actors hold the cores (see plan_actors). Workers at
            # nice 0, as the local path runs: Ray nices them to 15 by default, which on a
            # machine shared with other jobs leaves the actors only what those jobs leave.
            ray.init(address="local", num_cpus=(os.cpu_count() or 1) + 1,
                     include_dashboard=False, _system_config={"worker_niceness": 0}, **common)
        else:
            ray.init(address=address, **common)
    except ConnectionError as e:
        raise UserInputError(f"cannot join the Ray cluster at embed.ray.address={address!r}: "
                             f"{e}") from e
    started = time.perf_counter() - t0
    log.info("embed: Ray started in %.1fs (%s)", started, address or "local, in process")
    try:
        yield started, True
    finally:
        ray.shutdown()


def _missing_paths(paths: list[str]) -> list[str]:
    return [p for p in paths if not os.path.exists(p)]


def check_nodes_see(ray: Any, paths: list[str]) -> None:
    """On a cluster of several machines (or through Ray Client), make sure every node sees the
    workspace paths the actors read and write, before any work is done."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1 and not ray.util.client.ray.is_connected():
        return  # the local machine: the driver's paths are the actors'
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(_missing_paths)
    refs = {n["NodeManagerAddress"]: probe.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(paths)
        for n in nodes}
    missing = {node: m for node, m in zip(refs, ray.get(list(refs.values())), strict=True) if m}
    if missing:
        raise UserInputError(
            "embed.engine=ray: Ray nodes do not see the workspace at the driver's paths "
            f"({missing}); put CTXVEC_HOME (or the cache of a remote workspace, CTXVEC_CACHE) on "
            "a filesystem every node mounts at the same path")


def build_dataset(ray: Any, job: EmbedJob, corpus: CorpusPlan, plan: ActorPlan,
                  batch_size: int, skip: frozenset[str]) -> Any:
    """read_parquet (doc_id, text) -> blocks of at most ``batch_size`` documents ->
    map_batches over the actor pool -> one summary row per batch."""
    ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts documents
    ds = ray.data.read_parquet(corpus.files, columns=["doc_id", "text"],
                               include_paths=bool(corpus.superseded))
    # A snapshot file is one row group, so one block: an actor takes a whole block, and the
    # others would wait. Streaming repartition (no shuffle) cuts blocks to one batch each.
    ds = ds.repartition(target_num_rows_per_block=batch_size)
    return ds.map_batches(
        EmbedActor, batch_size=batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=plan.actors),
        num_cpus=plan.num_cpus, num_gpus=plan.num_gpus,
        fn_constructor_kwargs={"job": job, "device": plan.device, "threads": plan.threads,
                               "skip": skip, "superseded": corpus.superseded},
    )


# --- the stage -------------------------------------------------------------------------------


def embed_on_ray(
    cfg: CtxvecConfig, ws: Workspace, snapshot: Snapshot, job: EmbedJob, final: Path, key: str,
    started: float,
) -> Embeddings:
    """``run_embed`` with ``embed.engine: ray``: same staging folder mechanism, same files'
    contract, same manifest (plus ``engine`` and ``ray``)."""
    ecfg, rcfg = cfg.embed, cfg.embed.ray
    with ray_session(rcfg.address) as (startup_s, started_ray):
        ray = import_ray()
        # ":ray": the local path resumes by shard number, which these files do not have
        with ws.resumable_dir(final, sha256_text(key + ":ray")) as work:
            job = replace(job, work_dir=str(work))
            t0 = time.perf_counter()
            corpus = plan_corpus(job.corpus)
            done, resumed = written_doc_ids(work)
            if resumed:
                log.info("embed: resuming, %d document(s) already written in %d file(s) in %s",
                         len(done), resumed, work)
            resources = ray.cluster_resources()
            plan = plan_actors(rcfg, resources, cfg.train.device)
            summaries: list[dict[str, Any]] = []
            plan_s = run_s = 0.0
            t1_wall = time.time()
            if corpus.docs > len(done):
                # no more actors than batches: each one costs a process and an encoder load
                batches = -(-(corpus.docs - len(done)) // rcfg.batch_size)
                plan = replace(plan, actors=min(plan.actors, batches))
                check_nodes_see(ray, [str(work), *job.corpus])
                ds = build_dataset(ray, job, corpus, plan, rcfg.batch_size, done)
                plan_s = time.perf_counter() - t0
                t1, t1_wall = time.perf_counter(), time.time()
                bar = tqdm(total=corpus.docs, initial=len(done), desc="embed[ray]", unit="doc",
                           leave=False)
                for row in ds.iter_rows():
                    summaries.append(dict(row))
                    bar.update(row["docs"])
                bar.close()
                run_s = time.perf_counter() - t1
            rows, docs = count_embedded(work)
            if docs != corpus.docs:  # every file reported written must be here, each doc once
                raise RuntimeError(f"embed: the Ray run's files in {work} hold {docs} documents, "
                                   f"the corpus {corpus.docs}")
            encoder = None
            settings = next((s for s in summaries if s["file"]), None)
            if ecfg.words.enabled or settings is None:
                encoder = job.load_encoder(embed_devices(cfg)[0])
            words = None
            if ecfg.words.enabled:
                # word vectors are a sample (embed.words.sample_docs): the driver takes them
                words = run_words(cfg, encoder, job.corpus, work / WORDS_DIR, job.model_version)
            if settings is None:  # nothing embedded now (all resumed): the driver's encoder
                settings = output_settings(encoder)
            ray_figures = {
                "address": rcfg.address, "started_here": started_ray,
                "startup_seconds": round(startup_s, 3), "plan_seconds": round(plan_s, 3),
                "run_seconds": round(run_s, 3), "actors": plan.actors,
                "num_cpus": plan.num_cpus, "num_gpus": plan.num_gpus,
                "batch_size": rcfg.batch_size, "batches": len(summaries),
                # encoder load alone; start = process, imports and load, from the run's start
                "actor_load_seconds": round(max((s["load_seconds"] for s in summaries),
                                                default=0.0), 3),
                "actor_start_seconds": round(max((s["ready_at"] - t1_wall for s in summaries),
                                                 default=0.0), 3),
                "nodes": sorted({s["node"] for s in summaries}),
                "batches_per_actor": sorted(Counter((s["node"], s["pid"])
                                                    for s in summaries).values()),
                "cluster": {k: resources.get(k, 0) for k in ("CPU", "GPU")},
                "resumed_docs": len(done),
            }
            write_embed_manifest(
                work, started, ws, snapshot, job, settings, rows, docs, resumed=resumed,
                words=words, devices=sorted({s["device"] for s in summaries}
                                            or {settings["device"]}),
                shard_docs=rcfg.batch_size, engine="ray", ray=ray_figures,
            )
    log.info("embed[ray]: %d chunks from %d documents in %.1fs (Ray start %.1fs, plan %.1fs, "
             "run %.1fs, %d actor(s))", rows, docs, time.time() - started, startup_s, plan_s,
             run_s, plan.actors)
    return Embeddings(str(final), rows, docs, stored_dim(settings["dim"], job.dim),
                      str(job.model_version))
