"""The deployment files under infra/, checked without Docker or a cluster.

- Compose files: interpolated with ``infra/compose/.env.example`` as Compose does, then validated
  against the Compose Specification's JSON schema (``tests/data/compose-spec.json``, vendored;
  see ``tests/data/compose-spec.README.md``); every ``depends_on`` names a service that can
  satisfy its condition; no secret is written in them (passwords are required ``${VAR:?}``
  interpolations, and ``.env.example`` holds placeholders only); the workers poll the pools that
  ``infra/prefect.yaml`` deploys to, the GPU pool's worker reserves a GPU, and the setup service
  creates the concurrency limit on the training tasks' tag; the worker image carries what the
  deployments read.
- Kubernetes: every manifest is well-formed (apiVersion, kind, metadata.name); the Prefect
  base job templates only use variables they declare, their defaults satisfy their own schema,
  and the GPU pool's pods request an NVIDIA GPU; the Helm values point at the deployed pools.
  With ``kubernetes-validate`` installed, the manifests and the rendered flow-run Jobs are also
  validated against the Kubernetes API's JSON schemas (strict: unknown fields fail).

What this cannot show: that the images build and the services come up; docs/deploy.md says so.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.helpers import REPO

INFRA = REPO / "infra"
COMPOSE_DIR = INFRA / "compose"
K8S = INFRA / "k8s"
PREFECT_YAML = INFRA / "prefect.yaml"
COMPOSE_SCHEMA = REPO / "tests" / "data" / "compose-spec.json"
# The Kubernetes API version the manifests are checked against (kubernetes-validate's schemas).
K8S_VERSION = "1.30"

COMPOSE_FILES = sorted(p for p in INFRA.rglob("*.y*ml")
                       if re.fullmatch(r"(docker-)?compose(\.[\w.-]+)?\.ya?ml", p.name))
K8S_MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if not p.name.endswith(".values.yaml"))
HELM_VALUES = sorted(K8S.glob("prefect-worker-*.values.yaml"))
JOB_TEMPLATES = sorted(K8S.glob("base-job-template.*.json"))

SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE", re.I)
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, ${VAR+alt},
# $VAR, and $$ (a literal $), as the Compose Specification's interpolation reads them.
INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_]\w*))")
REQUIRED_SECRET = re.compile(r"\$\{[A-Za-z_]\w*:?\?[^}]*\}")  # ${VAR:?msg}: no default


# --- helpers -----------------------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a Compose .env file (comments and blank lines skipped)."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            env[key.strip()] = value.strip()
    return env


def interpolate(node: Any, env: dict[str, str], used: set[str]) -> Any:
    """Compose's interpolation over a parsed file: values only, never keys. A variable with
    neither a value nor a default fails here, where Compose would substitute ""."""
    if isinstance(node, dict):
        return {k: interpolate(v, env, used) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, used) for v in node]
    if not isinstance(node, str):
        return node

    def substitute(m: re.Match) -> str:
        if m["escaped"]:
            return "$"
        name, op, arg = m["braced"] or m["named"], m["op"], m["arg"]
        used.add(name)
        value = env.get(name)
        unset = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if unset else value
        if op in (":?", "?"):
            assert not unset, f"${{{name}}} is required ({arg}) but .env.example does not set it"
            return value
        if op in (":+", "+"):
            return "" if unset else arg
        assert value is not None, f"${name} has no default and .env.example does not set it"
        return value

    return INTERPOLATION.sub(substitute, node)


def env_example(compose: Path) -> dict[str, str]:
    path = compose.parent / ".env.example"
    assert path.is_file(), f"{compose.name} needs a .env.example beside it"
    return read_env_file(path)


def load_compose(path: Path) -> tuple[dict, dict, set[str]]:
    """(raw file, file as Compose sees it with .env.example's values, variables it uses)."""
    raw = yaml.safe_load(path.read_text())
    used: set[str] = set()
    return raw, interpolate(raw, env_example(path), used), used


def environment(service: dict) -> dict[str, str]:
    """A service's environment, from either of Compose's two forms (mapping or KEY=VALUE)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def strings(node: Any) -> list[str]:
    """Every string in a parsed YAML tree."""
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return [node] if isinstance(node, str) else []


def argv(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def option(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def depends_on(service: dict) -> dict[str, str]:
    """{target: condition}; the short (list) form means service_started."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def worker_pools(compose: dict) -> dict[str, str]:
    """{service: work pool} for every service that runs `prefect worker start`."""
    pools = {}
    for name, service in compose["services"].items():
        args = argv(service)
        if args[:3] == ["prefect", "worker", "start"]:
            pool = option(args, "--pool")
            assert pool, f"service {name}: `prefect worker start` without --pool"
            pools[name] = pool
    return pools


def deployed_pools() -> dict[str, set[str]]:
    """{work pool: tags of its deployments} from infra/prefect.yaml."""
    if not PREFECT_YAML.is_file():
        pytest.skip("infra/prefect.yaml is not there")
    project = yaml.safe_load(PREFECT_YAML.read_text())
    pools: dict[str, set[str]] = {}
    for dep in project.get("deployments") or []:
        pool = (dep.get("work_pool") or {}).get("name")
        assert pool, f"deployment {dep.get('name')!r} names no work pool"
        pools.setdefault(pool, set()).update(dep.get("tags") or [])
    assert pools, "infra/prefect.yaml deploys nothing"
    return pools


def gpu_pool(pools: dict[str, set[str]]) -> str:
    """The pool whose deployments are tagged `gpu` (infra/prefect.yaml's gpu_pool)."""
    gpu = [pool for pool, tags in pools.items() if "gpu" in tags]
    assert len(gpu) == 1, f"expected one pool with `gpu`-tagged deployments, got {gpu}"
    return gpu[0]


def gpu_train_tag() -> str:
    """The tag of the training tasks: the stage graph's GPU_TRAIN_TAG (src/ctxvec/stages/
    pipeline.py, which flows/pipeline.py tags the train task with), read without importing it
    (it imports torch: seconds)."""
    tree = ast.parse((REPO / "src" / "ctxvec" / "stages" / "pipeline.py").read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                and any(isinstance(t, ast.Name) and t.id == "GPU_TRAIN_TAG"
                        for t in node.targets)):
            return node.value.value
    raise AssertionError("src/ctxvec/stages/pipeline.py defines no GPU_TRAIN_TAG = '...' any more: "
                         "update this test and the compose setup service")


def yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_validate(manifest: dict) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (Kubernetes JSON schemas) not "
        "installed: structural checks only")
    try:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path)
        raise AssertionError(f"{manifest['kind']} {manifest.get('metadata', {}).get('name')}: "
                             f"{where}: {e.message}") from None


def placeholders(node: Any) -> set[str]:
    """Names in the {{ name }} placeholders of a Prefect job template."""
    if isinstance(node, dict):
        return set().union(*(placeholders(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(placeholders(v) for v in node)) if node else set()
    if isinstance(node, str):
        return set(re.findall(r"\{\{\s*([\w.$-]+)\s*\}\}", node))
    return set()


def variable_defaults(template: dict) -> dict[str, Any]:
    """The values a work pool gives its variables when a deployment sets none."""
    props = template["variables"]["properties"]
    return {name: spec["default"] for name, spec in props.items()
            if spec.get("default") is not None}


def render_job(template: dict) -> dict:
    """The Job a Kubernetes worker submits for a flow run with the pool's defaults: Prefect's
    own templating, then what the worker adds (a name; env as a list of name/value pairs)."""
    from prefect.utilities.templating import apply_values

    values = {**variable_defaults(template), "name": "ctxvec-flow-run"}
    config = apply_values(template["job_configuration"], values)
    job = config["job_manifest"]
    for container in job["spec"]["template"]["spec"]["containers"]:
        env = container.get("env") or {}
        if isinstance(env, dict):
            container["env"] = [{"name": k, "value": str(v)} for k, v in env.items()]
    return job


def kind_of(path: Path) -> str:
    """cpu or gpu, from base-job-template.<kind>.json / prefect-worker-<kind>.values.yaml."""
    return re.search(r"(?:base-job-template\.|prefect-worker-)(\w+)\.", path.name).group(1)


def k8s_namespace() -> str:
    (namespace,) = [d for p in K8S_MANIFESTS for d in yaml_documents(p)
                    if d.get("kind") == "Namespace"]
    return namespace["metadata"]["name"]


def manifest_named(kind: str) -> dict:
    (manifest,) = [d for p in K8S_MANIFESTS for d in yaml_documents(p) if d.get("kind") == kind]
    return manifest


# --- compose -----------------------------------------------------------------------------------


def test_there_is_a_compose_file():
    assert COMPOSE_DIR / "compose.yaml" in COMPOSE_FILES


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_compose_file_matches_the_compose_specification(path):
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    raw, compose, _ = load_compose(path)
    for label, doc in (("as written", raw), ("interpolated", compose)):
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        assert not errors, f"{path.name} ({label}):\n" + "\n".join(
            f"  {'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors)


def test_the_schema_rejects_what_compose_rejects():
    """The vendored schema is the strict one: a misspelt key, a wrong type or an unknown
    condition fails, down to a GPU reservation's fields."""
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert schema["title"] == "Compose Specification"

    def service(**fields) -> dict:
        return {"services": {"db": {"image": "postgres:16", **fields}, "app": {"image": "x"}}}

    gpu = {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert validator.is_valid(service(depends_on={"app": {"condition": "service_healthy"}}))
    assert validator.is_valid(service(deploy={"resources": {"reservations": {"devices": [gpu]}}}))
    assert not validator.is_valid(service(dependson=["app"]))
    assert not validator.is_valid(service(ports="5432:5432"))
    assert not validator.is_valid(service(depends_on={"app": {"condition": "sometimes"}}))
    gpu["capability"] = gpu.pop("capabilities")
    assert not validator.is_valid(service(deploy={"resources": {"reservations": {
        "devices": [gpu]}}}))


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_env_example_lists_exactly_the_variables_compose_uses(path):
    _, _, used = load_compose(path)
    listed = set(env_example(path))
    assert not used - listed, f".env.example misses {sorted(used - listed)}"
    assert not listed - used, f".env.example lists unused {sorted(listed - used)}"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_depends_on_targets_exist_and_can_meet_their_condition(path):
    _, compose, _ = load_compose(path)
    services = compose["services"]
    for name, service in services.items():
        for target, condition in depends_on(service).items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert target != name, f"{name} depends on itself"
            dep = services[target]
            if condition == "service_healthy":
                check = dep.get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), (
                    f"{name} waits for {target} to be healthy, but {target} has no healthcheck")
            elif condition == "service_completed_successfully":
                assert dep.get("restart", "no") == "no", (
                    f"{name} waits for {target} to complete, but {target} restarts")
            else:
                assert condition == "service_started", f"{name}: unknown condition {condition}"
            # a service that always starts cannot wait for one that only a profile starts
            if not service.get("profiles"):
                assert not dep.get("profiles"), (
                    f"{name} (no profile) depends on {target} (profiles {dep['profiles']})")


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_no_secret_is_written_in_the_compose_file(path):
    raw, _, _ = load_compose(path)
    # a secret variable never has a default: a missing .env must fail, not fall back
    for m in INTERPOLATION.finditer(path.read_text()):  # $$ (a literal $) is no variable
        name = m["braced"] or m["named"]
        if name and SECRET_NAME.search(name):
            assert m["op"] in (":?", "?"), f"{m[0]}: a secret needs ${{{name}:?message}}"
    for name, service in raw["services"].items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert REQUIRED_SECRET.fullmatch(value), (
                    f"{name}: {key} must come from .env as ${{VAR:?message}}, not {value!r}")
        # credentials inside URLs (scheme://user:password@host), in any string of the service
        for text in strings(service):
            masked = re.sub(r"\$\{[^}]*\}", "\0", text)  # each interpolation -> one NUL
            for password in re.findall(r"://[^/\s@]*:([^@\s/]*)@", masked):
                assert password == "\0", f"{name}: a URL holds a literal password: {text!r}"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_env_example_holds_placeholders_and_env_is_ignored(path):
    example = env_example(path)
    secrets = {k: v for k, v in example.items() if SECRET_NAME.search(k)}
    assert secrets, ".env.example lists no password at all"
    for key, value in secrets.items():
        assert value.startswith("change-me"), f".env.example: {key} must be a change-me placeholder"
    ignored = [line.strip() for line in (path.parent / ".gitignore").read_text().splitlines()]
    assert ".env" in ignored, f"{path.parent.relative_to(REPO)}/.gitignore must ignore .env"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_workers_poll_the_pools_prefect_yaml_deploys_to(path):
    pools = deployed_pools()
    _, compose, _ = load_compose(path)
    workers = worker_pools(compose)
    assert set(workers.values()) == set(pools), (
        f"compose workers poll {sorted(set(workers.values()))}, infra/prefect.yaml deploys to "
        f"{sorted(pools)}")
    gpu = gpu_pool(pools)
    for name, pool in workers.items():
        devices = (compose["services"][name].get("deploy", {}).get("resources", {})
                   .get("reservations", {}).get("devices", []))
        gpus = [d for d in devices if "gpu" in d.get("capabilities", [])]
        if pool == gpu:
            assert gpus and gpus[0].get("driver") == "nvidia", f"{name} reserves no NVIDIA GPU"
        else:
            assert not gpus, f"{name} polls CPU pool {pool} but reserves a GPU"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_setup_creates_the_pools_and_the_training_concurrency_limit(path):
    """Workers start after a one-shot service that creates their pools and the limit on the
    training tasks' tag (else two trainings could share one GPU)."""
    _, compose, _ = load_compose(path)
    services = compose["services"]
    workers = worker_pools(compose)
    for name in workers:
        setups = [t for t, c in depends_on(services[name]).items()
                  if c == "service_completed_successfully"
                  and "prefect work-pool create" in " ".join(argv(services[t]))]
        assert setups, f"{name} does not wait for a service that creates the work pools"
        script = " ".join(argv(services[setups[0]]))
        assert re.search(rf"prefect concurrency-limit create {re.escape(gpu_train_tag())} 1\b",
                         script), f"{setups[0]} does not create the {gpu_train_tag()} limit"
        listed = re.search(r"for pool in ([^;]+);", script)
        assert listed and workers[name] in listed.group(1).split(), (
            f"{setups[0]} does not create pool {workers[name]}")


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_built_images_name_existing_dockerfiles_stages_and_args(path):
    _, compose, _ = load_compose(path)
    builds = {n: s["build"] for n, s in compose["services"].items() if "build" in s}
    assert builds, "nothing is built"
    for name, build in builds.items():
        context = (path.parent / build["context"]).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: no {dockerfile}"
        text = dockerfile.read_text()
        stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.M | re.I)
        if "target" in build:
            assert build["target"] in stages, f"{name}: no stage {build['target']} in {stages}"
        declared = set(re.findall(r"^ARG\s+(\w+)", text, re.M))
        assert set(build.get("args") or {}) <= declared, (
            f"{name}: build args {sorted(set(build['args']) - declared)} are not ARGs")


def test_worker_image_carries_what_the_deployments_read():
    """infra/prefect.yaml runs flows by path from $CTXVEC_REPO, on recipes in the checkout: the
    image must copy them (the checkout stage) and the build context must let them in."""
    dockerfile = INFRA / "docker" / "Dockerfile.worker"
    text = dockerfile.read_text()
    stage = re.search(r"^FROM\s+scratch\s+AS\s+checkout\n(.*?)(?=^FROM\s)", text, re.M | re.S)
    assert stage, "Dockerfile.worker has no `checkout` stage"
    copied = [src for line in re.findall(r"^COPY\s+(.+)$", stage.group(1), re.M)
              for src in line.split()[:-1] if not src.startswith("--")]
    assert "CTXVEC_REPO=/opt/ctxvec" in text and "/opt/ctxvec" in stage.group(1)
    allowed = [line[1:].strip("/") for line in
               (INFRA / "docker" / "Dockerfile.worker.dockerignore").read_text().splitlines()
               if line.startswith("!")]

    def covered(path: str, prefixes: list[str]) -> bool:
        return any(path == p or path.startswith(p + "/") for p in prefixes)

    needed = {"infra/prefect.yaml"}
    if PREFECT_YAML.is_file():
        for dep in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]:
            needed.add(dep["entrypoint"].split(":")[0])
            needed.add(dep["parameters"]["config"])
    for path in sorted(needed):
        assert (REPO / path).exists(), f"infra/prefect.yaml names missing {path}"
        assert covered(path, copied), f"the image does not copy {path}"
        assert covered(path, allowed), f"Dockerfile.worker.dockerignore keeps out {path}"


def test_prefect_server_image_keeps_pyprojects_server_pins():
    """The Prefect server image adds pyproject.toml's bounds on fastapi and SQLAlchemy (Prefect
    3.8's server breaks above them); the two lists must not drift apart."""
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    server_pins = {d for d in deps if re.match(r"(fastapi|sqlalchemy)\b", d, re.I)}
    install = re.search(r"^RUN pip install (.+)$",
                        (INFRA / "docker" / "Dockerfile.prefect").read_text(), re.M)
    assert install, "Dockerfile.prefect installs nothing"
    assert set(re.findall(r'"([^"]+)"', install.group(1))) == server_pins


def test_mlflow_server_keeps_its_metadata_in_postgres_with_the_driver_its_image_installs():
    """The `mlflow` service's backend store is a postgresql:// URL to the compose Postgres, as
    its user, in a database postgres-init.sql creates, handed over in MLFLOW_BACKEND_STORE_URI
    (which `mlflow server` reads for --backend-store-uri); its image installs the driver and
    boto3 at pyproject.toml's `postgres` and `s3` extras' bounds. A real MLflow on a real
    PostgreSQL runs in tests/flows/test_mlflow_postgres.py."""
    import tomllib
    from urllib.parse import urlsplit

    import mlflow.cli

    path = COMPOSE_DIR / "compose.yaml"
    _, compose, _ = load_compose(path)
    services = compose["services"]
    service = services["mlflow"]
    args = argv(service)
    assert option(args, "--backend-store-uri") is None  # one source: the environment (off `ps`)
    url = urlsplit(environment(service)["MLFLOW_BACKEND_STORE_URI"])
    assert url.scheme == "postgresql" and url.hostname in services
    db_env = environment(services[url.hostname])
    assert (url.username, url.password) == (db_env["POSTGRES_USER"], db_env["POSTGRES_PASSWORD"])
    created = re.findall(r"^CREATE DATABASE (\w+);", (COMPOSE_DIR / "postgres-init.sql")
                         .read_text(), re.M | re.I)
    assert url.path.lstrip("/") in created
    store = next(p for p in mlflow.cli.server.params if p.name == "backend_store_uri")
    assert store.envvar == "MLFLOW_BACKEND_STORE_URI"
    assert (option(args, "--artifacts-destination") or "").startswith("s3://")
    dockerfile = path.parent / service["build"]["context"] / service["build"]["dockerfile"]
    install = re.search(r"pip install (.+)$", dockerfile.read_text(), re.M)
    assert install, f"{dockerfile.name} installs nothing"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert {*extras["postgres"], *extras["s3"]} <= set(re.findall(r'"([^"]+)"', install.group(1)))


# --- kubernetes --------------------------------------------------------------------------------


def test_there_are_kubernetes_files():
    kinds = {d["kind"] for p in K8S_MANIFESTS for d in yaml_documents(p)}
    assert {"Namespace", "Secret", "PersistentVolumeClaim"} <= kinds
    assert {kind_of(p) for p in HELM_VALUES} == {kind_of(p) for p in JOB_TEMPLATES} == {
        "cpu", "gpu"}


@pytest.mark.parametrize("path", K8S_MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_well_formed(path):
    docs = yaml_documents(path)
    assert docs, f"{path.name} is empty"
    namespace = k8s_namespace()
    for doc in docs:
        for key in ("apiVersion", "kind", "metadata"):
            assert key in doc, f"{path.name}: no {key}"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"].get("name", "")), (
            f"{path.name}: metadata.name must be a DNS label")
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, (
                f"{path.name}: {doc['kind']} outside namespace {namespace}")


@pytest.mark.parametrize("path", K8S_MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_the_kubernetes_schema(path):
    for doc in yaml_documents(path):
        k8s_validate(doc)


def test_secret_template_holds_placeholders_only():
    secret = manifest_named("Secret")
    values = {**(secret.get("stringData") or {}), **(secret.get("data") or {})}
    assert values
    for key, value in values.items():
        assert value == "REPLACE_ME", f"secret.example.yaml: {key} must be REPLACE_ME"


@pytest.mark.parametrize("path", JOB_TEMPLATES, ids=lambda p: p.name)
def test_job_template_is_consistent(path):
    template = json.loads(path.read_text())
    assert set(template) == {"job_configuration", "variables"}
    variables = template["variables"]
    jsonschema.validators.validator_for(variables).check_schema(variables)
    # every placeholder is a declared variable: an undeclared one renders as nothing, silently
    undeclared = placeholders(template["job_configuration"]) - set(variables["properties"])
    assert not undeclared, f"{path.name}: undeclared variables {sorted(undeclared)}"
    defaults = variable_defaults(template)
    jsonschema.validate(defaults, variables)
    # the defaults point at the objects of infra/k8s and the image's user
    assert defaults["namespace"] == k8s_namespace()
    assert defaults["workspace_claim"] == manifest_named("PersistentVolumeClaim")["metadata"][
        "name"]
    assert defaults["credentials_secret"] == manifest_named("Secret")["metadata"]["name"]
    assert defaults["env"]["CTXVEC_HOME"] == "/workspace"
    job = render_job(template)
    pod = job["spec"]["template"]["spec"]
    uid = re.search(r"useradd .*--uid (\d+)", (INFRA / "docker" / "Dockerfile.worker")
                    .read_text()).group(1)
    assert pod["securityContext"]["runAsUser"] == int(uid)
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["workspace"] == "/workspace"


@pytest.mark.parametrize("path", JOB_TEMPLATES, ids=lambda p: p.name)
def test_only_the_gpu_pool_requests_gpus(path):
    job = render_job(json.loads(path.read_text()))
    pod = job["spec"]["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    if kind_of(path) == "gpu":
        assert int(limits["nvidia.com/gpu"]) >= 1
        assert pod["nodeSelector"], "GPU pods need a node selector"
        assert any(t.get("key") == "nvidia.com/gpu" for t in pod["tolerations"])
    else:
        assert "nvidia.com/gpu" not in json.dumps(job)


@pytest.mark.parametrize("path", JOB_TEMPLATES, ids=lambda p: p.name)
def test_rendered_job_matches_the_kubernetes_schema(path):
    k8s_validate(render_job(json.loads(path.read_text())))


def test_kubernetes_check_catches_a_misplaced_field():
    """The strict schema check is a real one: Prefect's default template puts `parallelism`
    in the pod spec, where Kubernetes has no such field."""
    template = json.loads((K8S / "base-job-template.cpu.json").read_text())
    job = render_job(template)
    job["spec"]["template"]["spec"]["parallelism"] = 1
    with pytest.raises(AssertionError, match="parallelism"):
        k8s_validate(job)


def test_helm_values_point_workers_at_the_deployed_pools():
    pools = deployed_pools()
    names = set()
    compose_prefect = read_env_file(COMPOSE_DIR / ".env.example")["PREFECT_IMAGE"]
    prefect_version = re.search(r":(\d+\.\d+\.\d+)-", compose_prefect).group(1)
    for path in HELM_VALUES:
        values = yaml.safe_load(path.read_text())
        worker = values["worker"]
        pool = worker["config"]["workPool"]
        assert pool in pools, f"{path.name}: pool {pool} is not in infra/prefect.yaml"
        assert (pool == gpu_pool(pools)) == (kind_of(path) == "gpu"), f"{path.name}: {pool}"
        assert worker["config"]["type"] == "kubernetes"
        assert worker["apiConfig"] == "server"
        assert worker["serverApiConfig"]["apiUrl"].endswith("/api")
        assert worker["image"]["prefectTag"].startswith(prefect_version + "-"), (
            f"{path.name}: worker Prefect differs from the compose server's {prefect_version}")
        names.add(values["fullnameOverride"])
    assert len(names) == len(HELM_VALUES), "two worker releases would share one name"
