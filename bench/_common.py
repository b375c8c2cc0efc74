"""What every bench script shares: a private dev server, CPU accounting, and the results log.

Bench scripts run as files (`python bench/x.py`): they import `taskpool` from the installed
package (`make setup` installs it, editable) and each other by module name, since Python puts the
script's folder first on the import path.
"""

from __future__ import annotations

import compileall
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from taskpool.devtools.devserver import (
    DURABLE_SQLITE_PRAGMAS,
    THROUGHPUT_DYNAMIC_CONFIG,
    DevServer,
    DevServerOptions,
    find_temporal_cli,
    free_port,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS_MD = ROOT / "bench" / "RESULTS.md"
MB = 1024 * 1024
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def compile_workflow_modules() -> None:
    """Bring the workflow modules' bytecode up to date, as `make setup` does.

    The sandbox imports a workflow's module afresh for every run; with a stale .pyc and
    PYTHONDONTWRITEBYTECODE set, each task would compile the source again (~15 % of the worker's
    CPU), and the bench would measure an edited checkout instead of an installed one.
    """
    for folder in ("workflows", "bench"):
        compileall.compile_dir(ROOT / folder, quiet=1)


__all__ = [
    "MB",
    "RESULTS_MD",
    "ROOT",
    "SERVER_CONFIGS",
    "CpuMeter",
    "ServerConfig",
    "Usage",
    "append_result",
    "bench_server",
    "command_line",
    "compile_workflow_modules",
    "db_bytes",
    "free_port",
    "machine_busy_seconds",
    "machine_summary",
    "parse_pairs",
    "process_cpu_seconds",
    "progress",
    "self_cpu_seconds",
    "server_config",
]


def progress(message: str) -> None:
    """A note on how a run is getting on: stderr, so that stdout holds only the results."""
    print(message, file=sys.stderr, flush=True)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, all threads, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces and parentheses; fields restart after the
    # last ')'. utime and stime are fields 14 and 15 of the whole line.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU time all processes on this machine have used (every core), from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


def self_cpu_seconds() -> float:
    """CPU time of this process, including the SDK core's native threads."""
    return time.process_time()


@dataclass(frozen=True)
class Usage:
    wall_s: float
    server_cpu_s: float
    worker_cpu_s: float
    other_cpu_s: float
    """CPU used meanwhile by everything else on the machine: a busy neighbour skews the result."""

    def per_task(self, tasks: int) -> dict[str, float]:
        return {
            "tasks_per_s": tasks / self.wall_s,
            "server_cpu_s_per_task": self.server_cpu_s / tasks,
            "worker_cpu_s_per_task": self.worker_cpu_s / tasks,
            "server_cpu_util": self.server_cpu_s / self.wall_s,
            "worker_cpu_util": self.worker_cpu_s / self.wall_s,
            "other_cpu_util": self.other_cpu_s / self.wall_s,
        }


class CpuMeter:
    """Wall time, the server's CPU and this process's CPU between `start()` and `stop()`."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self._wall = self._server = self._self = self._machine = 0.0

    def start(self) -> None:
        self._server = process_cpu_seconds(self.server_pid)
        self._self = self_cpu_seconds()
        self._machine = machine_busy_seconds()
        self._wall = time.perf_counter()

    def stop(self) -> Usage:
        wall = time.perf_counter() - self._wall
        server = process_cpu_seconds(self.server_pid) - self._server
        worker = self_cpu_seconds() - self._self
        machine = machine_busy_seconds() - self._machine
        return Usage(
            wall_s=wall,
            server_cpu_s=server,
            worker_cpu_s=worker,
            other_cpu_s=max(0.0, machine - server - worker),
        )


def parse_pairs(items: Iterable[str], what: str) -> dict[str, str]:
    """`["k=v", ...]` from the command line into a dict, with an error that names the bad item."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"{what} {item!r} is not KEY=VALUE")
        pairs[key.strip()] = value.strip()
    return pairs


@dataclass(frozen=True)
class ServerConfig:
    """A named dev-server configuration: SQLite pragmas and dynamic config values."""

    name: str
    sqlite_pragmas: Mapping[str, str]
    dynamic_config: Mapping[str, str]

    def describe(self) -> str:
        settings = [f"{k}={v}" for k, v in {**self.sqlite_pragmas, **self.dynamic_config}.items()]
        return f"{self.name} ({' '.join(settings) or 'the CLI defaults'})"


SERVER_CONFIGS: Mapping[str, ServerConfig] = {
    # What `temporal server start-dev` does unless told otherwise.
    "untuned": ServerConfig("untuned", {}, {}),
    # What the embedded server of `taskpool demo` runs with (taskpool/demo.py).
    "durable": ServerConfig("durable", DURABLE_SQLITE_PRAGMAS, THROUGHPUT_DYNAMIC_CONFIG),
}


def server_config(
    name: str,
    *,
    sqlite_pragmas: Mapping[str, str] | None = None,
    dynamic_config: Mapping[str, str] | None = None,
) -> ServerConfig:
    """The named configuration, with values given on the command line taking precedence."""
    base = SERVER_CONFIGS[name]
    return ServerConfig(
        name=base.name,
        sqlite_pragmas={**base.sqlite_pragmas, **(sqlite_pragmas or {})},
        dynamic_config={**base.dynamic_config, **(dynamic_config or {})},
    )


@asynccontextmanager
async def bench_server(
    *,
    config: ServerConfig | None = None,
    sqlite_pragmas: Mapping[str, str] | None = None,
    dynamic_config: Mapping[str, str] | None = None,
    search_attributes: Mapping[str, str] | None = None,
    in_memory: bool = False,
) -> AsyncIterator[DevServer]:
    """A headless dev server on private ports with a fresh SQLite file in a temporary directory.

    `config` is the starting point (none: the CLI's defaults); `sqlite_pragmas` and
    `dynamic_config` add to it or override it. `in_memory` keeps the database in memory instead:
    the upper bound no setting can beat.
    """
    base = config or SERVER_CONFIGS["untuned"]
    with tempfile.TemporaryDirectory(prefix="taskpool-bench-") as tmp:
        options = DevServerOptions(
            db_file=None if in_memory else Path(tmp) / "temporal.db",
            ui=False,
            sqlite_pragmas={**base.sqlite_pragmas, **(sqlite_pragmas or {})},
            dynamic_config={**base.dynamic_config, **(dynamic_config or {})},
            search_attributes=dict(search_attributes or {}),
            log_file=Path(tmp) / "server.log",
        )
        async with DevServer(options) as server:
            yield server


def db_bytes(server: DevServer) -> int:
    """Size of the server's SQLite file plus its WAL, if any."""
    db = server.options.db_file
    if db is None:
        return 0
    return sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())


def command_line(argv: Sequence[str] | None = None) -> str:
    """This run's command, as someone in the project root would type it again."""
    python = Path(sys.executable)
    with_root = python.absolute()
    shown = str(with_root.relative_to(ROOT)) if with_root.is_relative_to(ROOT) else str(python)
    return shlex.join([shown, *(sys.argv if argv is None else argv)])


def machine_summary() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    version = subprocess.run(
        [str(find_temporal_cli()), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return (
        f"{os.cpu_count()} x {cpu}, Python {platform.python_version()}, {version or 'temporal ?'}"
    )


def append_result(title: str, body: str, *, command: str, results_file: Path = RESULTS_MD) -> None:
    """Append one dated section (title, machine, exact command, body) to the results log."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"\n## {title} ({stamp})\n\n"
        f"Machine: {machine_summary()}\n\n"
        f"```\n{command}\n```\n\n"
        f"{body.rstrip()}\n"
    )
    with results_file.open("a") as out:
        out.write(section)
