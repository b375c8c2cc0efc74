"""starter.py as people and scripts use it: a real process against the session dev server, with
the test's in-process worker serving the queue and the scripted model answering."""

from __future__ import annotations

import asyncio
import io
import json
import re
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from rich.console import Console
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from taskpool.cli.app import run as run_command
from taskpool.cli.commands import COMMANDS
from taskpool.cli.commands.start import WRITE_PROGRESS_FROM, StartArgs, WriteProgress
from taskpool.cli.context import Context
from taskpool.cli.following import outcome_code
from taskpool.cli.parser import build_parser
from taskpool.cli.render import duration, live_frame
from taskpool.client.batches import batch_handle, batch_status
from taskpool.client.snapshot import RateMeter, RunningTask, Snapshot, pace
from taskpool.client.starting import default_batch_id, with_default_priority
from taskpool.domain.batch import BatchOptions, BatchResult, BatchState, BatchStatus, TaskView
from taskpool.domain.tasks import (
    Priority,
    TaskError,
    TaskProgress,
    TaskSpec,
    TaskStatus,
    TokenUsage,
)
from taskpool.infra.settings import Settings
from taskpool.infra.store import TaskStore, opened_store
from taskpool.testing.scripted import Reply, ScriptedModelServer, ToolCallSpec
from tests.support import (
    Run,
    eventually,
    script_slow_task,
    start_test_batch,
    starter,
    worker_environment,
    write_jsonl,
)

STATUS_KEYS = {"batch_id", "state", "total", "counts", "concurrency", "in_flight"}


@pytest.fixture
def env(settings: Settings, temporal_address: str) -> dict[str, str]:
    return worker_environment(settings, temporal_address)


def docs(n: int, prefix: str = "doc") -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}-{i}", "input": f"Document {i} is about topic {i % 3}."} for i in range(n)
    ]


async def assert_never_started(client: Client, batch_id: str) -> None:
    with pytest.raises(RPCError) as info:
        await client.get_workflow_handle(batch_id).describe()
    assert info.value.status is RPCStatusCode.NOT_FOUND


# --- a batch from start to results ----------------------------------------------------------------


async def test_start_wait_then_status_tasks_results_and_watch(
    env: dict[str, str],
    worker: Worker,
    store: TaskStore,
    batch_id: str,
    tmp_path: Path,
) -> None:
    records = docs(4)
    records[0] |= {"label": "First document", "metadata": {"team": "search"}}
    records[1]["priority"] = "low"
    source = write_jsonl(tmp_path / "tasks.jsonl", *records)

    run = await starter(
        env,
        "start",
        str(source),
        "--wait",
        "--batch-id",
        batch_id,
        "--concurrency",
        "2",
        "--priority",
        "high",
    )

    assert run.code == 0, run.err
    assert f"started batch {batch_id}: 4 tasks" in run.out
    # Off a terminal, progress is a plain line per change, then the summary.
    assert f"{batch_id} completed · 4/4 (100.0%) · completed 4" in run.out
    assert f"batch {batch_id} completed: 4 tasks, completed 4" in run.out

    out_file = tmp_path / "results.jsonl"
    status, exported, table, listed, watched = await asyncio.gather(
        starter(env, "status", batch_id, "--json"),
        starter(env, "results", batch_id, "--out", str(out_file)),
        starter(env, "results", batch_id),
        starter(env, "tasks", batch_id, "--json"),
        starter(env, "watch", batch_id, "--json"),
    )

    assert status.code == 0, status.err
    [answer] = status.json_lines()
    assert answer.keys() >= STATUS_KEYS
    assert answer["batch_id"] == batch_id
    assert answer["state"] == "completed"
    assert answer["total"] == 4
    assert answer["counts"]["completed"] == 4
    assert answer["concurrency"] == 2
    assert answer["in_flight"] == 0

    assert exported.code == 0, exported.err
    assert f"wrote 4 tasks of batch {batch_id}" in exported.out
    rows = [json.loads(line) for line in out_file.read_text(encoding="utf-8").splitlines()]
    stored = await store.list_tasks(batch_id)
    assert [row["id"] for row in rows] == [r.task_id for r in stored] == [r["id"] for r in records]
    for row, record in zip(rows, stored, strict=True):
        assert row["status"] == "completed"
        assert row["result"]
        assert row["result"] == record.result
        assert row["error"] is None
        assert row["attempt"] == record.attempt == 1
        assert row["tokens"]["prompt"] == record.usage.prompt_tokens > 0
        assert row["tokens"]["completion"] == record.usage.completion_tokens > 0
        assert row["llm_calls"] == record.llm_calls == 1
        assert datetime.fromisoformat(row["completed_at"]) == record.completed_at
        assert row["duration_seconds"] == record.duration_seconds
    assert rows[0]["label"] == "First document"
    assert rows[0]["metadata"] == {"team": "search"}

    assert table.code == 0, table.err
    assert all(r["id"] in table.out for r in records)
    assert "completed" in table.out

    assert listed.code == 0, listed.err
    views = {view["id"]: view for view in listed.json_lines()}
    assert set(views) == {r["id"] for r in records}
    # --priority fills in only what the file left out.
    assert views["doc-1"]["priority"] == "low"
    assert {views[i]["priority"] for i in ("doc-0", "doc-2", "doc-3")} == {"high"}
    # The batch's view, completed from the store's record.
    assert views["doc-0"]["label"] == "First document"
    assert {view["kind"] for view in views.values()} == {"summarize"}
    assert all(view["usage"]["prompt_tokens"] > 0 for view in views.values())
    assert all(view["completed_at"] for view in views.values())

    # Watching a finished batch shows its last status and exits with its outcome.
    assert watched.code == 0, watched.err
    assert watched.json_lines()[-1]["state"] == "completed"


async def test_a_failed_task_makes_wait_exit_1_and_is_reported(
    env: dict[str, str],
    worker: Worker,
    scripted: ScriptedModelServer,
    batch_id: str,
    tmp_path: Path,
) -> None:
    scripted.script("doc-x", Reply(tool_calls=[ToolCallSpec("fail_task", {"reason": "nope"})]))
    source = write_jsonl(tmp_path / "tasks.jsonl", *docs(2), {"id": "doc-x", "input": "Klingon"})

    run = await starter(env, "start", str(source), "--wait", "--batch-id", batch_id)

    assert run.code == 1, run.out + run.err
    assert "failed 1" in run.out
    assert "doc-x: agent_failed: nope" in run.out

    status, exported, retried, shown, shown_json, unknown = await asyncio.gather(
        starter(env, "status", batch_id),
        starter(env, "results", batch_id, "--json"),
        starter(env, "retry", batch_id, "--failed"),
        starter(env, "task", batch_id, "doc-x"),
        starter(env, "task", batch_id, "doc-x", "--json"),
        starter(env, "task", batch_id, "doc-y"),
    )
    assert status.code == 0, status.err
    assert f"batch {batch_id}: failed" in status.out
    assert "completed 2 · failed 1" in status.out
    assert "doc-x: agent_failed: nope" in status.out
    failed = [row for row in exported.json_lines() if row["status"] == "failed"]
    assert [(row["id"], row["error"]["message"], row["result"]) for row in failed] == [
        ("doc-x", "nope", None)
    ]
    # One task from the store: what it is, how it ended, and its history.
    assert shown.code == 0, shown.err
    assert shown.out.startswith("doc-x · failed · summarize · priority normal\n")
    assert "1 LLM call\n" in shown.out
    assert "error: agent_failed: nope" in shown.out
    assert "input: Klingon" in shown.out
    events = re.findall(r"^\d{4}-\d\d-\d\d [\d:.]+ +(\w+)", shown.out, re.MULTILINE)
    assert events == ["created", "queued", "assigned", "started", "failed"]
    [record] = shown_json.json_lines()
    assert (record["task_id"], record["status"], record["error"]["message"]) == (
        "doc-x",
        "failed",
        "nope",
    )
    assert [event["type"] for event in record["events"]] == events
    assert unknown.code == 2
    assert f"has no task 'doc-y' of batch {batch_id}" in unknown.err

    # A closed workflow takes no updates; the user hears that the batch is over, not an RPC code,
    # and how to run the failed tasks again.
    assert retried.code == 1
    assert f"batch {batch_id} has finished; a finished batch cannot retry" in retried.err
    export = f"results {batch_id} --status failed --as-tasks --out failed.jsonl"
    assert f"python starter.py {export}, then python starter.py start failed.jsonl" in retried.err

    # Which is a round trip: the failed task, as a task file, starts a new batch.
    failed_file = tmp_path / "failed.jsonl"
    exported_tasks, none_cancelled = await asyncio.gather(
        starter(
            env, "results", batch_id, "--status", "failed", "--as-tasks", "--out", str(failed_file)
        ),
        starter(env, "results", batch_id, "--status", "cancelled", "--json"),
    )
    assert exported_tasks.code == 0, exported_tasks.err
    assert f"wrote 1 task of batch {batch_id} to {failed_file}" in exported_tasks.out
    assert [json.loads(line) for line in failed_file.read_text().splitlines()] == [
        {"id": "doc-x", "input": "Klingon", "kind": "summarize", "priority": "normal"}
    ]
    assert (none_cancelled.code, none_cancelled.out) == (0, "")
    again = await starter(env, "start", str(failed_file), "--wait", "--batch-id", f"{batch_id}-2")
    assert again.code == 0, again.out + again.err
    assert "completed 1" in again.out


async def test_batches_lists_each_batch_once_with_its_state_and_progress(
    env: dict[str, str],
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    batch_id: str,
) -> None:
    script_slow_task(scripted, "slow", seconds=60)
    continued = await start_test_batch(
        client,
        settings,
        f"{batch_id}-continued",
        [TaskSpec(id=f"doc-{i}", input=f"Text {i}.") for i in range(6)],
        BatchOptions(concurrency=2, continue_as_new_after=2),
    )
    await continued.result()
    held = await start_test_batch(
        client, settings, f"{batch_id}-held", [TaskSpec(id="slow", input="Slow.")]
    )
    paused = await starter(env, "pause", f"{batch_id}-held")
    assert paused.code == 0, paused.err
    # Ended from outside, the batch never got to say so: the listing says how it closed.
    script_slow_task(scripted, "stuck", seconds=60)
    stopped = await start_test_batch(
        client, settings, f"{batch_id}-stopped", [TaskSpec(id="stuck", input="Stuck.")]
    )
    await stopped.terminate(reason="an operator stopped it")

    async def listed() -> tuple[dict[str, dict[str, Any]], Run]:
        everything, only_paused = await asyncio.gather(
            starter(env, "batches", "--json", "--limit", "1000"),
            starter(env, "batches", "--state", "paused"),
        )
        ours = [row for row in everything.json_lines() if row["batch_id"].startswith(batch_id)]
        runs = client.list_workflows(f"WorkflowId = '{batch_id}-continued'")
        assert len([run async for run in runs]) > 1, "the batch continued as new"
        # One row per batch, though the first has several runs.
        assert sorted(row["batch_id"] for row in ours) == [
            f"{batch_id}-continued",
            f"{batch_id}-held",
            f"{batch_id}-stopped",
        ]
        by_id = {row["batch_id"]: row for row in ours}
        assert (by_id[f"{batch_id}-held"]["state"], by_id[f"{batch_id}-held"]["closed_at"]) == (
            "paused",
            None,
        )
        return by_id, only_paused

    by_id, only_paused = await eventually(listed)
    finished = by_id[f"{batch_id}-continued"]
    assert (finished["state"], finished["progress"]) == ("completed", 100)
    assert finished["closed_at"] is not None
    assert by_id[f"{batch_id}-stopped"]["state"] == "terminated"
    assert f"{batch_id}-held" in only_paused.out
    assert f"{batch_id}-continued" not in only_paused.out
    await held.cancel()


# --- steering a running batch ---------------------------------------------------------------------


async def test_pause_concurrency_add_retry_resume_cancel(
    env: dict[str, str],
    client: Client,
    worker: Worker,
    scripted: ScriptedModelServer,
    batch_id: str,
    tmp_path: Path,
) -> None:
    # The first task's model call outlasts the test, so the batch is running whenever it is
    # steered, and with one slot the other tasks wait behind it until the concurrency grows.
    script_slow_task(scripted, "slow", seconds=60)
    source = write_jsonl(tmp_path / "tasks.jsonl", {"id": "slow", "input": "Slow."}, *docs(8))
    more = write_jsonl(tmp_path / "more.jsonl", {"id": "extra-1", "input": "One more."})
    clash = write_jsonl(tmp_path / "clash.jsonl", {"id": "doc-1", "input": "Again."})

    started = await starter(env, "start", str(source), "--batch-id", batch_id, "--concurrency", "1")
    assert started.code == 0, started.err
    assert f"python starter.py watch {batch_id}" in started.out

    paused = await starter(env, "pause", batch_id, "--reason", "lunch")
    assert paused.code == 0, paused.err

    async def is_paused() -> BatchStatus:
        status = await batch_status(client, batch_id)
        assert status.paused
        assert status.pause_reason == "lunch"
        return status

    await eventually(is_paused, within=10)

    resized, added, duplicate, refused = await asyncio.gather(
        starter(env, "concurrency", batch_id, "3"),
        starter(env, "add", batch_id, str(more)),
        starter(env, "add", batch_id, str(clash)),
        starter(env, "retry", batch_id, "--task", "doc-7"),
    )
    assert resized.code == 0, resized.err
    assert added.code == 0, added.err
    assert f"added 1 task to batch {batch_id}; it now has 10 tasks" in added.out
    # Checked against the batch before anything is sent, with file and line.
    assert duplicate.code == 2
    assert f"{clash}:1: id 'doc-1' is already in the batch" in duplicate.err
    # The batch's validator refuses; its reason reaches the user.
    assert refused.code == 2
    assert "refused the request: task 'doc-7' is queued; only failed tasks retry" in refused.err

    status = await batch_status(client, batch_id)
    assert status.concurrency == 3
    assert status.total == 10
    assert status.paused

    resumed = await starter(env, "resume", batch_id)
    assert resumed.code == 0, resumed.err

    async def is_running() -> None:
        assert not (await batch_status(client, batch_id)).paused

    await eventually(is_running, within=10)

    cancelled = await starter(env, "cancel", batch_id, "--reason", "enough")
    assert cancelled.code == 0, cancelled.err
    result = await batch_handle(client, batch_id).result()
    assert result.state is BatchState.CANCELLED
    status = await batch_status(client, batch_id)
    assert status.cancel_reason == "enough"

    # Following a batch that ended cancelled exits 1, like `start --wait` would have.
    watched = await starter(env, "watch", batch_id, "--json")
    assert watched.code == 1
    assert watched.json_lines()[-1]["state"] == "cancelled"


async def test_retry_runs_failed_tasks_again_some_with_new_inputs(
    env: dict[str, str],
    client: Client,
    worker: Worker,
    scripted: ScriptedModelServer,
    batch_id: str,
    tmp_path: Path,
) -> None:
    # "hold" keeps the batch running while its failed tasks are retried; the other slot runs
    # the rest in file order, and each "bad" task's first attempt fails.
    script_slow_task(scripted, "hold", seconds=60)
    bad = ["bad-1", "bad-2", "bad-3", "bad-4"]
    for task_id in bad:
        scripted.script(
            task_id, Reply(tool_calls=[ToolCallSpec("fail_task", {"reason": "garbled"})])
        )
    source = write_jsonl(
        tmp_path / "tasks.jsonl",
        {"id": "hold", "input": "Hold."},
        *({"id": task_id, "input": f"Garbled text of {task_id}."} for task_id in bad),
        {"id": "fine", "input": "Fine."},
    )
    started = await starter(env, "start", str(source), "--batch-id", batch_id, "--concurrency", "2")
    assert started.code == 0, started.err

    async def settled(failed: int, completed: int) -> None:
        counts = (await batch_status(client, batch_id)).counts
        assert (counts["failed"], counts["completed"]) == (failed, completed), counts

    await eventually(lambda: settled(failed=4, completed=1))

    (tmp_path / "bad-2.txt").write_text("Second text, legible at last.", encoding="utf-8")
    # As the batch's own task file with the input edited: the dependency is on a task of the
    # batch, not of this file, and the retry keeps the task's own (none).
    inputs = write_jsonl(
        tmp_path / "inputs.jsonl",
        {"id": "bad-3", "input": {"text": "Third text, as an object."}, "depends_on": ["hold"]},
    )
    strays = write_jsonl(tmp_path / "strays.jsonl", {"id": "fine", "input": "Again."})
    one, two, three, four, stray, unnamed, unreadable = await asyncio.gather(
        starter(env, "retry", batch_id, "--task", "bad-1", "--input", "First text, legible."),
        starter(
            env, "retry", batch_id, "--task", "bad-2", "--input-file", str(tmp_path / "bad-2.txt")
        ),
        starter(env, "retry", batch_id, "--inputs", str(inputs)),
        starter(env, "retry", batch_id, "--task", "bad-4"),
        starter(env, "retry", batch_id, "--inputs", str(strays)),
        starter(env, "retry", batch_id, "--failed", "--input", "For whom?"),
        starter(env, "retry", batch_id, "--task", "bad-1", "--input-file", str(tmp_path / "nope")),
    )
    for run in (one, two, three, four):
        assert run.code == 0, run.err
    assert f"retrying 1 task of batch {batch_id} (1 with a new input): bad-1" in one.out
    assert stray.code == 2
    assert "refused the request: task 'fine' is completed; only failed tasks retry" in stray.err
    assert unnamed.code == 2
    assert "name that one task with --task" in unnamed.err
    assert unreadable.code == 2
    assert f"cannot read {tmp_path / 'nope'}: No such file or directory" in unreadable.err

    await eventually(lambda: settled(failed=0, completed=5))

    new_inputs = {
        "bad-1": "First text, legible.",
        "bad-2": "Second text, legible at last.",
        "bad-3": "Third text, as an object.",
    }
    for task_id in bad:
        first, again = scripted.records_for(task_id)
        assert f"Garbled text of {task_id}." in json.dumps(first.body)
        sent_again = json.dumps(again.body)
        assert new_inputs.get(task_id, f"Garbled text of {task_id}.") in sent_again
        assert "Garbled" not in sent_again or task_id == "bad-4"
    async with opened_store(env["TASKPOOL_STORE"]) as store:
        records = {
            task_id: await store.get_task(batch_id, task_id, with_events=True) for task_id in bad
        }
    for task_id, record in records.items():
        assert record is not None
        assert (record.status, record.retry_count, record.attempt) == (TaskStatus.COMPLETED, 1, 2)
        replaced = [e for e in record.events if e.key == "batch:1:input"]
        if task_id in new_inputs:
            assert [e.message for e in replaced] == ["input replaced for retry 1"]
        else:
            assert replaced == []
    assert records["bad-3"] is not None
    assert records["bad-3"].definition().input == {"text": "Third text, as an object."}
    assert records["bad-4"] is not None
    assert records["bad-4"].definition().input == "Garbled text of bad-4."

    cancelled = await starter(env, "cancel", batch_id)
    assert cancelled.code == 0, cancelled.err


# --- mistakes -------------------------------------------------------------------------------------


async def test_bad_input_files_start_nothing(
    env: dict[str, str], client: Client, tmp_path: Path
) -> None:
    broken = write_jsonl(
        tmp_path / "broken.jsonl", {"id": "a", "input": "fine"}, '{"id": "b", "input": '
    )
    duplicate = write_jsonl(
        tmp_path / "dup.jsonl",
        {"id": "a", "input": "x"},
        {"id": "b", "input": "y"},
        {"id": "a", "input": "z"},
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    cases = [
        (broken, f"{broken}:2:"),
        (duplicate, f"{duplicate}:3: duplicate id 'a'"),
        (empty, f"{empty}: no tasks"),
    ]
    ids = [f"bad-{uuid.uuid4().hex[:8]}" for _ in cases]

    runs = await asyncio.gather(
        *(
            starter(env, "start", str(path), "--batch-id", id_)
            for (path, _), id_ in zip(cases, ids, strict=True)
        )
    )

    for run, (_, expected), id_ in zip(runs, cases, ids, strict=True):
        assert run.code == 2, run.out + run.err
        assert expected in run.err
        assert "nothing was started" in run.err
        assert run.out == ""
        await assert_never_started(client, id_)


async def test_large_inputs_go_to_the_store_not_into_the_batch(
    env: dict[str, str], client: Client, tmp_path: Path
) -> None:
    text = "word " * 400
    large = write_jsonl(
        tmp_path / "large.jsonl", *({"id": f"doc-{i}", "input": text} for i in range(600))
    )
    batch_id = f"large-{uuid.uuid4().hex[:8]}"

    run = await starter(env, "start", str(large), "--batch-id", batch_id)

    assert run.code == 0, run.out + run.err
    handle = client.get_workflow_handle(batch_id)
    first = await anext(aiter(handle.fetch_history_events()))
    (start_input,) = first.workflow_execution_started_event_attributes.input.payloads
    # 600 inputs of 2 kB would be 1.2 MB; the batch carries only the packed per-task state.
    assert start_input.ByteSize() < 20_000
    async with opened_store(env["TASKPOOL_STORE"]) as store:
        records = await store.list_tasks(batch_id)
    assert [r.task_id for r in records] == [f"doc-{i}" for i in range(600)]
    assert all(r.input == text for r in records)
    await handle.terminate(reason="test done")


async def test_a_batch_too_large_to_carry_is_refused_before_it_starts(
    env: dict[str, str], client: Client, tmp_path: Path
) -> None:
    # Random ids do not compress: 30,000 of 128 characters pack to more than a batch carries.
    large = write_jsonl(
        tmp_path / "large.jsonl",
        *({"id": secrets.token_hex(64), "input": "text"} for _ in range(30_000)),
    )
    batch_id = f"large-{uuid.uuid4().hex[:8]}"

    run = await starter(env, "start", str(large), "--batch-id", batch_id)

    assert run.code == 2, run.out + run.err
    assert f"{large}: the batch's 30000 tasks pack to" in run.err
    assert "split the file into batches of at most about" in run.err
    assert "Traceback" not in run.err
    await assert_never_started(client, batch_id)
    async with opened_store(env["TASKPOOL_STORE"]) as store:
        assert await store.list_tasks(batch_id) == []


async def test_unknown_batch_and_no_server_are_one_line_errors(env: dict[str, str]) -> None:
    unknown = f"no-such-batch-{uuid.uuid4().hex[:8]}"
    offline = env | {"TEMPORAL_ADDRESS": "127.0.0.1:1"}

    status, pause, no_server = await asyncio.gather(
        starter(env, "status", unknown),
        starter(env, "pause", unknown),
        starter(offline, "status", unknown),
    )

    for run in (status, pause):
        assert run.code == 2
        assert run.err == f"starter.py: no batch named {unknown}\n"
    assert no_server.code == 1
    assert no_server.err.count("\n") == 1
    assert "cannot reach Temporal at 127.0.0.1:1" in no_server.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["concurrency", "b", "0"], "0 is not between 1 and 1000"),
        (["retry", "b"], "one of the arguments --failed --task --inputs is required"),
        (["retry", "b", "--inputs", "new.jsonl", "--input", "x"], "name that one task with --task"),
        (["retry", "b", "--task", "a", "b", "--input", "x"], "name that one task with --task"),
        (["retry", "b", "--task", "a", "--input", "x", "--input-file", "y"], "not allowed with"),
        (["start", "tasks.jsonl", "--priority", "asap"], "'asap' is not one of low, normal"),
        (["start", "tasks.jsonl", "--model-calls", "remote"], "invalid choice: 'remote'"),
        (["watch", "b", "--interval", "0"], "give between 0.1 and 3600 seconds"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_command(argv) == 2
    assert message in capsys.readouterr().err


def test_every_command_reads_its_arguments_as_typed_values() -> None:
    parser = build_parser()
    commands = {command.name: command for command in COMMANDS}
    argv_by_command = {
        "start": ["start", "t.jsonl", "--priority", "HIGH", "--concurrency", "3", "--json"],
        "status": ["status", "b"],
        "priority": ["priority", "b", "--task", "x", "--priority", "CRITICAL"],
        "watch": ["watch", "b", "--interval", "2"],
        "tasks": ["tasks", "b", "--status", "failed"],
        "batches": ["batches", "--state", "paused"],
        "task": ["task", "b", "t", "--wait", "--timeout", "5"],
        "comment": ["comment", "b", "t", "Fine."],
        "pause": ["pause", "b"],
        "resume": ["resume", "b"],
        "cancel": ["cancel", "b", "--task", "x", "--task", "y"],
        "add": ["add", "b", "more.jsonl"],
        "retry": ["retry", "b", "--task", "x", "--input-file", "new.txt"],
        "approve": ["approve", "b", "--all"],
        "reject": ["reject", "b", "--task", "x", "--feedback", "Shorter."],
        "concurrency": ["concurrency", "b", "7"],
        "results": ["results", "b", "--out", "r.jsonl"],
        "demo": ["demo", "--model", "scripted"],
    }
    assert set(argv_by_command) == set(commands)

    built = {
        name: commands[name].args.from_namespace(parser.parse_args(argv))
        for name, argv in argv_by_command.items()
    }

    start = built["start"]
    assert isinstance(start, StartArgs)
    assert (start.source, start.priority, start.concurrency, start.as_json) == (
        Path("t.jsonl"),
        Priority.HIGH,
        3,
        True,
    )
    assert start.interval == 1.0
    assert built["tasks"].model_dump()["status"] is TaskStatus.FAILED
    assert built["batches"].model_dump()["state"] is BatchState.PAUSED
    assert built["cancel"].model_dump()["task_ids"] == ["x", "y"]
    assert built["retry"].model_dump()["input_file"] == Path("new.txt")
    assert built["concurrency"].model_dump() == {"batch": "b", "concurrency": 7}


async def test_results_from_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    err = io.StringIO()
    ctx = Context(stdout=io.StringIO(), stderr=err)

    # In a thread: the command runs its own event loop, as it does in starter.py.
    code = await asyncio.to_thread(run_command, ["results", "b", "--store", str(missing)], ctx)

    assert code == 2
    assert (
        err.getvalue() == f"starter.py: no task store at {missing}: set TASKPOOL_STORE or --store\n"
    )
    assert not missing.exists()


# --- the parts without a server -------------------------------------------------------------------


def test_default_batch_id_is_the_file_stem_and_a_short_random_part(tmp_path: Path) -> None:
    first = default_batch_id(tmp_path / "my docs.jsonl")
    second = default_batch_id(tmp_path / "my docs.jsonl")
    assert first.startswith("my-docs-")
    assert len(first) == len("my-docs-") + 6
    assert first != second


def test_default_priority_keeps_priorities_the_file_set() -> None:
    given = TaskSpec.model_validate({"id": "a", "input": "x", "priority": "normal"})
    unset = TaskSpec.model_validate({"id": "b", "input": "y"})
    assert [s.priority for s in with_default_priority([given, unset], Priority.URGENT)] == [
        Priority.NORMAL,
        Priority.URGENT,
    ]


def test_exit_code_is_0_only_when_every_task_completed() -> None:
    def result(state: BatchState, **counts: int) -> BatchResult:
        return BatchResult(
            batch_id="b", state=state, total=sum(counts.values()), counts=counts, usage=TokenUsage()
        )

    assert outcome_code(result(BatchState.COMPLETED, completed=3)) == 0
    assert outcome_code(result(BatchState.FAILED, completed=2, failed=1)) == 1
    assert outcome_code(result(BatchState.COMPLETED, completed=2, cancelled=1)) == 1
    assert outcome_code(result(BatchState.CANCELLED, cancelled=3)) == 1


def test_pace_uses_recent_samples_and_gives_no_eta_while_paused() -> None:
    now = datetime.now(UTC)
    status = BatchStatus(
        batch_id="b",
        state=BatchState.RUNNING,
        total=100,
        counts={"completed": 40},
        concurrency=4,
        in_flight=4,
        progress_percent=40.0,
        paused=False,
        usage=TokenUsage(),
        llm_calls=40,
        # 40 tasks in 400 s on average ...
        started_at=now - timedelta(seconds=400),
        run_number=1,
    )
    meter = RateMeter()
    rate, eta = pace(status, meter, now)
    assert rate == pytest.approx(0.1)
    assert eta == pytest.approx(600)
    # ... but 20 of them in the last 10 s: the current pace wins.
    meter.add(0.0, 20)
    meter.add(10.0, 40)
    rate, eta = pace(status, meter, now)
    assert rate == pytest.approx(2.0)
    assert eta == pytest.approx(30)
    paused = status.model_copy(update={"state": BatchState.PAUSED})
    assert pace(paused, meter, now)[1] is None


def test_live_frame_shows_banner_progress_running_steps_and_failures() -> None:
    now = datetime.now(UTC)
    failure = TaskView(
        id="doc-x",
        label="doc-x",
        kind="summarize",
        priority=Priority.NORMAL,
        status=TaskStatus.FAILED,
        attempts=1,
        retry_count=0,
        error=TaskError(code="agent_failed", message="nope"),
        usage=TokenUsage(),
        llm_calls=1,
    )
    status = BatchStatus(
        batch_id="b",
        state=BatchState.PAUSED,
        total=10,
        counts={"completed": 4, "failed": 1, "assigned": 2, "queued": 3},
        concurrency=2,
        in_flight=2,
        progress_percent=50.0,
        paused=True,
        pause_reason="lunch",
        usage=TokenUsage(prompt_tokens=900, completion_tokens=100),
        llm_calls=7,
        run_number=1,
        recent_errors=[failure],
    )
    running = RunningTask(
        "doc-5", "doc-5", now - timedelta(seconds=3), TaskProgress(percent=50, step="reading")
    )
    console = Console(width=100, record=True, file=io.StringIO())

    console.print(live_frame(Snapshot("b", status, now, (running,), 0.5, None)))

    text = console.export_text()
    assert "PAUSED lunch" in text
    assert "5/10" in text
    assert "0.50 tasks/s" in text
    assert "queued 3 · assigned 2 · completed 4 · failed 1" in text
    assert "2 running of at most 2 · 1,000 tokens" in text
    assert re.search(r"doc-5\s+reading\s+50\s+3\.0s", text)
    assert "doc-x  agent_failed: nope" in text


def test_durations_read_naturally() -> None:
    assert [duration(s) for s in (None, 0.42, 42, 185, 7620)] == [
        "",
        "0.4s",
        "42s",
        "3m05s",
        "2h07m",
    ]


async def test_a_task_store_that_cannot_be_written_is_a_one_line_error_without_secrets(
    env: dict[str, str], client: Client, tmp_path: Path
) -> None:
    tasks = write_jsonl(tmp_path / "tasks.jsonl", {"id": "doc-1", "input": "text"})
    batch_id = f"nostore-{uuid.uuid4().hex[:8]}"
    unreachable = env | {"TASKPOOL_STORE": "postgresql://taskpool:s3cret@127.0.0.1:1/taskpool"}
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")

    postgres, sqlite = await asyncio.gather(
        starter(unreachable, "start", str(tasks), "--batch-id", batch_id),
        starter(env, "start", str(tasks), "--batch-id", batch_id, "--store", f"{not_a_dir}/x.db"),
    )

    assert postgres.code == 1
    assert postgres.err.startswith(
        "starter.py: cannot write to the task store at postgresql://127.0.0.1:1/taskpool: "
    )
    assert "s3cret" not in postgres.err
    assert sqlite.code == 1
    assert sqlite.err.startswith(f"starter.py: cannot write to the task store at {not_a_dir}/x.db")
    for run in (postgres, sqlite):
        assert "Traceback" not in run.err
        assert run.out == ""
    await assert_never_started(client, batch_id)


def test_writing_a_large_batch_reports_progress_on_stderr() -> None:
    out, err = io.StringIO(), io.StringIO()
    progress = WriteProgress(Context(stdout=out, stderr=err), 200_000)
    for written in range(1_000, 200_001, 1_000):
        progress(written)

    lines = err.getvalue().splitlines()
    assert lines[0] == "writing task definitions to the store: 20,000/200,000"
    assert lines[-1] == "writing task definitions to the store: 200,000/200,000"
    assert len(lines) == 10
    assert out.getvalue() == ""

    small = io.StringIO()
    quiet = WriteProgress(Context(stdout=io.StringIO(), stderr=small), WRITE_PROGRESS_FROM - 1)
    quiet(WRITE_PROGRESS_FROM - 1)
    assert small.getvalue() == ""


async def test_starting_a_large_batch_says_how_far_it_is(
    env: dict[str, str], client: Client, tmp_path: Path
) -> None:
    count = WRITE_PROGRESS_FROM
    source = write_jsonl(
        tmp_path / "many.jsonl", *({"id": f"t{i:05d}", "input": "x"} for i in range(count))
    )
    batch_id = f"many-{uuid.uuid4().hex[:8]}"

    run = await starter(env, "start", str(source), "--batch-id", batch_id, "--json")

    assert run.code == 0, run.err
    # Progress goes to stderr, so that stdout is still the one line a script reads.
    assert json.loads(run.out) == {
        "batch_id": batch_id,
        "total": count,
        "task_queue": ANY,
        "existing": False,
        "workflow_status": "running",
    }
    notes = run.err.splitlines()
    assert notes[0] == f"checked {count:,} tasks in {source}; packing the batch's state"
    assert notes[1:] == [
        f"writing task definitions to the store: {written:,}/{count:,}"
        for written in range(count // 10, count + 1, count // 10)
    ]
    await client.get_workflow_handle(batch_id).terminate(reason="test done")


def test_a_large_file_is_announced_before_it_is_read(tmp_path: Path) -> None:
    text = "y" * 10_000
    rows = [{"id": f"t{i}", "input": text} for i in range(1_000)]
    source = write_jsonl(tmp_path / "big.jsonl", *rows, {"id": "t0", "input": "again"})
    err = io.StringIO()

    code = run_command(["start", str(source)], Context(stdout=io.StringIO(), stderr=err))

    assert code == 2
    first, *rest = err.getvalue().splitlines()
    assert first == f"reading and checking {source} (10 MB)"
    assert any("duplicate id 't0'" in line for line in rest), rest


async def test_task_waits_for_an_outcome_and_takes_comments(
    env: dict[str, str],
    worker: Worker,
    scripted: ScriptedModelServer,
    batch_id: str,
    tmp_path: Path,
) -> None:
    script_slow_task(scripted, "slow", seconds=3)
    scripted.script("bad", Reply(tool_calls=[ToolCallSpec("fail_task", {"reason": "garbled"})]))
    source = write_jsonl(
        tmp_path / "tasks.jsonl", {"id": "slow", "input": "Slow."}, {"id": "bad", "input": "Bad."}
    )
    started = await starter(env, "start", str(source), "--batch-id", batch_id)
    assert started.code == 0, started.err

    gave_up = await starter(env, "task", batch_id, "slow", "--wait", "--timeout", "0.5")
    assert gave_up.code == 1
    assert f"task slow of batch {batch_id} is still " in gave_up.err
    assert "after 0.5 s" in gave_up.err
    waited, failed = await asyncio.gather(
        starter(env, "task", batch_id, "slow", "--wait", "--json", "--interval", "0.2"),
        starter(env, "task", batch_id, "bad", "--wait", "--json"),
    )
    assert waited.code == 0, waited.err
    assert waited.json_lines()[0]["status"] == "completed"
    assert waited.json_lines()[0]["result"] == "late"
    assert failed.code == 1
    assert failed.json_lines()[0]["status"] == "failed"

    commented = await starter(env, "comment", batch_id, "slow", "Checked by hand.")
    assert commented.code == 0, commented.err
    assert f"comment added to task slow of batch {batch_id}" in commented.out
    shown = await starter(env, "task", batch_id, "slow", "--json")
    last = shown.json_lines()[0]["events"][-1]
    assert (last["type"], last["message"]) == ("comment", "Checked by hand.")

    unknown, empty, stray_timeout = await asyncio.gather(
        starter(env, "comment", batch_id, "nope", "Hello."),
        starter(env, "comment", batch_id, "slow", "  "),
        starter(env, "task", batch_id, "slow", "--timeout", "1"),
    )
    assert unknown.code == 2
    assert f"has no task 'nope' of batch {batch_id}" in unknown.err
    assert empty.code == 2
    assert "the comment is empty" in empty.err
    assert stray_timeout.code == 2
    assert "--timeout goes with --wait" in stray_timeout.err
