"""`starter.py demo` on a machine with no Temporal server: it starts one (state under ./data/), a
worker and a model, runs the sample batch, shows results and the UI link, and leaves nothing behind
on exit or on Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from temporalio.client import WorkflowExecutionStatus

from taskpool.devtools.devserver import DevServer, DevServerOptions, free_port
from taskpool.domain.records import TaskRecord
from taskpool.infra.store import opened_store
from taskpool.infra.temporal_connection import connect
from tests.support import ROOT, eventually


def demo_env(address: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "TASKPOOL_"))}
    env.pop("OPENAI_API_KEY", None)
    env.pop("OPENAI_BASE_URL", None)
    env["TEMPORAL_ADDRESS"] = address
    return env


def processes_in(directory: Path) -> list[str]:
    """Processes whose working directory is `directory`: the demo and all it starts run there."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if Path(os.readlink(proc / "cwd")) == directory:
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


async def start_demo(directory: Path, *args: str) -> asyncio.subprocess.Process:
    """`starter.py demo` run in `directory` against a free port, its output merged on stdout."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "starter.py"),
        "demo",
        *args,
        cwd=directory,
        env=demo_env(f"127.0.0.1:{free_port()}"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


def demo_batch_id(out: str) -> str:
    """The batch id in the UI link the demo prints."""
    return out.split("/namespaces/default/workflows/")[1].split()[0]


async def stored_records(directory: Path, batch_id: str) -> list[TaskRecord]:
    """The batch's tasks in the store the demo keeps under ./data/."""
    async with opened_store(str(directory / "data" / "taskpool.db")) as store:
        return await store.list_tasks(batch_id)


async def test_demo_runs_the_sample_batch_and_cleans_up(tmp_path: Path) -> None:
    process = await start_demo(tmp_path, "--model", "scripted")
    out_bytes, _ = await asyncio.wait_for(process.communicate(), timeout=150)
    out = out_bytes.decode()
    assert process.returncode == 0, out
    assert "starting a dev server" in out
    assert "completed 12" in out
    assert "gettysburg" in out
    assert "scripted test model" in out
    assert "/namespaces/default/workflows/demo-" in out
    assert "Traceback" not in out
    assert processes_in(tmp_path) == []

    db = tmp_path / "data" / "temporal.db"
    assert db.is_file()
    batch_id = demo_batch_id(out)
    records = await stored_records(tmp_path, batch_id)
    assert len(records) == 12
    assert all(r.result for r in records)

    # The server's state survives the demo: a server on the same file still knows the batch.
    async with DevServer(DevServerOptions(db_file=db, ui=False)) as server:
        client = await connect(target_host=server.address)
        description = await client.get_workflow_handle(batch_id).describe()
        assert description.status is WorkflowExecutionStatus.COMPLETED


async def test_ctrl_c_stops_the_demo_and_everything_it_started(tmp_path: Path) -> None:
    tasks = tmp_path / "many.jsonl"
    tasks.write_text(
        "".join(json.dumps({"id": f"t{i}", "input": f"text {i}"}) + "\n" for i in range(300))
    )
    process = await start_demo(tmp_path, "--model", "scripted", "--tasks", str(tasks))
    assert process.stdout is not None
    seen: list[str] = []
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=90)).decode()
        assert line, "".join(seen)
        seen.append(line)
        if line.startswith("Batch demo-"):
            break
    assert any("temporal" in cmd and "start-dev" in cmd for cmd in processes_in(tmp_path))
    process.send_signal(signal.SIGINT)
    rest, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    output = "".join(seen) + rest.decode()
    assert process.returncode == 130, output
    assert "Traceback" not in output

    async def nothing_left() -> None:
        assert processes_in(tmp_path) == []

    await eventually(nothing_left, within=10)


async def test_demo_with_the_local_model_summarises_through_emulated_tools(
    tmp_path: Path,
) -> None:
    """The path the README's run command takes when no API key is set, on two short texts."""
    samples = (ROOT / "samples" / "classics.jsonl").read_text().splitlines()
    tasks = tmp_path / "two.jsonl"
    tasks.write_text("\n".join(samples[:2]) + "\n")
    process = await start_demo(tmp_path, "--tasks", str(tasks))
    out_bytes, _ = await asyncio.wait_for(process.communicate(), timeout=170)
    out = out_bytes.decode()
    assert process.returncode == 0, out
    assert "SmolLM2-135M-Instruct" in out
    assert "tiny local model" in out
    records = await stored_records(tmp_path, demo_batch_id(out))
    assert len(records) == 2
    # A tiny model may give up on a task, but it answers through the emulated tools: no task
    # ends on a provider error or a reply that could not be read.
    for record in records:
        assert record.status.is_terminal
        assert record.llm_calls >= 1
        if record.error is not None:
            assert record.error.code in {"agent_failed", "no_result", "turn_limit"}
    assert any(isinstance(r.result, str) and r.result for r in records)
    assert processes_in(tmp_path) == []
