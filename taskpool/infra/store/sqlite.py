"""The task store in one SQLite file, shared by the worker (writes) and readers in other processes.

WAL lets readers proceed while the worker writes; the busy timeout makes writers from several
processes wait their turn instead of failing. Every write takes the write lock at BEGIN, so a
transaction never has to upgrade a read lock midway, which is the one case a busy timeout cannot
resolve. sqlite3 blocks, so each call runs in a thread; one connection per store, one call at a
time.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from taskpool.domain.records import RegisterTasksRequest, TaskRecord, TaskRecordUpdate
from taskpool.domain.tasks import TaskEvent, TaskStatus
from taskpool.domain.turns import TaskConversation, TurnRecord
from taskpool.infra.sqlite_files import open_shared, transaction
from taskpool.infra.store.batch_records import (
    BATCH_COLUMNS,
    BatchRecord,
    batch_from_row,
    batch_row,
)
from taskpool.infra.store.common import (
    EVENT_COLUMNS,
    SCHEMA_VERSION,
    TASK_COLUMNS,
    TURN_COLUMNS,
    BatchSummary,
    FromTurn,
    StoreSchemaError,
    UnknownTaskError,
    current_attempt_condition,
    current_attempt_params,
    encode_time,
    event_from_row,
    event_row,
    record_from_row,
    registration_rows,
    summarize_batches,
    turn_from_row,
    turn_row,
    unique_specs,
    update_assignments,
)

T = TypeVar("T")

# Well under SQLite's smallest default limit on bound parameters (999 before 3.32).
_ID_CHUNK = 500

# JSON and timestamps are TEXT: a column declared JSON would get NUMERIC affinity and turn a JSON
# number's text into an integer.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    batch_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    label TEXT NOT NULL,
    kind TEXT NOT NULL,
    priority TEXT NOT NULL,
    input TEXT NOT NULL,
    metadata TEXT NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    retry_count INTEGER NOT NULL DEFAULT 0,
    progress TEXT NOT NULL,
    result TEXT,
    error TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    llm_calls INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    started_at TEXT,
    completed_at TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (batch_id, task_id)
);
CREATE INDEX IF NOT EXISTS tasks_in_order ON tasks (batch_id, seq);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (batch_id, status, seq);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    key TEXT NOT NULL,
    type TEXT NOT NULL,
    at TEXT NOT NULL,
    message TEXT,
    data TEXT NOT NULL,
    UNIQUE (batch_id, task_id, key)
);
CREATE TABLE IF NOT EXISTS turns (
    batch_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    turn INTEGER NOT NULL,
    messages TEXT NOT NULL,
    result TEXT,
    at TEXT NOT NULL,
    PRIMARY KEY (batch_id, task_id, attempt, turn)
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    options TEXT NOT NULL,
    task_count INTEGER NOT NULL,
    task_groups TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT
);
"""

_INSERT_TASK = (
    f"INSERT INTO tasks ({', '.join(TASK_COLUMNS)}) "  # noqa: S608 - constant column names
    f"VALUES ({', '.join('?' for _ in TASK_COLUMNS)})"
)
_INSERT_EVENT = (
    f"INSERT OR IGNORE INTO events ({', '.join(EVENT_COLUMNS)}) "  # noqa: S608 - constant names
    f"VALUES ({', '.join('?' for _ in EVENT_COLUMNS)})"
)
_SAVE_TURN = (
    f"INSERT OR REPLACE INTO turns ({', '.join(TURN_COLUMNS)}) "  # noqa: S608 - constant names
    f"VALUES ({', '.join('?' for _ in TURN_COLUMNS)})"
)
_TURNS = f"SELECT {', '.join(TURN_COLUMNS)} FROM turns"  # noqa: S608 - constant column names
_RESULT_OF_TURN = (
    "(SELECT result FROM turns WHERE batch_id = ? AND task_id = ? AND attempt = ? AND turn = ?)"
)
_TASKS = f"SELECT {', '.join(TASK_COLUMNS)} FROM tasks"  # noqa: S608 - constant column names
_EVENTS = "SELECT e.task_id, e.key, e.type, e.at, e.message, e.data FROM events AS e"


class SqliteTaskStore:
    """A TaskStore in the SQLite file at `path`; the file, its directory and schema appear on first
    use."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- TaskStore ---------------------------------------------------------------------------

    async def register_tasks(self, request: RegisterTasksRequest) -> None:
        await self._run(lambda conn: _register(conn, request))

    async def apply(self, updates: Sequence[TaskRecordUpdate]) -> None:
        if updates:
            now = datetime.now(UTC)
            await self._run(lambda conn: _apply(conn, updates, now))

    async def save_turn(self, turn: TurnRecord) -> None:
        await self._run(lambda conn: _save_turn(conn, turn))

    async def conversation(
        self,
        batch_id: str,
        task_id: str,
        attempt: int,
        *,
        before_turn: int,
        after_applying: TaskRecordUpdate | None = None,
    ) -> TaskConversation | None:
        now = datetime.now(UTC)

        def apply_then_read(conn: sqlite3.Connection) -> TaskConversation | None:
            if after_applying is not None:
                _apply(conn, [after_applying], now)
            return _conversation(conn, batch_id, task_id, attempt, before_turn)

        # One trip to the database thread for a turn's start: the write and the read.
        return await self._run(apply_then_read)

    async def get_task(
        self, batch_id: str, task_id: str, *, with_events: bool = False
    ) -> TaskRecord | None:
        return await self._run(lambda conn: _get_task(conn, batch_id, task_id, with_events))

    async def list_tasks(
        self, batch_id: str, *, status: TaskStatus | None = None, with_events: bool = False
    ) -> list[TaskRecord]:
        return await self._run(lambda conn: _list_tasks(conn, batch_id, status, with_events))

    async def has_batch(self, batch_id: str) -> bool:
        return await self._run(lambda conn: _has_batch(conn, batch_id))

    async def count_by_status(self, batch_id: str) -> dict[str, int]:
        return await self._run(lambda conn: _count_by_status(conn, batch_id))

    async def claim_batch(
        self, record: BatchRecord, *, replacing: str | None = None
    ) -> BatchRecord:
        return await self._run(lambda conn: _claim_batch(conn, record, replacing))

    async def batch_record(self, batch_id: str) -> BatchRecord | None:
        return await self._run(lambda conn: _batch_record(conn, batch_id))

    async def mark_batch_started(self, batch_id: str, at: datetime) -> None:
        await self._run(lambda conn: _mark_batch_started(conn, batch_id, at))

    async def batches(self) -> list[BatchSummary]:
        """Every batch in the store with its task counts per status, oldest first."""
        return await self._run(_batches)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    # --- Connection --------------------------------------------------------------------------

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._locked, work)

    def _locked(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return work(self._connection())

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError(f"task store {self.path} is closed")
        if self._conn is None:
            self._conn = _open(self.path)
        return self._conn

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _open(path: Path) -> sqlite3.Connection:
    conn = open_shared(path, _create_schema)
    conn.row_factory = sqlite3.Row
    return conn


def _create_schema(conn: sqlite3.Connection) -> None:
    # executescript would COMMIT the surrounding transaction, so statements go one at a time.
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    version = row[0]
    if version is None:
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
    elif version > SCHEMA_VERSION:
        raise StoreSchemaError(
            f"task store schema version {version} is newer than this taskpool understands "
            f"({SCHEMA_VERSION}); upgrade taskpool"
        )


# --- Work done in the store's thread ---------------------------------------------------------


def _register(conn: sqlite3.Connection, request: RegisterTasksRequest) -> None:
    specs = unique_specs(request.tasks)
    with transaction(conn, "IMMEDIATE"):
        existing = _existing_ids(conn, request.batch_id, [spec.id for spec in specs])
        new = [spec for spec in specs if spec.id not in existing]
        if not new:
            return
        (last_seq,) = conn.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM tasks WHERE batch_id = ?", (request.batch_id,)
        ).fetchone()
        task_rows, event_rows = registration_rows(request, new, last_seq + 1)
        conn.executemany(_INSERT_TASK, task_rows)
        conn.executemany(_INSERT_EVENT, event_rows)


def _existing_ids(conn: sqlite3.Connection, batch_id: str, task_ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(task_ids), _ID_CHUNK):
        chunk = task_ids[start : start + _ID_CHUNK]
        marks = ", ".join("?" for _ in chunk)
        rows = conn.execute(
            f"SELECT task_id FROM tasks WHERE batch_id = ? AND task_id IN ({marks})",  # noqa: S608 - placeholders only
            (batch_id, *chunk),
        )
        found.update(row[0] for row in rows)
    return found


def _apply(conn: sqlite3.Connection, updates: Sequence[TaskRecordUpdate], now: datetime) -> None:
    with transaction(conn, "IMMEDIATE"):
        applied = [update for update in updates if _update_task(conn, update, now)]
        conn.executemany(
            _INSERT_EVENT,
            (
                event_row(update.batch_id, update.task_id, event)
                for update in applied
                for event in update.events
            ),
        )


def _update_task(conn: sqlite3.Connection, update: TaskRecordUpdate, now: datetime) -> bool:
    """Update one task's row; False for an `only_if_current` update that is no longer current."""
    assignments: list[str] = []
    params: list[Any] = []
    for name, value in update_assignments(update, now).items():
        if isinstance(value, FromTurn):
            assignments.append(f"{_column(name)} = {_RESULT_OF_TURN}")
            params.extend(value)
        else:
            assignments.append(f"{_column(name)} = ?")
            params.append(value)
    where = "batch_id = ? AND task_id = ?"
    params += [update.batch_id, update.task_id]
    if update.only_if_current:
        where = f"{where} AND {current_attempt_condition('?')}"
        params.extend(current_attempt_params(update))
    cursor = conn.execute(
        f"UPDATE tasks SET {', '.join(assignments)} WHERE {where}",  # noqa: S608 - names checked by _column
        params,
    )
    if cursor.rowcount == 0:
        if update.only_if_current:
            return False
        raise UnknownTaskError(update.batch_id, update.task_id)
    return True


def _save_turn(conn: sqlite3.Connection, turn: TurnRecord) -> None:
    with transaction(conn, "IMMEDIATE"):
        conn.execute(_SAVE_TURN, turn_row(turn))


def _conversation(
    conn: sqlite3.Connection, batch_id: str, task_id: str, attempt: int, before_turn: int
) -> TaskConversation | None:
    with transaction(conn):
        row = conn.execute(
            f"{_TASKS} WHERE batch_id = ? AND task_id = ?", (batch_id, task_id)
        ).fetchone()
        if row is None:
            return None
        turns = conn.execute(
            f"{_TURNS} WHERE batch_id = ? AND task_id = ? AND attempt = ? AND turn < ? "
            "ORDER BY turn",
            (batch_id, task_id, attempt, before_turn),
        ).fetchall()
    return TaskConversation(
        record=record_from_row(row), turns=[turn_from_row(turn) for turn in turns]
    )


def _column(name: str) -> str:
    if name not in TASK_COLUMNS:
        raise ValueError(f"not a task column: {name!r}")
    return name


def _get_task(
    conn: sqlite3.Connection, batch_id: str, task_id: str, with_events: bool
) -> TaskRecord | None:
    with transaction(conn):
        row = conn.execute(
            f"{_TASKS} WHERE batch_id = ? AND task_id = ?", (batch_id, task_id)
        ).fetchone()
        if row is None:
            return None
        events: list[TaskEvent] = []
        if with_events:
            events = [
                event_from_row(event)
                for event in conn.execute(
                    f"{_EVENTS} WHERE e.batch_id = ? AND e.task_id = ? ORDER BY e.seq",
                    (batch_id, task_id),
                )
            ]
    return record_from_row(row, events)


def _list_tasks(
    conn: sqlite3.Connection, batch_id: str, status: TaskStatus | None, with_events: bool
) -> list[TaskRecord]:
    task_filter = "WHERE batch_id = ?"
    params: tuple[Any, ...] = (batch_id,)
    event_query = f"{_EVENTS} WHERE e.batch_id = ? ORDER BY e.seq"
    if status is not None:
        task_filter += " AND status = ?"
        params = (batch_id, status.value)
        event_query = (
            f"{_EVENTS} JOIN tasks AS t ON t.batch_id = e.batch_id AND t.task_id = e.task_id "
            "WHERE e.batch_id = ? AND t.status = ? ORDER BY e.seq"
        )
    # One read transaction, so tasks and their events come from the same snapshot.
    with transaction(conn):
        rows = conn.execute(f"{_TASKS} {task_filter} ORDER BY seq", params).fetchall()
        events: dict[str, list[TaskEvent]] = {}
        if with_events and rows:
            for event in conn.execute(event_query, params):
                events.setdefault(event["task_id"], []).append(event_from_row(event))
    return [record_from_row(row, events.get(row["task_id"], ())) for row in rows]


def _has_batch(conn: sqlite3.Connection, batch_id: str) -> bool:
    row = conn.execute("SELECT 1 FROM tasks WHERE batch_id = ? LIMIT 1", (batch_id,)).fetchone()
    return row is not None


def _count_by_status(conn: sqlite3.Connection, batch_id: str) -> dict[str, int]:
    rows = conn.execute(
        "SELECT status, COUNT(*) FROM tasks WHERE batch_id = ? GROUP BY status", (batch_id,)
    ).fetchall()
    return {str(row[0]): int(row[1]) for row in rows}


def _batches(conn: sqlite3.Connection) -> list[BatchSummary]:
    rows = conn.execute(
        "SELECT batch_id, status, COUNT(*), MIN(created_at), MAX(updated_at) "
        "FROM tasks GROUP BY batch_id, status"
    ).fetchall()
    return summarize_batches((row[0], row[1], row[2], row[3], row[4]) for row in rows)


_BATCH = f"SELECT {', '.join(BATCH_COLUMNS)} FROM batches WHERE batch_id = ?"  # noqa: S608 - constant names


def _claim_batch(
    conn: sqlite3.Connection, record: BatchRecord, replacing: str | None
) -> BatchRecord:
    with transaction(conn, "IMMEDIATE"):
        if replacing is not None:
            gone = conn.execute(
                "DELETE FROM batches WHERE batch_id = ? AND fingerprint = ? AND started_at IS NULL",
                (record.batch_id, replacing),
            )
            if gone.rowcount:
                for table in ("tasks", "events", "turns"):
                    conn.execute(f"DELETE FROM {table} WHERE batch_id = ?", (record.batch_id,))  # noqa: S608 - constant names
        conn.execute(
            f"INSERT OR IGNORE INTO batches ({', '.join(BATCH_COLUMNS)}) "  # noqa: S608 - constant names
            f"VALUES ({', '.join('?' for _ in BATCH_COLUMNS)})",
            batch_row(record),
        )
        return batch_from_row(conn.execute(_BATCH, (record.batch_id,)).fetchone())


def _batch_record(conn: sqlite3.Connection, batch_id: str) -> BatchRecord | None:
    row = conn.execute(_BATCH, (batch_id,)).fetchone()
    return None if row is None else batch_from_row(row)


def _mark_batch_started(conn: sqlite3.Connection, batch_id: str, at: datetime) -> None:
    with transaction(conn, "IMMEDIATE"):
        conn.execute(
            "UPDATE batches SET started_at = ? WHERE batch_id = ? AND started_at IS NULL",
            (encode_time(at), batch_id),
        )
