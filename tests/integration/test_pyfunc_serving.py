"""The registered pyfunc as MLflow users call it, on a real MLflow (SQLite) and a tiny real BERT.

- ``mlflow.pyfunc.load_model(...).predict`` reads texts from every shape a Python caller passes
  (list, array, Series, DataFrame, dict) and gives the same vectors for each;
- the scoring server's own parsing (``mlflow.pyfunc.scoring_server.invocations``, what
  ``mlflow models serve`` runs per request) accepts every standard JSON format and CSV;
- the logged requirements install without ctxvec on any index: ctxvec's wheel is logged with the
  model and named by its path in the model folder, and no pin carries a local ``+cpu`` label;
- the pyfunc runs in the precision the version records.

The slow tests serve the version with ``mlflow models serve`` and post each format over HTTP: with
``--env-manager local``, and with ``--env-manager virtualenv``, which builds an environment from
the model's requirements alone.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server

from ctxvec.artifacts import EvalReport, TrainedModel
from ctxvec.config import CtxvecConfig
from ctxvec.embed.precision import PRECISION_TAG, PYFUNC_PRECISION, PrecisionMismatchError
from ctxvec.model.encoder import Encoder
from ctxvec.registry import Registry
from ctxvec.registry.download import cached_version_dir
from ctxvec.workspace import Workspace
from tests.helpers import tiny_bert

NAME = "ctxvec-encoder"
TEXTS = ["I saw a saw in the shed.", "The bank of the river.", "A bank loan."]
SRC = Path(__file__).resolve().parents[2] / "src" / "ctxvec"


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One registered version (what the pipeline's register stage logs), its cached model
    folder, the pyfunc loaded from it, and the vectors the encoder itself gives."""
    home = tmp_path_factory.mktemp("pyfunc") / "home"
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
            mp.delenv(key)
        model_dir = tiny_bert(home.parent / "bert", TEXTS)
        ws = Workspace(home).ensure()
        run_dir = ws.runs / "run"
        run_dir.mkdir(parents=True)
        trained = TrainedModel(str(run_dir), str(model_dir), 1, 10, 2.5, None, None)
        registry = Registry(ws)
        reg = registry.register(CtxvecConfig(), None, None, trained, EvalReport({}, {}))
        registry.local_dir(reg.uri)  # downloaded into the cache, as serving does
        root = cached_version_dir(ws.model_cache, NAME, reg.version)
        precision = registry.resolve(reg.uri).tags[PRECISION_TAG]
        yield {"ws": ws, "registry": registry, "reg": reg, "root": root,
               "model": mlflow.pyfunc.load_model(str(root)), "precision": precision,
               "expected": Encoder.load(model_dir, precision=precision).encode(TEXTS)}


def _same(vectors, expected) -> None:
    got = np.asarray(vectors, dtype=np.float32)
    assert got.shape == expected.shape
    assert np.allclose(got, expected, atol=1e-5)


def test_predict_reads_every_shape_a_python_caller_passes(logged):
    model, expected = logged["model"], logged["expected"]
    shapes = {
        "list": list(TEXTS),
        "tuple": tuple(TEXTS),
        "array": np.array(TEXTS),
        "column array": np.array(TEXTS).reshape(-1, 1),
        "object array": np.array(TEXTS, dtype=object),
        "series": pd.Series(TEXTS),
        "frame, text column": pd.DataFrame({"id": [1, 2, 3], "text": TEXTS}),
        "frame, one column": pd.DataFrame({"sentence": TEXTS}),
        "dict": {"text": list(TEXTS)},
        "records": [{"text": t} for t in TEXTS],
    }
    for what, model_input in shapes.items():
        vectors = model.predict(model_input)
        assert isinstance(vectors, list), what
        _same(vectors, expected)
    _same(model.predict(TEXTS[0]), expected[:1])  # one string: one vector
    assert model.predict([]) == []


def test_predict_says_what_it_expected_when_there_are_no_texts(logged):
    model = logged["model"]
    with pytest.raises(MlflowException, match=r"columns \['a', 'b'\].*'text'"):
        model.predict(pd.DataFrame({"a": ["x"], "b": ["y"]}))
    with pytest.raises(MlflowException, match="row 1 is int 7, not text"):
        model.predict(["fine", 7])
    with pytest.raises(MlflowException, match=r"shape \(1, 2\)"):
        model.predict(np.array([["x", "y"]]))
    with pytest.raises(MlflowException, match="cannot read texts from int"):
        model.predict(3)


def _invoke(model, body: str, content_type: str = "application/json"):
    """One request as ``mlflow models serve`` handles it, without the HTTP server."""
    return scoring_server.invocations(body, content_type, model,
                                      model.metadata.get_input_schema())


def test_the_scoring_server_parses_every_standard_format(logged):
    model, expected = logged["model"], logged["expected"]
    bodies = {
        "inputs": {"inputs": TEXTS},
        "inputs, one column": {"inputs": {"text": TEXTS}},
        "instances": {"instances": TEXTS},
        "instances, records": {"instances": [{"text": t} for t in TEXTS]},
        "dataframe_records": {"dataframe_records": [{"text": t} for t in TEXTS]},
        "dataframe_split": {"dataframe_split": {"columns": ["text"],
                                                "data": [[t] for t in TEXTS]}},
    }
    for what, body in bodies.items():
        response = _invoke(model, json.dumps(body))
        assert response.status == 200, (what, response.response)
        _same(json.loads(response.response)["predictions"], expected)
    csv = pd.DataFrame({"text": TEXTS}).to_csv(index=False)
    response = _invoke(model, csv, "text/csv")
    assert response.status == 200, response.response
    _same(json.loads(response.response)["predictions"], expected)
    # a request without texts is the caller's error (HTTP 400), with the reason
    with pytest.raises(MlflowException, match="'text'") as err:
        _invoke(model, json.dumps({"dataframe_records": [{"a": "x", "b": "y"}]}))
    assert err.value.get_http_status_code() == 400


def _record_ok(wheel: zipfile.ZipFile) -> bool:
    """Every file the wheel's RECORD lists has the hash and size it says."""
    info = next(n for n in wheel.namelist() if n.endswith(".dist-info/RECORD"))
    for line in wheel.read(info).decode().splitlines():
        path, digest, size = line.rsplit(",", 2)
        if path == info:
            continue
        data = wheel.read(path)
        want = "sha256=" + base64.urlsafe_b64encode(
            hashlib.sha256(data).digest()).rstrip(b"=").decode()
        if digest != want or int(size) != len(data):
            return False
    return True


def test_requirements_install_without_ctxvec_on_an_index(logged):
    root = logged["root"]
    requirements = (root / "requirements.txt").read_text().splitlines()
    wheel_path = root / requirements[0]  # relative to the model folder, where pip runs
    assert requirements[0] == "artifacts/ctxvec-0.1.0-py3-none-any.whl" and wheel_path.is_file()
    assert not any("+" in r for r in requirements)
    assert not any(r.startswith("ctxvec==") for r in requirements)
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements
    assert "+cpu" not in (root / "conda.yaml").read_text()
    with zipfile.ZipFile(wheel_path) as wheel:
        names = set(wheel.namelist())
        # the code that registered the model, as it is in the source tree
        assert wheel.read("ctxvec/registry/pyfunc_input.py") == \
            (SRC / "registry" / "pyfunc_input.py").read_bytes()
        assert "ctxvec/serve/static/index.html" in names
        assert not any("__pycache__" in n for n in names)
        metadata = wheel.read("ctxvec-0.1.0.dist-info/METADATA").decode()
        assert "Name: ctxvec\n" in metadata and "Requires-Dist: torch" in metadata
        assert _record_ok(wheel)


def test_the_pyfunc_runs_in_the_precision_the_version_records(logged):
    model, precision = logged["model"], logged["precision"]
    assert model.model_config[PYFUNC_PRECISION] == precision
    assert model.unwrap_python_model().encoder.precision == precision
    other = "bf16" if precision == "fp32" else "fp32"
    with pytest.raises(PrecisionMismatchError, match=f"embedded in {precision}"):
        mlflow.pyfunc.load_model(str(logged["root"]), model_config={"precision": other})
    same = mlflow.pyfunc.load_model(str(logged["root"]), model_config={"precision": precision})
    assert same.unwrap_python_model().encoder.precision == precision


# --- mlflow models serve ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: str, content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(url, body.encode(), {"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=60) as r:
        return r.status, json.loads(r.read())


def serve_and_post(model_uri: str, env: dict[str, str], env_manager: str, cwd: Path,
                   start_timeout: float) -> dict[str, tuple[int, dict]]:
    """``mlflow models serve -m MODEL_URI --env-manager ENV_MANAGER`` on a free local port ->
    the status and answer of each JSON format posted to /invocations."""
    port = _free_port()
    log = (cwd / f"serve-{env_manager}.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
         env_manager, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            assert proc.poll() is None, (cwd / f"serve-{env_manager}.log").read_text()[-4000:]
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the scoring server did not start in time"
            time.sleep(1)
        return {
            "inputs": _post(f"{base}/invocations", json.dumps({"inputs": TEXTS})),
            "instances": _post(f"{base}/invocations", json.dumps({"instances": TEXTS})),
            "dataframe_records": _post(f"{base}/invocations", json.dumps(
                {"dataframe_records": [{"text": t} for t in TEXTS]})),
            "dataframe_split": _post(f"{base}/invocations", json.dumps(
                {"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}})),
            "csv": _post(f"{base}/invocations",
                         pd.DataFrame({"text": TEXTS}).to_csv(index=False), "text/csv"),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _serving_env(logged) -> dict[str, str]:
    """The environment of ``mlflow models serve``: the workspace's registry, the champion alias
    on the version, and `uvicorn` from this interpreter's folder (as in an activated venv)."""
    ws, reg = logged["ws"], logged["reg"]
    logged["registry"].client.set_registered_model_alias(NAME, "champion", reg.version)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = ws.mlflow_uri
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _check_answers(answers: dict[str, tuple[int, dict]], expected: np.ndarray) -> None:
    for what, (status, body) in answers.items():
        assert status == 200, (what, body)
        _same(body["predictions"], expected)


@pytest.mark.slow
def test_mlflow_models_serve_answers_every_format(logged, tmp_path):
    """``mlflow models serve -m models:/ctxvec-encoder@champion --env-manager local``."""
    answers = serve_and_post(f"models:/{NAME}@champion", _serving_env(logged), "local",
                             tmp_path, 300)
    _check_answers(answers, logged["expected"])


def _pyenv_has_this_python() -> bool:
    """MLflow's virtualenv manager takes the model's Python from pyenv (installing it from
    python.org when missing, which needs more than a package index)."""
    pyenv = shutil.which("pyenv")
    return pyenv is not None and subprocess.run(
        [pyenv, "prefix", platform.python_version()], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _pyenv_has_this_python(),
                    reason=f"pyenv with Python {platform.python_version()} not found")
def test_mlflow_models_serve_builds_its_own_environment(logged, tmp_path):
    """``--env-manager virtualenv``: a fresh environment (its own MLFLOW_ENV_ROOT) built from
    the model's requirements alone: ctxvec from the wheel logged with the model, the rest from
    the package index (several minutes, about 2 GB)."""
    env = _serving_env(logged)
    env.pop("PYTHONPATH", None)  # the environment's own ctxvec, from the wheel, not this tree
    env["MLFLOW_ENV_ROOT"] = str(tmp_path / "envs")
    answers = serve_and_post(f"models:/{NAME}@champion", env, "virtualenv", tmp_path, 2400)
    _check_answers(answers, logged["expected"])
    site = next((tmp_path / "envs").glob("*/lib/python*/site-packages"))
    assert (site / "ctxvec" / "registry" / "pyfunc_input.py").read_bytes() == \
        (SRC / "registry" / "pyfunc_input.py").read_bytes()
