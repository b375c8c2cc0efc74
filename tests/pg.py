"""A throwaway PostgreSQL server for tests, from the binaries of an installed PostgreSQL.

Nothing is installed or configured system-wide: the cluster lives in a temporary directory, listens
on a free port on 127.0.0.1 with its sockets in that directory, trusts local connections, and is
stopped and deleted at the end of the session. Durability is switched off (no fsync, no full-page
writes): the data is thrown away anyway.

A test module uses the session fixture with `pytest_plugins = ["tests.pg"]`. Without PostgreSQL
the tests that need it are skipped, except in CI (CI=true), where they fail: CI installs it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

BIN_GLOB = "/usr/lib/postgresql/*/bin"
PROGRAMS = ("initdb", "pg_ctl", "postgres")
SUPERUSER = "postgres"
INSTALL_HINT = (
    "sudo apt-get install -y postgresql  (Debian/Ubuntu; any PostgreSQL 12+ on PATH does)"
)
START_ATTEMPTS = 3
COMMAND_TIMEOUT = 120.0


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)


def find_bin_dir() -> Path | None:
    """The newest Debian-style PostgreSQL bin directory, else the one on PATH, else None."""
    candidates = sorted(
        (Path(found) for found in Path("/").glob(BIN_GLOB.lstrip("/"))),
        key=lambda path: _version_key(path.parent.name),
        reverse=True,
    )
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).parent)
    for candidate in candidates:
        if all((candidate / program).is_file() for program in PROGRAMS):
            return candidate
    return None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


@contextlib.contextmanager
def running_server(bin_dir: Path) -> Iterator[PostgresServer]:
    """A fresh cluster started from `bin_dir`, stopped and deleted on exit."""
    account = _unprivileged_account()
    as_user = [] if account is None else ["runuser", "-u", account.pw_name, "--"]
    workdir = Path(tempfile.mkdtemp(prefix="taskpool-pg-"))
    data = workdir / "data"
    log = workdir / "server.log"
    try:
        if account is not None:
            # PostgreSQL refuses to run as root; the cluster belongs to the account that runs it.
            os.chown(workdir, account.pw_uid, account.pw_gid)
        _run(
            [
                *as_user,
                str(bin_dir / "initdb"),
                "--pgdata",
                str(data),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            workdir,
        )
        server = _start(bin_dir, as_user, workdir, data, log)
        try:
            yield server
        finally:
            _run(
                [
                    *as_user,
                    str(bin_dir / "pg_ctl"),
                    "--pgdata",
                    str(data),
                    "-m",
                    "fast",
                    "-w",
                    "stop",
                ],
                workdir,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _start(
    bin_dir: Path, as_user: list[str], workdir: Path, data: Path, log: Path
) -> PostgresServer:
    # A free port can be taken between asking for it and the server binding it: try a few.
    failure = ""
    for _ in range(START_ATTEMPTS):
        port = _free_port()
        options = shlex.join(
            [
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-k",
                str(workdir),
                "-F",
                "-c",
                "full_page_writes=off",
                "-c",
                "synchronous_commit=off",
            ]
        )
        started = subprocess.run(
            [
                *as_user,
                str(bin_dir / "pg_ctl"),
                "--pgdata",
                str(data),
                "--log",
                str(log),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
            ],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        if started.returncode == 0:
            return PostgresServer(host="127.0.0.1", port=port)
        failure = started.stdout + started.stderr
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"PostgreSQL did not start: {failure}\n{tail}".strip())


def _unprivileged_account() -> pwd.struct_passwd | None:
    """The account to run PostgreSQL as when this process is root; None when it is not."""
    if os.geteuid() != 0:
        return None
    for name in (SUPERUSER, "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and there is no 'postgres' or 'nobody' account")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(command: list[str], cwd: Path) -> None:
    done = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{done.stdout}{done.stderr}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        message = (
            f"PostgreSQL server binaries ({', '.join(PROGRAMS)}) not found in {BIN_GLOB} or on "
            f"PATH; install them: {INSTALL_HINT}"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    with running_server(bin_dir) as server:
        yield server
