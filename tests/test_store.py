"""Every task-store backend against a real database: a SQLite file and a PostgreSQL server.

The same behaviour is asked of both: idempotent writes, ordering, retries, snapshots, concurrency.
PostgreSQL tests each get a fresh database on one throwaway server (tests/pg.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import sys
import textwrap
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import PoolTimeout

from taskpool.domain.records import RegisterTasksRequest, TaskRecordUpdate
from taskpool.domain.tasks import (
    EventType,
    TaskError,
    TaskEvent,
    TaskProgress,
    TaskSpec,
    TaskStatus,
    TokenUsage,
)
from taskpool.domain.turns import ChatMessage, ToolCall, TurnRecord
from taskpool.infra.store import TaskStore, open_store
from taskpool.infra.store.common import SCHEMA_VERSION, StoreSchemaError, UnknownTaskError
from taskpool.infra.store.postgres import PostgresTaskStore
from taskpool.infra.store.sqlite import SqliteTaskStore

if TYPE_CHECKING:
    from tests.pg import PostgresServer

# The PostgreSQL server fixture; a plugin rather than an import so pytest rewrites its asserts.
pytest_plugins = ["tests.pg"]

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
BATCH = "batch-1"

Store = SqliteTaskStore | PostgresTaskStore
Action = Callable[[], Coroutine[Any, Any, None]]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def register(
    *ids: str, batch_id: str = BATCH, initial: dict[str, TaskStatus] | None = None
) -> RegisterTasksRequest:
    return RegisterTasksRequest(
        batch_id=batch_id,
        tasks=[
            TaskSpec(id=task_id, input={"text": f"input of {task_id}"}, metadata={"n": n})
            for n, task_id in enumerate(ids)
        ],
        initial_status=initial or {},
        at=T0,
    )


def event(key: str, type_: EventType, seconds: float, **data: str) -> TaskEvent:
    return TaskEvent(key=key, type=type_, at=at(seconds), data=dict(data))


# --- Backends -------------------------------------------------------------------------------------


class SqliteBackend:
    """A SQLite file in a directory that does not exist yet."""

    name = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "nested" / "dir" / "tasks.db"
        self.url = f"sqlite:///{self.path}"

    def open(self) -> SqliteTaskStore:
        return SqliteTaskStore(self.path)

    def is_opened_by(self, store: TaskStore) -> bool:
        return isinstance(store, SqliteTaskStore) and store.path == self.path

    def schema_versions(self) -> list[int]:
        with contextlib.closing(sqlite3.connect(self.path)) as raw:
            return [version for (version,) in raw.execute("SELECT version FROM schema_version")]

    def set_schema_version(self, version: int) -> None:
        with contextlib.closing(sqlite3.connect(self.path)) as raw, raw:
            raw.execute("UPDATE schema_version SET version = ?", (version,))

    @contextlib.asynccontextmanager
    async def before_statement(
        self, store: Store, fragment: str, action: Action
    ) -> AsyncIterator[list[str]]:
        """Run `action` once, just before `store` runs a statement containing `fragment`.

        White box: the trace hook is the only way to put a commit between two queries of one call
        deterministically. It runs in the store's thread, so the action goes back to the loop.
        """
        assert isinstance(store, SqliteTaskStore)
        loop = asyncio.get_running_loop()
        landed: list[str] = []

        def trace(statement: str) -> None:
            if fragment in statement and not landed:
                landed.append(statement)
                asyncio.run_coroutine_threadsafe(action(), loop).result(10)

        assert store._conn is not None
        store._conn.set_trace_callback(trace)
        try:
            yield landed
        finally:
            store._conn.set_trace_callback(None)


class PostgresBackend:
    """A fresh database on the session's PostgreSQL server."""

    name = "postgres"

    def __init__(self, server: PostgresServer) -> None:
        self.url = server.create_database(f"t_{uuid.uuid4().hex[:16]}")

    def open(self) -> PostgresTaskStore:
        return PostgresTaskStore(self.url)

    def is_opened_by(self, store: TaskStore) -> bool:
        return isinstance(store, PostgresTaskStore) and store.url == self.url

    def schema_versions(self) -> list[int]:
        with psycopg.connect(self.url) as raw:
            return [version for (version,) in raw.execute("SELECT version FROM schema_version")]

    def set_schema_version(self, version: int) -> None:
        with psycopg.connect(self.url) as raw:
            raw.execute("UPDATE schema_version SET version = %s", (version,))

    @contextlib.asynccontextmanager
    async def before_statement(
        self, store: Store, fragment: str, action: Action
    ) -> AsyncIterator[list[str]]:
        """Run `action` once, just before a statement containing `fragment` is sent.

        White box: psycopg has no statement hook, so cursor execution is wrapped for the duration.
        """
        assert isinstance(store, PostgresTaskStore)
        landed: list[str] = []
        execute = psycopg.AsyncCursor.execute

        async def execute_after_action(
            cursor: psycopg.AsyncCursor[Any], query: Any, *args: Any, **kwargs: Any
        ) -> Any:
            text = (
                query.as_string(cursor.connection) if isinstance(query, sql.Composable) else query
            )
            if fragment in str(text) and not landed:
                landed.append(str(text))
                await action()
            return await execute(cursor, query, *args, **kwargs)

        with mock.patch.object(psycopg.AsyncCursor, "execute", execute_after_action):
            yield landed


Backend = SqliteBackend | PostgresBackend


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return SqliteBackend(tmp_path)
    # Only PostgreSQL tests start the server (or skip when it is not installed).
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return PostgresBackend(server)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    async with backend.open() as opened:
        yield opened


def completion(task_id: str, attempt: int = 1) -> list[TaskRecordUpdate]:
    """One attempt's lifecycle: queued, started, completed with a result and usage."""
    return [
        TaskRecordUpdate(
            batch_id=BATCH,
            task_id=task_id,
            status=TaskStatus.QUEUED,
            attempt=attempt,
            events=[event(f"queued:{attempt}", EventType.QUEUED, 1)],
        ),
        TaskRecordUpdate(
            batch_id=BATCH,
            task_id=task_id,
            status=TaskStatus.IN_PROGRESS,
            started_at=at(2),
            progress=TaskProgress(percent=50, step="reading"),
            events=[event(f"started:{attempt}", EventType.STARTED, 2)],
        ),
        TaskRecordUpdate(
            batch_id=BATCH,
            task_id=task_id,
            status=TaskStatus.COMPLETED,
            result={"summary": "short", "score": 3},
            usage=TokenUsage(prompt_tokens=120, completion_tokens=30),
            llm_calls=2,
            completed_at=at(5),
            progress=TaskProgress(percent=100),
            events=[event(f"completed:{attempt}", EventType.COMPLETED, 5)],
        ),
    ]


# --- Behaviour every backend shares -------------------------------------------------------------


async def test_registration_creates_schema_and_records(store: Store, backend: Backend) -> None:
    await store.register_tasks(register("a", "b", initial={"b": TaskStatus.SCHEDULED}))

    if isinstance(backend, SqliteBackend):
        assert backend.path.is_file()
    assert backend.schema_versions() == [SCHEMA_VERSION]
    a = await store.get_task(BATCH, "a", with_events=True)
    b = await store.get_task(BATCH, "b", with_events=True)
    assert a is not None
    assert b is not None
    assert a.status is TaskStatus.PENDING
    assert a.input == {"text": "input of a"}
    assert a.metadata == {"n": 0}
    assert a.label == "a"
    assert a.created_at == T0
    assert a.updated_at == T0
    assert a.result is None
    assert a.error is None
    assert [e.key for e in a.events] == ["created"]
    assert b.status is TaskStatus.SCHEDULED
    assert [(e.key, e.type) for e in b.events] == [
        ("created", EventType.CREATED),
        ("initial:scheduled", EventType.SCHEDULED),
    ]
    assert await store.get_task(BATCH, "missing") is None
    assert await store.get_task("other-batch", "a") is None


async def test_registering_twice_changes_nothing(store: Store) -> None:
    request = register("a", "b", initial={"a": TaskStatus.QUEUED})
    await store.register_tasks(request)
    await store.apply(completion("b"))
    before = await store.list_tasks(BATCH, with_events=True)

    await store.register_tasks(request)
    # A second registration that disagrees must not touch the existing task either.
    await store.register_tasks(register("a", initial={"a": TaskStatus.BLOCKED}))

    after = await store.list_tasks(BATCH, with_events=True)
    assert after == before
    assert [e.key for e in after[0].events] == ["created", "initial:queued"]
    assert after[1].status is TaskStatus.COMPLETED


async def test_overlapping_registrations_at_once_register_each_task_once(store: Store) -> None:
    # Activity retries and add_tasks can register the same batch from several workers at once.
    requests = [
        register(*(f"t{n}" for n in range(start, start + 30))) for start in range(0, 80, 10)
    ]

    await asyncio.gather(*(store.register_tasks(request) for request in requests))

    records = await store.list_tasks(BATCH, with_events=True)
    assert sorted(r.task_id for r in records) == sorted(f"t{n}" for n in range(100))
    assert all([e.key for e in r.events] == ["created"] for r in records)
    # Each registration numbered the tasks it added in its own order. Which of two overlapping
    # registrations adds a shared id depends on which commits first, so check the ids only one
    # registration names.
    position = {r.task_id: index for index, r in enumerate(records)}
    named = Counter(spec.id for request in requests for spec in request.tasks)
    for request in requests:
        own = [spec.id for spec in request.tasks if named[spec.id] == 1]
        assert [position[task_id] for task_id in own] == sorted(position[t] for t in own)


async def test_applying_the_same_updates_twice_is_idempotent(store: Store) -> None:
    await store.register_tasks(register("a"))
    updates = completion("a")

    await store.apply(updates)
    once = await store.get_task(BATCH, "a", with_events=True)
    await store.apply(updates)
    twice = await store.get_task(BATCH, "a", with_events=True)

    assert once is not None
    assert twice == once
    assert [e.key for e in once.events] == ["created", "queued:1", "started:1", "completed:1"]
    assert once.status is TaskStatus.COMPLETED
    assert once.attempt == 1
    assert once.result == {"summary": "short", "score": 3}
    assert once.usage == TokenUsage(prompt_tokens=120, completion_tokens=30)
    assert once.llm_calls == 2
    assert once.progress == TaskProgress(percent=100)
    assert once.started_at == at(2)
    assert once.completed_at == at(5)
    assert once.duration_seconds == 3
    assert once.updated_at == at(5)


async def test_update_without_events_stamps_now_and_none_leaves_fields(store: Store) -> None:
    await store.register_tasks(register("a"))
    await store.apply(completion("a"))

    before = datetime.now(UTC)
    await store.apply([TaskRecordUpdate(batch_id=BATCH, task_id="a", llm_calls=7)])
    record = await store.get_task(BATCH, "a")

    assert record is not None
    assert record.llm_calls == 7
    assert before <= record.updated_at <= datetime.now(UTC)
    assert record.status is TaskStatus.COMPLETED
    assert record.result == {"summary": "short", "score": 3}
    assert record.usage.prompt_tokens == 120


async def test_retry_clears_the_previous_attempts_outcome(store: Store) -> None:
    await store.register_tasks(register("a"))
    await store.apply(completion("a")[:2])
    await store.apply(
        [
            TaskRecordUpdate(
                batch_id=BATCH,
                task_id="a",
                status=TaskStatus.FAILED,
                error=TaskError(code="llm_refused", message="no", retryable=True),
                result={"partial": True},
                completed_at=at(6),
                events=[event("failed:1", EventType.FAILED, 6)],
            )
        ]
    )
    failed = await store.get_task(BATCH, "a")
    assert failed is not None
    assert failed.error == TaskError(code="llm_refused", message="no", retryable=True)

    await store.apply(
        [
            TaskRecordUpdate(
                batch_id=BATCH,
                task_id="a",
                status=TaskStatus.QUEUED,
                attempt=2,
                retry_count=1,
                events=[event("retried:1", EventType.RETRIED, 7)],
            )
        ]
    )
    retried = await store.get_task(BATCH, "a", with_events=True)

    assert retried is not None
    assert retried.status is TaskStatus.QUEUED
    assert retried.result is None
    assert retried.error is None
    assert retried.completed_at is None
    assert retried.progress == TaskProgress()
    assert retried.attempt == 2
    assert retried.retry_count == 1
    # The history of the failed attempt stays.
    assert [e.key for e in retried.events][-2:] == ["failed:1", "retried:1"]
    assert retried.started_at == at(2)


async def test_a_result_sent_back_from_review_stays_for_the_next_attempt(store: Store) -> None:
    await store.register_tasks(register("a"))
    await store.apply(
        [
            TaskRecordUpdate(
                batch_id=BATCH,
                task_id="a",
                status=TaskStatus.REVIEW,
                attempt=1,
                progress=TaskProgress(percent=100.0),
                result={"summary": "too long"},
                events=[event("1:t1:2", EventType.REVIEW, 5)],
            )
        ]
    )
    sent_back = TaskRecordUpdate(
        batch_id=BATCH,
        task_id="a",
        status=TaskStatus.QUEUED,
        keep_result=True,
        events=[event("batch:0:1:queued", EventType.QUEUED, 6)],
    )
    await store.apply([sent_back])

    queued = await store.get_task(BATCH, "a")
    assert queued is not None
    assert queued.status is TaskStatus.QUEUED
    assert queued.result == {"summary": "too long"}
    assert queued.progress == TaskProgress()

    # Any other way back to the queue clears the result, as a retry does.
    await store.apply([sent_back.model_copy(update={"keep_result": False})])
    cleared = await store.get_task(BATCH, "a")
    assert cleared is not None
    assert cleared.result is None


async def test_a_retry_with_a_new_input_replaces_only_the_input(store: Store) -> None:
    await store.register_tasks(register("a", "b"))
    replaced = TaskRecordUpdate(
        batch_id=BATCH,
        task_id="a",
        input="a shorter text",
        events=[event("batch:1:input", EventType.COMMENT, 5)],
    )
    await store.apply([replaced])
    await store.apply([replaced])

    task = await store.get_task(BATCH, "a", with_events=True)
    other = await store.get_task(BATCH, "b")
    assert task is not None
    assert other is not None
    assert task.definition().input == "a shorter text"
    assert task.definition().metadata == {"n": 0}
    assert task.status is TaskStatus.PENDING
    # Written twice, recorded once.
    assert [(e.key, e.type) for e in task.events][-1:] == [("batch:1:input", EventType.COMMENT)]
    assert [e.key for e in task.events].count("batch:1:input") == 1
    assert other.definition().input == {"text": "input of b"}


async def test_has_batch_knows_batches_with_tasks(store: Store) -> None:
    await store.register_tasks(register("a"))

    assert await store.has_batch(BATCH)
    assert not await store.has_batch("another-batch")


async def test_order_follows_registration_and_event_insertion(store: Store) -> None:
    await store.register_tasks(register("zeta", "alpha", "mid"))
    await store.register_tasks(register("beta", "alpha"))
    # Events are told in the order they were written, even when their clocks disagree.
    await store.apply(
        [
            TaskRecordUpdate(
                batch_id=BATCH,
                task_id="mid",
                events=[
                    event("late", EventType.COMMENT, 30),
                    event("early", EventType.COMMENT, 10),
                ],
            ),
            TaskRecordUpdate(
                batch_id=BATCH, task_id="mid", events=[event("middle", EventType.COMMENT, 20)]
            ),
        ]
    )

    records = await store.list_tasks(BATCH, with_events=True)

    assert [r.task_id for r in records] == ["zeta", "alpha", "mid", "beta"]
    assert [e.key for e in records[2].events] == ["created", "late", "early", "middle"]
    assert records[2].updated_at == at(20)


async def test_status_filter_and_batches_are_separate(store: Store) -> None:
    await store.register_tasks(register("a", "b", "c", "d"))
    await store.register_tasks(register("a", "x", batch_id="batch-2"))
    await store.apply(completion("b") + completion("d"))
    await store.apply([TaskRecordUpdate(batch_id=BATCH, task_id="c", status=TaskStatus.CANCELLED)])

    completed = await store.list_tasks(BATCH, status=TaskStatus.COMPLETED, with_events=True)
    pending = await store.list_tasks(BATCH, status=TaskStatus.PENDING)
    failed = await store.list_tasks(BATCH, status=TaskStatus.FAILED, with_events=True)

    assert [r.task_id for r in completed] == ["b", "d"]
    assert all(len(r.events) == 4 for r in completed)
    assert [r.task_id for r in pending] == ["a"]
    assert failed == []
    assert [r.task_id for r in await store.list_tasks("batch-2")] == ["a", "x"]
    assert await store.list_tasks("no-such-batch") == []

    summaries = {s.batch_id: s for s in await store.batches()}
    assert summaries[BATCH].total == 4
    assert summaries[BATCH].counts == {"pending": 1, "completed": 2, "cancelled": 1}
    assert summaries["batch-2"].counts == {"pending": 2}
    assert summaries[BATCH].created_at == T0


def running_write(task_id: str, attempt: int, *keys: str) -> TaskRecordUpdate:
    """A write of a running attempt, as a model turn applies it: it may land late."""
    return TaskRecordUpdate(
        batch_id=BATCH,
        task_id=task_id,
        status=TaskStatus.IN_PROGRESS,
        attempt=attempt,
        events=[event(key, EventType.STARTED, 3) for key in keys],
        only_if_current=True,
    )


def turn(task_id: str, attempt: int, number: int, result: str | None = None) -> TurnRecord:
    reply = ChatMessage(
        role="assistant",
        tool_calls=[
            ToolCall(id=f"t{number}-0", name="complete_task", arguments={"result": result})
        ],
    )
    return TurnRecord(
        batch_id=BATCH,
        task_id=task_id,
        attempt=attempt,
        turn=number,
        messages=[ChatMessage(role="user", content=f"turn {number}"), reply],
        result=result,
        at=at(number),
    )


async def test_a_late_write_of_a_running_attempt_changes_nothing(store: Store) -> None:
    await store.register_tasks(register("a", "b", "c"))
    await store.apply(
        [
            TaskRecordUpdate(batch_id=BATCH, task_id="a", status=TaskStatus.CANCELLED, attempt=1),
            TaskRecordUpdate(batch_id=BATCH, task_id="b", status=TaskStatus.ASSIGNED, attempt=2),
            TaskRecordUpdate(batch_id=BATCH, task_id="c", status=TaskStatus.COMPLETED, attempt=1),
        ]
    )

    # A cancelled task, a later attempt, an attempt that has ended, a task the store lacks.
    await store.apply(
        [
            running_write("a", 1, "1:2"),
            running_write("b", 1, "1:2"),
            running_write("c", 1, "1:2"),
            running_write("ghost", 1, "1:2"),
        ]
    )

    a = await store.get_task(BATCH, "a", with_events=True)
    b = await store.get_task(BATCH, "b", with_events=True)
    c = await store.get_task(BATCH, "c", with_events=True)
    assert a is not None
    assert b is not None
    assert c is not None
    assert (a.status, [e.key for e in a.events]) == (TaskStatus.CANCELLED, ["created"])
    assert (b.status, b.attempt, [e.key for e in b.events]) == (
        TaskStatus.ASSIGNED,
        2,
        ["created"],
    )
    assert (c.status, [e.key for e in c.events]) == (TaskStatus.COMPLETED, ["created"])
    # The current attempt's write lands, in the same call as plain updates, and again unchanged.
    for _ in range(2):
        await store.apply(
            [
                running_write("b", 2, "2:1", "2:2"),
                TaskRecordUpdate(batch_id=BATCH, task_id="a", llm_calls=3),
            ]
        )
    b = await store.get_task(BATCH, "b", with_events=True)
    a = await store.get_task(BATCH, "a")
    assert b is not None
    assert a is not None
    assert (b.status, [e.key for e in b.events]) == (
        TaskStatus.IN_PROGRESS,
        ["created", "2:1", "2:2"],
    )
    assert a.llm_calls == 3


async def test_a_retried_turn_keeps_one_reply_and_a_result_comes_from_its_turn(
    store: Store,
) -> None:
    await store.register_tasks(register("a", "b"))
    await store.save_turn(turn("a", 1, 1))
    await store.save_turn(turn("a", 1, 2, "a first try"))
    # The retry of turn 2 replaces what its first try kept.
    await store.save_turn(turn("a", 1, 2, "the summary"))
    await store.save_turn(turn("a", 2, 1, "the next attempt's"))
    await store.save_turn(turn("b", 1, 1, "another task's"))

    stored = await store.conversation(BATCH, "a", 1, before_turn=3)
    assert stored is not None
    assert stored.record.task_id == "a"
    assert stored.record.input == {"text": "input of a"}
    assert [(t.attempt, t.turn, t.result) for t in stored.turns] == [
        (1, 1, None),
        (1, 2, "the summary"),
    ]
    assert stored.turns[1] == turn("a", 1, 2, "the summary")
    earlier = await store.conversation(BATCH, "a", 1, before_turn=2)
    assert earlier is not None
    assert [t.turn for t in earlier.turns] == [1]
    assert await store.conversation(BATCH, "ghost", 1, before_turn=2) is None

    completed = TaskRecordUpdate(
        batch_id=BATCH,
        task_id="a",
        status=TaskStatus.COMPLETED,
        attempt=1,
        result_turn=2,
        events=[event("1:5", EventType.COMPLETED, 5)],
    )
    await store.apply([completed])
    await store.apply([completed])
    record = await store.get_task(BATCH, "a", with_events=True)
    assert record is not None
    assert (record.status, record.result) == (TaskStatus.COMPLETED, "the summary")
    assert [e.key for e in record.events] == ["created", "1:5"]

    # A failed attempt has no result, whatever a turn of it kept.
    await store.apply(
        [
            TaskRecordUpdate(
                batch_id=BATCH,
                task_id="b",
                status=TaskStatus.FAILED,
                attempt=1,
                error=TaskError(code="lost", message="the reply was lost"),
                events=[event("1:2", EventType.FAILED, 4)],
            )
        ]
    )
    failed = await store.get_task(BATCH, "b")
    assert failed is not None
    assert (failed.status, failed.result) == (TaskStatus.FAILED, None)


async def test_unknown_task_rejects_the_whole_update_list(store: Store) -> None:
    await store.register_tasks(register("a"))
    updates = [
        TaskRecordUpdate(
            batch_id=BATCH,
            task_id="a",
            status=TaskStatus.QUEUED,
            events=[event("queued:1", EventType.QUEUED, 1)],
        ),
        TaskRecordUpdate(batch_id=BATCH, task_id="ghost", status=TaskStatus.QUEUED),
    ]

    with pytest.raises(UnknownTaskError) as raised:
        await store.apply(updates)

    assert "'ghost'" in str(raised.value)
    assert f"'{BATCH}'" in str(raised.value)
    assert (raised.value.batch_id, raised.value.task_id) == (BATCH, "ghost")
    untouched = await store.get_task(BATCH, "a", with_events=True)
    assert untouched is not None
    assert untouched.status is TaskStatus.PENDING
    assert [e.key for e in untouched.events] == ["created"]


async def test_values_survive_the_round_trip(store: Store) -> None:
    spec = TaskSpec(
        id="text-task",
        input='plain text, ünïcode and "quotes"',
        label="A label",
        kind="classify",
        priority="urgent",
    )
    await store.register_tasks(
        RegisterTasksRequest(batch_id=BATCH, tasks=[spec], initial_status={}, at=T0)
    )
    # A naive time is taken as UTC; a JSON number result must stay a number, not become text.
    naive = datetime(2025, 3, 1, 13, 0)
    await store.apply(
        [
            TaskRecordUpdate(
                batch_id=BATCH,
                task_id="text-task",
                result=42,
                started_at=naive,
                completed_at=datetime(2025, 3, 1, 15, 0, tzinfo=UTC) - timedelta(hours=1),
            )
        ]
    )

    record = await store.get_task(BATCH, "text-task")

    assert record is not None
    assert record.input == 'plain text, ünïcode and "quotes"'
    assert record.label == "A label"
    assert record.kind == "classify"
    assert record.priority == "urgent"
    assert record.result == 42
    assert record.started_at == naive.replace(tzinfo=UTC)
    assert record.completed_at == datetime(2025, 3, 1, 14, 0, tzinfo=UTC)


async def test_json_keeps_its_key_order_and_any_string(store: Store) -> None:
    await store.register_tasks(register("a"))
    # What a model returned, as it returned it: exports keep the keys in the model's order, and a
    # NUL escaped inside a JSON string is valid JSON that some databases' JSON types refuse.
    result = {"zeta": 1, "alpha": {"nested": [1.5, None, True]}, "nul": "a\x00b", "é": "ü"}
    await store.apply(
        [
            TaskRecordUpdate(
                batch_id=BATCH,
                task_id="a",
                result=result,
                events=[TaskEvent(key="note", type=EventType.COMMENT, at=at(1), data=result)],
            )
        ]
    )

    record = await store.get_task(BATCH, "a", with_events=True)

    assert record is not None
    assert record.result == result
    assert isinstance(record.result, dict)
    assert list(record.result) == ["zeta", "alpha", "nul", "é"]
    assert record.events[-1].data == result


async def test_a_second_store_accepts_the_existing_schema(store: Store, backend: Backend) -> None:
    await store.register_tasks(register("a"))

    async with backend.open() as again:
        assert [r.task_id for r in await again.list_tasks(BATCH)] == ["a"]

    assert backend.schema_versions() == [SCHEMA_VERSION]


async def test_a_newer_schema_is_refused(store: Store, backend: Backend) -> None:
    await store.register_tasks(register("a"))
    backend.set_schema_version(SCHEMA_VERSION + 1)

    async with backend.open() as newer:
        with pytest.raises(StoreSchemaError, match="upgrade taskpool"):
            await newer.list_tasks(BATCH)


async def test_stores_starting_together_create_the_schema_once(backend: Backend) -> None:
    # Workers of one deployment start at the same moment against an empty database.
    stores = [backend.open() for _ in range(6)]
    try:
        await asyncio.gather(
            *(
                opened.register_tasks(register(f"t{n}", batch_id=f"b{n}"))
                for n, opened in enumerate(stores)
            )
        )
        found = [await opened.list_tasks(f"b{n}") for n, opened in enumerate(stores)]
    finally:
        await asyncio.gather(*(opened.close() for opened in stores))

    assert [[r.task_id for r in records] for records in found] == [
        [f"t{n}"] for n in range(len(stores))
    ]
    assert backend.schema_versions() == [SCHEMA_VERSION]


async def test_open_store_understands_urls(backend: Backend) -> None:
    store = open_store(backend.url)
    try:
        await store.register_tasks(register("a"))
    finally:
        await store.close()
    assert backend.is_opened_by(store)
    with pytest.raises(RuntimeError, match="closed"):
        await store.list_tasks(BATCH)


async def test_ten_thousand_registrations_in_one_call(store: Store) -> None:
    ids = [f"task-{n:05d}" for n in range(10_000)]
    request = register(*ids, initial=dict.fromkeys(ids[::2], TaskStatus.QUEUED))

    await store.register_tasks(request)

    records = await store.list_tasks(BATCH, with_events=True)
    assert [r.task_id for r in records] == ids
    assert sum(len(r.events) for r in records) == 15_000
    # Registering them again finds every one and writes nothing, events included.
    await store.register_tasks(request)
    assert await store.list_tasks(BATCH, with_events=True) == records


async def test_concurrent_calls_on_one_store_all_land(store: Store) -> None:
    # A worker runs many lifecycle activities at once on one store, more than it has connections.
    ids = [f"t{n}" for n in range(40)]
    await store.register_tasks(register(*ids))

    await asyncio.gather(*(store.apply(completion(task_id)) for task_id in ids))

    records = await store.list_tasks(BATCH, status=TaskStatus.COMPLETED, with_events=True)
    assert [r.task_id for r in records] == ids
    assert all(len(r.events) == 4 for r in records)


async def test_a_reader_and_a_writer_share_the_database(backend: Backend) -> None:
    rounds = 100
    # Enough tasks that a read takes a while, so a torn read would have room to happen.
    ids = [f"t{n}" for n in range(30)]
    async with backend.open() as writer, backend.open() as reader:
        await writer.register_tasks(register(*ids))

        async def write() -> None:
            for n in range(1, rounds + 1):
                await writer.apply(
                    [
                        TaskRecordUpdate(
                            batch_id=BATCH,
                            task_id=task_id,
                            llm_calls=n,
                            events=[event(f"step:{n}", EventType.PROGRESS, n)],
                        )
                        for task_id in ids
                    ]
                )

        async def read() -> int:
            midway = 0
            last = 0
            while True:
                records = await reader.list_tasks(BATCH, with_events=True)
                calls = {r.llm_calls for r in records}
                # All tasks change in one transaction, and tasks and events are read from one
                # snapshot: a reader never sees half a write.
                assert len(calls) == 1, f"torn read: {calls}"
                (seen,) = calls
                assert seen >= last
                assert all(len(r.events) == seen + 1 for r in records)
                last = seen
                if seen == rounds:
                    return midway
                midway += seen > 0

        # A task group, so a failing writer cancels the reader instead of leaving it polling.
        async with asyncio.TaskGroup() as group:
            group.create_task(write())
            reading = group.create_task(read())

    # The reader overlapped the writer rather than only reading before or after it.
    assert reading.result() > 0


async def test_a_read_is_one_snapshot_even_when_a_write_lands_between_its_queries(
    backend: Backend,
) -> None:
    async with backend.open() as writer, backend.open() as reader:
        await writer.register_tasks(register("a"))
        await reader.list_tasks(BATCH)

        async def write() -> None:
            update = TaskRecordUpdate(
                batch_id=BATCH,
                task_id="a",
                llm_calls=1,
                events=[event("step:1", EventType.PROGRESS, 1)],
            )
            await writer.apply([update])

        # The writer commits after the task rows were read and before the events are: exactly
        # the gap a torn read would need.
        async with backend.before_statement(reader, "FROM events", write) as landed:
            during = await reader.list_tasks(BATCH, with_events=True)
        after = await reader.list_tasks(BATCH, with_events=True)

    assert landed
    assert (during[0].llm_calls, [e.key for e in during[0].events]) == (0, ["created"])
    assert (after[0].llm_calls, [e.key for e in after[0].events]) == (1, ["created", "step:1"])


async def test_another_process_writes_while_this_one_reads(backend: Backend) -> None:
    rounds = 300
    async with backend.open() as reader:
        await reader.register_tasks(register("a"))
        script = textwrap.dedent(
            f"""
            import asyncio
            from taskpool.domain.records import TaskRecordUpdate
            from taskpool.infra.store import open_store

            async def main():
                store = open_store({backend.url!r})
                try:
                    for n in range(1, {rounds} + 1):
                        await store.apply(
                            [TaskRecordUpdate(batch_id={BATCH!r}, task_id="a", llm_calls=n)]
                        )
                finally:
                    await store.close()

            asyncio.run(main())
            """
        )
        writer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            cwd=Path(__file__).parents[1],
            stderr=asyncio.subprocess.PIPE,
        )
        finishing = asyncio.create_task(writer.communicate())
        seen: set[int] = set()
        try:
            async with asyncio.timeout(60):
                while not finishing.done():
                    record = await reader.get_task(BATCH, "a")
                    assert record is not None
                    seen.add(record.llm_calls)
                _, stderr = await finishing
        finally:
            if writer.returncode is None:
                writer.kill()
                await finishing

        assert writer.returncode == 0, stderr.decode()
        final = await reader.get_task(BATCH, "a")
        assert final is not None
        assert final.llm_calls == rounds
        # The reader really overlapped the writer instead of only reading before or after it.
        assert len(seen - {0, rounds}) > 0


# --- What only one backend has --------------------------------------------------------------------


async def test_sqlite_file_is_wal(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path)
    async with backend.open() as store:
        await store.register_tasks(register("a"))

    with contextlib.closing(sqlite3.connect(backend.path)) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_open_store_takes_plain_paths_and_both_postgres_schemes(tmp_path: Path) -> None:
    plain = open_store(str(tmp_path / "plain.db"))
    short = open_store("postgres://u@db.example:5433/tasks")
    long = open_store("postgresql://u@db.example/tasks")
    try:
        assert isinstance(plain, SqliteTaskStore)
        assert plain.path == tmp_path / "plain.db"
        assert isinstance(short, PostgresTaskStore)
        assert isinstance(long, PostgresTaskStore)
    finally:
        # Nothing was opened yet: closing must not try to connect.
        for opened in (plain, short, long):
            await opened.close()


def test_postgres_display_url_hides_the_password() -> None:
    store = PostgresTaskStore("postgresql://taskpool:s3cret@db.internal:5433/tasks")

    assert store.display_url == "postgresql://db.internal:5433/tasks"
    assert "s3cret" not in store.display_url


async def test_postgres_store_that_cannot_connect_fails_fast_without_the_password() -> None:
    with socket.socket() as sock:
        # Bound but never listening: connections to it are refused.
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        async with PostgresTaskStore(f"postgresql://u:s3cret@127.0.0.1:{port}/tasks") as store:
            with pytest.raises(psycopg.OperationalError) as raised:
                await store.list_tasks(BATCH)

    # libpq's own reason from the first attempt, not the pool's timeout after retrying for long.
    assert not isinstance(raised.value, PoolTimeout)
    assert "refused" in str(raised.value)
    assert str(port) in str(raised.value)
    assert "s3cret" not in str(raised.value)


def test_a_postgres_url_without_psycopg_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from taskpool.infra.store import StoreBackendMissingError, display_url, open_store, store_errors

    # None in sys.modules makes the import fail as it does where psycopg is not installed.
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.delitem(sys.modules, "taskpool.infra.store.postgres", raising=False)
    with pytest.raises(StoreBackendMissingError, match=r"pip install 'taskpool\[postgres\]'"):
        open_store("postgresql://user:secret@db.example:5432/tasks")
    assert StoreBackendMissingError in store_errors()
    shown = display_url("postgresql://user:secret@db.example:5432/tasks")
    assert "secret" not in shown
    assert "db.example:5432/tasks" in shown
