"""pyproject.toml's extras stay coherent: FAISS's CPU and GPU builds are exclusive extras (both
install the same ``faiss`` package, 25 files in common), no extra reaches both, ``dev`` holds
what the tests exercise, every extra the docs, the Makefile, CI and the images name exists, and
what is missing is named when a command needs it. The slow test asks pip to resolve ``.[gpu]``
and ``.[cpu]`` for real."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers import REPO, cli_env

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXTRAS: dict[str, list[str]] = PROJECT["project"]["optional-dependencies"]
CORE: list[str] = PROJECT["project"]["dependencies"]
CPU_FAISS, GPU_FAISS = "faiss-cpu", "faiss-gpu-cu12"
# files that tell a user or a machine which extra to install
NAMING = ["README.md", "Makefile", ".ci/run", "docs/*.md", "infra/**/*", "src/ctxvec/**/*.py"]
EXTRA_RE = re.compile(r"(?:ctxvec|\.|\.whl\))\[([a-z0-9_,-]+)\]")


def closure(extra: str) -> set[str]:
    """The distributions an extra asks for, with the extras of ctxvec it names expanded."""
    names: set[str] = set()
    for text in EXTRAS[extra]:
        req = Requirement(text)
        if canonicalize_name(req.name) == "ctxvec":
            for inner in req.extras:
                names |= closure(inner)
        else:
            names.add(canonicalize_name(req.name))
    return names


def test_the_extras_exist():
    assert {"cpu", "gpu", "serve", "ray", "s3", "postgres", "bench", "dev"} <= set(EXTRAS)


def test_faiss_builds_are_exclusive_extras():
    core = {canonicalize_name(Requirement(r).name) for r in CORE}
    assert not {n for n in core if n.startswith("faiss")}, "an extra cannot remove a core dep"
    assert CPU_FAISS in closure("cpu") and GPU_FAISS not in closure("cpu")
    assert GPU_FAISS in closure("gpu") and CPU_FAISS not in closure("gpu")
    for extra in EXTRAS:
        assert not {CPU_FAISS, GPU_FAISS} <= closure(extra), f"{extra} reaches both builds"
    # uv, which resolves extras together, is told as well
    assert [{"extra": "cpu"}, {"extra": "gpu"}] in PROJECT["tool"]["uv"]["conflicts"]


def test_dev_holds_the_extras_the_tests_exercise():
    dev = closure("dev")
    for extra in ("cpu", "serve", "ray", "s3", "postgres"):
        assert closure(extra) <= dev, extra
    assert GPU_FAISS not in dev


def test_serve_checks_for_what_its_extra_installs():
    from ctxvec.serve.extra import SERVE_MODULES

    assert {canonicalize_name(d) for d in SERVE_MODULES.values()} == closure("serve")


def test_every_extra_named_anywhere_exists():
    named: dict[str, set[str]] = {}
    for pattern in NAMING:
        for path in REPO.glob(pattern):
            if path.is_file() and not path.is_symlink():
                for m in EXTRA_RE.finditer(path.read_text(errors="replace")):
                    for extra in m.group(1).split(","):
                        named.setdefault(extra, set()).add(str(path.relative_to(REPO)))
    unknown = {e: sorted(where) for e, where in named.items() if e not in EXTRAS}
    assert not unknown, f"extras named but not in pyproject.toml: {unknown}"
    # what the two README commands and the images install
    assert {"Makefile"} <= named["cpu"] and {"Makefile"} <= named["dev"]
    assert "infra/docker/Dockerfile.worker" in named["cpu"] & named["gpu"]


def test_the_worker_images_install_one_faiss_build_each():
    text = (REPO / "infra" / "docker" / "Dockerfile.worker").read_text()
    stages = dict(re.findall(r"^FROM \S+ AS (\w+)\n(.*?)(?=^FROM |\Z)", text, re.M | re.S))
    assert re.search(r"\.whl\)\[cpu\]", stages["cpu"]) and "[gpu]" not in stages["cpu"]
    assert re.search(r"\.whl\)\[gpu\]", stages["gpu"]) and "[cpu]" not in stages["gpu"]


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=600)


def test_serve_without_its_extra_says_which_to_install(tmp_path):
    """``ctxvec serve`` where httptools and uvloop cannot be imported (as Python marks a module
    that is not there: ``sys.modules[name] = None``): exit 2, naming the extra and what is
    missing, before a model is loaded."""
    proc = _python("import sys; sys.modules['httptools'] = sys.modules['uvloop'] = None; "
                   "sys.argv = ['ctxvec', 'serve']; from ctxvec.cli import main; main()",
                   tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'ctxvec[serve]'" in proc.stderr
    assert "httptools" in proc.stderr and "Traceback" not in proc.stderr


def test_a_faiss_that_does_not_import_names_the_extras(tmp_path):
    proc = _python("import sys; sys.modules['faiss'] = None; import ctxvec.index.faiss_index",
                   tmp_path)
    assert proc.returncode != 0
    assert "FaissMissingError" in proc.stderr
    assert "'ctxvec[cpu]'" in proc.stderr and "'ctxvec[gpu]'" in proc.stderr


# --- what pip resolves ----------------------------------------------------------------------


def _resolve(extra: str, tmp_path: Path) -> set[str]:
    """The distributions ``pip install .[extra]`` would install into an empty environment."""
    report = tmp_path / f"{extra}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
         "--report", str(report), f".[{extra}]"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {canonicalize_name(i["metadata"]["name"])
            for i in json.loads(report.read_text())["install"]}


@pytest.mark.slow
def test_pip_resolves_exactly_one_faiss_build(tmp_path):
    """A full resolution of ``.[gpu]`` and of ``.[cpu]`` (dependencies of dependencies too):
    one FAISS build each, never both. Needs the package index: skipped when it does not
    answer."""
    probe = subprocess.run([sys.executable, "-m", "pip", "index", "versions", GPU_FAISS],
                           capture_output=True, text=True, timeout=600)
    if probe.returncode != 0:
        pytest.skip(f"the package index does not answer for {GPU_FAISS}: "
                    f"{probe.stderr.strip()[-300:]}")
    gpu, cpu = _resolve("gpu", tmp_path), _resolve("cpu", tmp_path)
    assert GPU_FAISS in gpu and CPU_FAISS not in gpu
    assert CPU_FAISS in cpu and GPU_FAISS not in cpu
    assert {"torch", "mlflow", "prefect"} <= gpu & cpu  # the core came along
