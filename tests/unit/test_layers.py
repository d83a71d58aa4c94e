"""The import layers hold: ``lint-imports`` keeps every contract of pyproject.toml, each contract
breaks when a forbidden import is added, and no ctxvec module takes part in an import circle.

The contracts (``[tool.importlinter]``) are the layers of docs/architecture.md, "only
ctxvec.registry imports mlflow", "only ctxvec_flows imports prefect" and "library code imports
neither typer nor ctxvec_flows". Circles are counted on the module graph, imports under
``TYPE_CHECKING`` included: a circle that only type hints close is still two modules that cannot
be understood (or moved to another layer) one without the other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
ROOTS = ("ctxvec", "ctxvec_flows")


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))
    return {c["id"]: c for c in config["tool"]["importlinter"]["contracts"]}


def _lint_imports(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_lint_imports_keeps_every_contract():
    out = _lint_imports(REPO)
    report = out.stdout + out.stderr
    assert out.returncode == 0, report
    assert f"Contracts: {len(_contracts())} kept, 0 broken." in report


# One forbidden import per contract, written into a copy of the source tree: (the module to add,
# its text, the contract that must break). Each proves its contract is not vacuous.
VIOLATIONS = [
    ("ctxvec/train/_probe.py", "import ctxvec.evaluate.run\n", "layers"),  # train under evaluate
    ("ctxvec/errors_probe/__init__.py", "", "layers"),  # a package with no layer (exhaustive)
    ("ctxvec/stages/_probe.py", "import ctxvec_flows.pipeline\n", "flows-layer"),
    ("ctxvec/serve/_probe.py", "import mlflow\n", "mlflow"),
    ("ctxvec_flows/_probe.py", "import mlflow\n", "mlflow"),
    ("ctxvec/cli/_probe.py", "import prefect\n", "prefect"),
    ("ctxvec/ingest/_probe.py", "import typer\n", "library"),
    ("ctxvec/embed/_probe.py", "from ctxvec_flows import pipeline\n", "library"),
]


@pytest.mark.parametrize(("path", "text", "contract"), VIOLATIONS,
                         ids=[f"{c}:{p}" for p, _, c in VIOLATIONS])
def test_a_forbidden_import_breaks_its_contract(tmp_path, path, text, contract):
    shutil.copytree(REPO / "src" / "ctxvec", tmp_path / "ctxvec")
    shutil.copytree(REPO / "flows", tmp_path / "ctxvec_flows")
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    probe = tmp_path / path
    probe.parent.mkdir(exist_ok=True)
    probe.write_text(text)
    # the copy comes first on the path: it shadows the installed (editable) packages
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = _lint_imports(tmp_path, env)
    report = out.stdout + out.stderr
    assert out.returncode == 1, report
    broken = {c["id"] for c in _contracts().values() if f"{c['name']} BROKEN" in report}
    assert contract in broken, report


# The packages each forbidden contract lets import what it forbids (they are not its sources).
EXEMPT = {"mlflow": {"ctxvec.registry"}, "prefect": set(), "library": {"ctxvec.cli"}}


@pytest.mark.parametrize("contract", sorted(EXEMPT))
def test_every_package_is_a_source_of_the_forbidden_contracts(contract):
    """A package added later must be listed: otherwise it could import mlflow, prefect or typer
    without any contract noticing (the layers contract is exhaustive; these are explicit)."""
    graph = grimp.build_graph("ctxvec", cache_dir=None)
    children = graph.find_children("ctxvec")
    sources = set(_contracts()[contract]["source_modules"])
    assert children - sources == EXEMPT[contract]


def import_circles(graph: grimp.ImportGraph, package: str) -> list[list[str]]:
    """Strongly connected components (Tarjan, iterative) of more than one module among the
    modules of ``package``: each is a set of modules that import each other in a circle."""
    modules = sorted(m for m in graph.modules if m == package or m.startswith(package + "."))
    inside = set(modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & inside) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []
    for root in modules:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = len(index)
                stack.append(v)
                on_stack.add(v)
            if i < len(edges[v]):
                work.append((v, i + 1))
                w = edges[v][i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:  # v is the root of a component: pop it
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
            if work:  # hand v's low link up to the module that reached it
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return circles


@pytest.mark.parametrize("package", ROOTS)
def test_no_import_circles(package):
    graph = grimp.build_graph(*ROOTS, cache_dir=None)
    assert import_circles(graph, package) == []


def test_the_circle_finder_finds_circles():
    graph = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b", "p.c", "p.d", "p.e"):
        graph.add_module(m)
    for importer, imported in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d"),
                               ("p.d", "p.e"), ("p.e", "p.d")]:
        graph.add_import(importer=importer, imported=imported)
    assert sorted(import_circles(graph, "p")) == [["p.a", "p.b", "p.c"], ["p.d", "p.e"]]


# What the function-level imports marked `# lazy:` keep off a path that must start fast.
LIGHT = {
    "ctxvec.cli": {"torch", "transformers", "mlflow", "faiss", "prefect", "ray", "pyarrow",
                   "pydantic"},  # `ctxvec --help` imports the command modules, nothing more
    "ctxvec.registry": {"mlflow", "torch"},  # mlflow loads when the registry is used
}


@pytest.mark.parametrize("module", sorted(LIGHT))
def test_light_modules_stay_light(module):
    code = f"import sys, {module}; print(' '.join({{m.split('.')[0] for m in sys.modules}}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    assert LIGHT[module] & set(out.stdout.split()) == set()
