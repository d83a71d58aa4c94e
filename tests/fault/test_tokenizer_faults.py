"""Tokenizer training reproducibility and the resume of a killed ``ctxvec pretrain``.

The same snapshot and tokenizer config train the same ``tokenizer.json``, byte for byte, in
separate processes (whose hash seeds differ) for WordPiece and byte-level BPE; a workspace that
already holds the tokenizer trained for a snapshot and config reuses it (every kind, Unigram
included, whose upstream trainer is not reproducible); and so a ``ctxvec pretrain`` killed after
two checkpoints resumes, on its re-run, from the last one in the same run folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from ctxvec.config import load_config
from ctxvec.ingest.snapshot import run_ingest
from ctxvec.tokenizer.trainer import continuation_tokens, run_tokenizer, train_tokenizer
from ctxvec.workspace import Workspace
from tests.helpers import TINY, cli_env

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo" / "wiki_00.gz"
KINDS = ("wordpiece", "bpe", "unigram")

# Trains every kind on the snapshot into the workspace ``home``; prints kind -> record.
TRAIN = r'''
import json, sys
from ctxvec.artifacts import Snapshot
from ctxvec.config import load_config
from ctxvec.tokenizer.trainer import run_tokenizer
from ctxvec.workspace import Workspace
a = json.loads(sys.argv[1])
out = {}
for kind in a["kinds"]:
    cfg = load_config(None, [f"tokenizer.kind={kind}", *a["sets"]])
    out[kind] = run_tokenizer(cfg, Workspace(a["home"]).ensure(), Snapshot(**a["snap"])).to_dict()
print(json.dumps(out))
'''
SETS = ["tokenizer.vocab_size=800", "tokenizer.heldout_every=20"]


@pytest.fixture
def snapshot(workspace):
    cfg = load_config(None, [f"ingest.sources=[{DEMO}]", "ingest.max_docs=400"])
    return run_ingest(cfg, workspace)


def _train_in(homes: list[Path], snap, kinds) -> list[dict]:
    """Train ``kinds`` in one new process per workspace, all at once (each its own hash seed)."""
    procs = []
    for i, home in enumerate(homes):
        arg = json.dumps({"home": str(home), "snap": asdict(snap), "kinds": list(kinds),
                          "sets": SETS})
        env = {**os.environ, "PYTHONHASHSEED": str(i + 1)}
        procs.append(subprocess.Popen([sys.executable, "-c", TRAIN, arg], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs


def test_same_snapshot_trains_the_same_tokenizer_in_other_processes(snapshot, tmp_path):
    kinds = ("wordpiece", "bpe")  # Unigram: reused, not retrained (next test)
    first, second = _train_in([tmp_path / "a", tmp_path / "b"], snapshot, kinds)
    for kind in kinds:
        a, b = Path(first[kind]["path"]), Path(second[kind]["path"])
        assert a.name == b.name, kind
        assert first[kind]["sha256"] == second[kind]["sha256"], kind
        files = sorted(f.name for f in a.iterdir() if f.name != "manifest.json")
        assert "tokenizer.json" in files and files == sorted(
            f.name for f in b.iterdir() if f.name != "manifest.json")
        for name in files:
            assert (a / name).read_bytes() == (b / name).read_bytes(), (kind, name)


def test_every_continuation_token_is_registered_before_training(workspace, tmp_path):
    """The ``##c`` tokens registered up front are those the trainer makes, characters that only
    normalization composes (a decomposed accent, a half-width voiced kana) included: none is
    left to hash-map order."""
    words = ["cafe\u0301s", "ｶﾞｶﾞ", "naïve", "straße", "über", "ﬁnd"]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": str(i), "text": f"{w}, {w}{w} x{w} {i}."}) + "\n"
                           for i, w in enumerate(words * 5)))
    snap = run_ingest(load_config(None, [f"ingest.sources=[{src}]", "ingest.min_chars=1",
                                         "ingest.near_dup.enabled=false"]), workspace)
    tcfg = load_config(None, ["tokenizer.vocab_size=200", "tokenizer.heldout_every=1000",
                              "tokenizer.min_frequency=1"]).tokenizer
    registered = continuation_tokens(tcfg, snap.corpus)
    assert {"##é", "##ガ", "##ï", "##ß", "##i"} <= set(registered)
    # none for a character only seen starting a word, a combining mark composed away, a space
    assert not {"##x", "##\u0301", "## ", "##,"} & set(registered)
    tok, _, _ = train_tokenizer(tcfg, snap.corpus)
    late = {t for t in tok.get_vocab() if t.startswith("##") and len(t) == 3}
    assert late == set(registered)  # exactly those the trainer makes
    assert not any(t.special and t.content.startswith("##")
                   for t in tok.get_added_tokens_decoder().values())


@pytest.mark.parametrize("kind", KINDS)
def test_a_trained_tokenizer_is_reused_for_the_same_snapshot_and_config(kind, snapshot,
                                                                          workspace):
    cfg = load_config(None, [f"tokenizer.kind={kind}", *SETS, "tokenizer.max_docs=150"])
    first = run_tokenizer(cfg, workspace, snapshot)
    stamp = (Path(first.path) / "tokenizer.json").stat().st_mtime_ns
    again = run_tokenizer(cfg, workspace, snapshot)
    assert again == first
    assert (Path(again.path) / "tokenizer.json").stat().st_mtime_ns == stamp  # not retrained


def test_another_config_or_a_damaged_folder_trains_again(snapshot, workspace):
    cfg = load_config(None, ["tokenizer.kind=wordpiece", *SETS])
    first = run_tokenizer(cfg, workspace, snapshot)
    other = run_tokenizer(load_config(None, ["tokenizer.kind=wordpiece", *SETS,
                                             "tokenizer.vocab_size=700"]), workspace, snapshot)
    assert other.path != first.path and other.vocab_size == 700
    (Path(first.path) / "tokenizer.json").write_text("{}")
    again = run_tokenizer(cfg, workspace, snapshot)
    assert again == first  # reproducible: the same file again
    assert Tokenizer.from_file(f"{again.path}/tokenizer.json").get_vocab_size() == 800


def test_a_machine_with_an_empty_cache_reuses_the_stores_tokenizer(tmp_path, monkeypatch):
    """On a remote workspace the tokenizer is found on the store, fetched, and not trained: the
    second machine's snapshot record names corpus folders its cache does not hold."""
    def machine(cache: str) -> Workspace:
        monkeypatch.setenv("CTXVEC_CACHE", str(tmp_path / cache))
        return Workspace.at(f"file://{tmp_path / 'store'}").ensure()

    one = machine("one")
    snap = run_ingest(load_config(None, [f"ingest.sources=[{DEMO}]", "ingest.max_docs=100"]),
                      one)
    cfg = load_config(None, SETS)
    first = run_tokenizer(cfg, one, snap)
    two = machine("two")
    elsewhere = replace(snap, corpus=[str(two.snapshots / Path(c).name) for c in snap.corpus])
    assert not any(Path(c).exists() for c in elsewhere.corpus)
    again = run_tokenizer(cfg, two, elsewhere)
    assert Path(again.path) == two.tokenizers / Path(first.path).name
    assert (again.sha256, again.vocab_size, again.stats) == (first.sha256, first.vocab_size,
                                                             first.stats)
    assert (Path(again.path) / "tokenizer.json").read_bytes() == (
        Path(first.path) / "tokenizer.json").read_bytes()


# --- a killed `ctxvec pretrain` resumes ------------------------------------------------------

# the whole source in one ingest (tiny.yaml takes 150 documents a run: a re-run would add more,
# and so train on other data, in another run folder)
PRETRAIN_SETS = ["ingest.max_docs=null", "train.steps=40", "train.checkpoint_every=5",
                 "train.keep_checkpoints=2", "train.log_every=5", "train.threads=1",
                 "evaluate.sts=null"]


def _pretrain(home: Path, **popen) -> subprocess.Popen:
    sets = [a for s in PRETRAIN_SETS for a in ("--set", s)]
    env = cli_env(home, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "ctxvec.cli", "pretrain", "--config",
                             str(TINY), *sets, "--json"], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def _checkpoints(home: Path) -> list[Path]:
    return sorted((home / "runs").glob("*/checkpoints/step-*"))


@pytest.mark.slow
def test_killed_pretrain_resumes_from_its_last_checkpoint(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    first = _pretrain(home, start_new_session=True)
    deadline = time.monotonic() + 600
    while len(_checkpoints(home)) < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):  # already gone: the assertion below says so
        os.killpg(first.pid, signal.SIGKILL)
    _, err = first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL, f"finished before the kill:\n{err[-3000:]}"
    left = _checkpoints(home)
    assert len(left) >= 2, err[-3000:]
    run_dir = left[-1].parent.parent
    last_step = int(left[-1].name.removeprefix("step-"))
    assert last_step < 40 and not (run_dir / "manifest.json").exists()

    again = _pretrain(home)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    result = json.loads(out)
    assert Path(result["run_dir"]) == run_dir  # the same run folder...
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["resumed_from"] == last_step  # ...continued from its last checkpoint
    assert result["steps"] == 40
    print(f"killed with {[p.name for p in left]} written; resumed in {run_dir.name} from step "
          f"{manifest['resumed_from']}")
    assert sorted(p.name for p in (home / "runs").iterdir()) == [run_dir.name]
    for stage in ("snapshots", "tokenizers", "packed"):  # nothing made twice
        assert len(list((home / stage).iterdir())) == 1, stage
