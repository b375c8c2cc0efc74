"""`start --batch-id X` run again, as a retrying script or a cron does: the same batch is found
and followed, another one under the same id is refused with the first difference, and a start
that died between writing the definitions and starting the workflow is completed. starter.py runs
as a process against the session dev server, a worker.py process serves the queue."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from taskpool.client.batches import prepare_batch, register_definitions
from taskpool.client.fingerprint import identify, options_difference
from taskpool.client.starting import write_definitions
from taskpool.domain.batch import BatchOptions
from taskpool.domain.tasks import EventType, Priority, TaskSpec, TaskStatus
from taskpool.infra.settings import Settings
from taskpool.infra.store import TaskStore
from taskpool.testing.scripted import ScriptedModelServer
from tests.support import (
    ROOT,
    RUN_LIMIT_SECONDS,
    SpawnWorker,
    start_test_batch,
    starter,
    worker_environment,
    write_jsonl,
)

if TYPE_CHECKING:
    from tests.pg import PostgresServer

pytest_plugins = ["tests.pg"]


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite store, or with the parameter `postgres` a fresh PostgreSQL database."""
    if getattr(request, "param", "sqlite") == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        return server.create_database(f"idempotent_{uuid.uuid4().hex[:12]}")
    return str(tmp_path / "tasks.db")


@pytest.fixture
def env(settings: Settings, temporal_address: str) -> dict[str, str]:
    return worker_environment(settings, temporal_address)


def docs(n: int) -> list[dict[str, Any]]:
    return [{"id": f"doc-{i}", "input": f"Document {i} is about topic {i % 3}."} for i in range(n)]


async def created_events(store: TaskStore, batch_id: str) -> dict[str, int]:
    records = await store.list_tasks(batch_id, with_events=True)
    return {
        record.task_id: [event.type for event in record.events].count(EventType.CREATED)
        for record in records
    }


@pytest.fixture
async def first_line_then_rest(env: dict[str, str]) -> AsyncIterator[Any]:
    """starter.py with its first line of output as soon as it is written, and the rest (exit
    code, output, errors) when it ends: what a test needs to act while `--wait` follows."""
    processes: list[asyncio.subprocess.Process] = []

    async def run(*args: str) -> tuple[str, Any]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "starter.py",
            *args,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        processes.append(process)
        assert process.stdout is not None
        async with asyncio.timeout(RUN_LIMIT_SECONDS):
            first = (await process.stdout.readline()).decode()

        async def rest() -> tuple[int, str, str]:
            async with asyncio.timeout(RUN_LIMIT_SECONDS):
                out, err = await process.communicate()
            assert process.returncode is not None
            return process.returncode, first + out.decode(), err.decode()

        return first, rest

    yield run
    for process in processes:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_same_start_again_finds_the_batch_and_another_one_is_refused(
    env: dict[str, str],
    client: Client,
    scripted: ScriptedModelServer,
    spawn_worker: SpawnWorker,
    store: TaskStore,
    batch_id: str,
    tmp_path: Path,
    first_line_then_rest: Any,
) -> None:
    spawn_worker()
    scripted.hold_replies()
    source = write_jsonl(tmp_path / "tasks.jsonl", *docs(4))
    start = ("start", str(source), "--batch-id", batch_id, "--concurrency", "2")

    first = await starter(env, *start)

    assert first.code == 0, first.err
    assert f"started batch {batch_id}: 4 tasks" in first.out
    run_id = (await client.get_workflow_handle(batch_id).describe()).run_id
    record_before = await store.batch_record(batch_id)
    assert record_before is not None
    assert record_before.started_at is not None

    other_input = [*docs(4), {"id": "doc-4", "input": "One more."}]
    other_input[3] = {"id": "doc-3", "input": "Another text."}
    other_tasks = write_jsonl(tmp_path / "other.jsonl", *other_input)
    again, other, wider, other_kind = await asyncio.gather(
        starter(env, *start),
        starter(env, "start", str(other_tasks), "--batch-id", batch_id, "--concurrency", "2"),
        starter(env, "start", str(source), "--batch-id", batch_id, "--concurrency", "4"),
        starter(env, *start, "--kind", "classify"),
    )

    assert again.code == 0, again.err
    assert f"batch {batch_id} already exists (running), with the same 4 tasks" in again.out
    assert f"watch {batch_id}" in again.out
    assert other.code == 2, other.out + other.err
    assert other.err.strip() == (
        f"starter.py: batch {batch_id} exists with other tasks: 4 tasks there, 5 here; first "
        "difference: task doc-3 (input); choose another --batch-id"
    )
    assert wider.code == 2, wider.out + wider.err
    assert f"batch {batch_id} exists with other options: concurrency 2 there, 4 here" in wider.err
    assert other_kind.code == 2, other_kind.out + other_kind.err
    assert "other options: kind unset there, classify here" in other_kind.err
    # One workflow, and the store as the first start left it: no definition rewritten or added,
    # no event written twice.
    assert (await client.get_workflow_handle(batch_id).describe()).run_id == run_id
    assert await store.batch_record(batch_id) == record_before
    stored = await store.get_task(batch_id, "doc-3")
    assert stored is not None
    assert stored.input == "Document 3 is about topic 0."
    assert await store.get_task(batch_id, "doc-4") is None
    assert await created_events(store, batch_id) == {f"doc-{i}": 1 for i in range(4)}

    # Run once more with --wait, as a retrying script would: it follows the running batch.
    line, rest = await first_line_then_rest(*start, "--wait")
    assert f"batch {batch_id} already exists (running)" in line
    scripted.release_replies()
    code, out, err = await rest()
    assert code == 0, out + err
    assert f"batch {batch_id} completed: 4 tasks, completed 4" in out

    finished, finished_wait = await asyncio.gather(
        starter(env, *start), starter(env, *start, "--wait", "--json")
    )
    assert finished.code == 0, finished.err
    assert f"batch {batch_id} has already finished (completed), with the same 4 tasks" in (
        finished.out
    )
    assert f"results {batch_id}" in finished.out
    assert finished_wait.code == 0, finished_wait.err
    announced, result = finished_wait.json_lines()
    assert (announced["existing"], announced["workflow_status"]) == (True, "completed")
    assert (result["state"], result["total"], result["counts"]["completed"]) == ("completed", 4, 4)
    assert (await client.get_workflow_handle(batch_id).describe()).run_id == run_id
    assert await created_events(store, batch_id) == {f"doc-{i}": 1 for i in range(4)}


@pytest.mark.parametrize("store_url", ["sqlite", "postgres"], indirect=True)
async def test_a_start_that_died_before_the_workflow_is_completed_by_the_next(
    env: dict[str, str],
    client: Client,
    settings: Settings,
    spawn_worker: SpawnWorker,
    store: TaskStore,
    batch_id: str,
    tmp_path: Path,
) -> None:
    spawn_worker()
    specs = [TaskSpec.model_validate(record) for record in docs(3)]
    source = write_jsonl(tmp_path / "tasks.jsonl", *docs(3))
    # What a start that died after writing the definitions leaves: the batch's record and its
    # definitions in the store, and no workflow. Under a second id, other tasks were left so.
    left_over = f"{batch_id}-other"
    earlier = [TaskSpec(id="old-0", input="Old text."), TaskSpec(id="old-1", input="Older.")]
    for id_, tasks in ((batch_id, specs), (left_over, earlier)):
        prepared = prepare_batch(tasks, BatchOptions())
        await write_definitions(store, id_, prepared, task_queue=settings.task_queue)
        with pytest.raises(RPCError) as missing:
            await client.get_workflow_handle(id_).describe()
        assert missing.value.status is RPCStatusCode.NOT_FOUND

    completed, replaced = await asyncio.gather(
        starter(env, "start", str(source), "--batch-id", batch_id, "--wait"),
        starter(env, "start", str(source), "--batch-id", left_over, "--wait"),
    )

    assert completed.code == 0, completed.out + completed.err
    assert (
        f"started batch {batch_id}: 3 tasks on task queue {settings.task_queue!r} (an earlier "
        "start wrote its definitions and did not start it)"
    ) in completed.out
    assert f"batch {batch_id} completed: 3 tasks, completed 3" in completed.out
    records = await store.list_tasks(batch_id, with_events=True)
    assert [(r.task_id, r.status) for r in records] == [
        (f"doc-{i}", TaskStatus.COMPLETED) for i in range(3)
    ]
    assert await created_events(store, batch_id) == {f"doc-{i}": 1 for i in range(3)}
    assert replaced.code == 0, replaced.out + replaced.err
    assert (
        "replacing the definitions an earlier start wrote and never started (other tasks: 2 "
        "tasks there, 3 here; first difference: task doc-0 (not there))"
    ) in replaced.out
    assert [r.task_id for r in await store.list_tasks(left_over)] == [f"doc-{i}" for i in range(3)]
    assert await created_events(store, left_over) == {f"doc-{i}": 1 for i in range(3)}


async def test_an_id_no_start_recorded_is_refused_and_left_as_it_is(
    env: dict[str, str],
    client: Client,
    settings: Settings,
    store: TaskStore,
    batch_id: str,
    tmp_path: Path,
) -> None:
    specs = [TaskSpec.model_validate(record) for record in docs(2)]
    source = write_jsonl(tmp_path / "tasks.jsonl", *docs(2))
    # A batch started by a program without a record; tasks in the store that no start recorded;
    # a batch that ran, whose workflow Temporal no longer keeps (retention passed).
    unrecorded, bare, expired = (f"{batch_id}-{name}" for name in ("api", "bare", "gone"))
    handle = await start_test_batch(client, settings, unrecorded, specs)
    prepared = prepare_batch(specs)
    await register_definitions(store, bare, specs, prepared.first_status, prepared.at)
    await write_definitions(store, expired, prepared, task_queue=settings.task_queue)
    await store.mark_batch_started(expired, prepared.at)
    before = {id_: await store.list_tasks(id_) for id_ in (unrecorded, bare, expired)}

    runs = await asyncio.gather(
        *(starter(env, "start", str(source), "--batch-id", id_) for id_ in before)
    )

    expected = [
        f"batch {unrecorded} exists and the task store has no record of what it was started with",
        f"batch {bare} has tasks in the task store that no start recorded, and no workflow",
        f"batch {expired} was started at {prepared.at:%Y-%m-%d %H:%M:%S} UTC and Temporal no "
        "longer keeps it",
    ]
    for run, message in zip(runs, expected, strict=True):
        assert run.code == 2, run.out + run.err
        assert message in run.err
    assert {id_: await store.list_tasks(id_) for id_ in before} == before
    for id_ in (bare, expired):
        with pytest.raises(RPCError):
            await client.get_workflow_handle(id_).describe()
    await handle.terminate(reason="test done")


def test_the_fingerprint_covers_every_field_and_not_the_key_order() -> None:
    task = TaskSpec(id="a", input={"x": 1, "y": [1, 2]}, metadata={"team": "s", "n": 2})
    reordered = TaskSpec(id="a", input={"y": [1, 2], "x": 1}, metadata={"n": 2, "team": "s"})
    options = BatchOptions()

    def fingerprint(*tasks: TaskSpec, opts: BatchOptions = options) -> str:
        return identify(tasks, opts, task_queue="q").fingerprint

    assert fingerprint(task) == fingerprint(reordered)
    changes: list[dict[str, Any]] = [
        {"input": {"x": 2, "y": [1, 2]}},
        {"label": "A"},
        {"kind": "classify"},
        {"priority": Priority.HIGH},
        {"depends_on": ["b"]},
        {"metadata": {}},
    ]
    assert len({fingerprint(task.model_copy(update=change)) for change in changes}) == 6
    assert fingerprint(task) not in {fingerprint(task.model_copy(update=c)) for c in changes}
    assert fingerprint(task, task.model_copy(update={"id": "b"})) != fingerprint(
        task.model_copy(update={"id": "b"}), task
    )
    assert fingerprint(task) != fingerprint(task, opts=BatchOptions(concurrency=3))
    assert identify([task], options, task_queue="q").fingerprint != (
        identify([task], options, task_queue="r").fingerprint
    )
    assert options_difference({"concurrency": 8, "review": False}, {"concurrency": 4}) == (
        "concurrency 8 there, 4 here; review off there, unset here"
    )
