"""The task store in PostgreSQL, shared by every worker of a deployment and by readers anywhere.

Each call borrows a connection from a pool, so concurrent activities write side by side. Writes
are one transaction each; reads are one REPEATABLE READ transaction, so tasks and their events come
from the same snapshot. Timestamps are timestamptz and JSON is `json` (not jsonb: `json` keeps the
text as written, key order included, and accepts every string JSON can carry). Values cross this
module's edge in the canonical form of taskpool.infra.store.common; explicit casts in the SQL
turn them into column types, and json columns are read back as text.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from psycopg import AsyncConnection, AsyncCursor, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow, dict_row
from psycopg.types.string import TextLoader
from psycopg_pool import AsyncConnectionPool

from taskpool.domain.records import RegisterTasksRequest, TaskRecord, TaskRecordUpdate
from taskpool.domain.tasks import TaskEvent, TaskStatus
from taskpool.domain.turns import TaskConversation, TurnRecord
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
from taskpool.infra.store.postgres_schema import (
    BATCH_DEFINITIONS,
    EVENT_DEFINITIONS,
    SCHEMA,
    TASK_DEFINITIONS,
    TURN_DEFINITIONS,
    column_type,
)

DEFAULT_MAX_CONNECTIONS = 10
OPEN_TIMEOUT_SECONDS = 30.0

Connection = AsyncConnection[TupleRow]
Pool = AsyncConnectionPool[Connection]

# Advisory lock keys: "taskpool" in ASCII for schema changes, "tpoo" plus a hash of the batch id
# for registrations. One-key and two-key advisory locks never collide.
_SCHEMA_LOCK = 0x7461736B706F6F6C
_BATCH_LOCK_CLASS = 0x74706F6F

# One array per column, so any number of events is one statement.
_INSERT_EVENTS = sql.SQL(
    "INSERT INTO events ({}) SELECT * FROM unnest({}) ON CONFLICT (batch_id, task_id, key) "
    "DO NOTHING"
).format(
    sql.SQL(", ").join(map(sql.Identifier, EVENT_COLUMNS)),
    sql.SQL(", ").join(
        sql.SQL("{}::{}[]").format(sql.Placeholder(), column_type(EVENT_DEFINITIONS, column))
        for column in EVENT_COLUMNS
    ),
)
_SAVE_TURN = sql.SQL(
    "INSERT INTO turns ({}) VALUES ({}) ON CONFLICT (batch_id, task_id, attempt, turn) "
    "DO UPDATE SET messages = excluded.messages, result = excluded.result, at = excluded.at"
).format(
    sql.SQL(", ").join(map(sql.Identifier, TURN_COLUMNS)),
    sql.SQL(", ").join(
        sql.SQL("{}::{}").format(sql.Placeholder(), column_type(TURN_DEFINITIONS, column))
        for column in TURN_COLUMNS
    ),
)
_TURNS = sql.SQL("SELECT {} FROM turns").format(
    sql.SQL(", ").join(map(sql.Identifier, TURN_COLUMNS))
)
_RESULT_OF_TURN = sql.SQL(
    "(SELECT result FROM turns WHERE batch_id = %s AND task_id = %s AND attempt = %s AND turn = %s)"
)
_TASKS = sql.SQL("SELECT {} FROM tasks").format(
    sql.SQL(", ").join(map(sql.Identifier, TASK_COLUMNS))
)
_EVENTS = sql.SQL("SELECT e.task_id, e.key, e.type, e.at, e.message, e.data FROM events AS e")
_BATCH = sql.SQL("SELECT {} FROM batches WHERE batch_id = %s").format(
    sql.SQL(", ").join(map(sql.Identifier, BATCH_COLUMNS))
)
_CLAIM_BATCH = sql.SQL(
    "INSERT INTO batches ({}) VALUES ({}) ON CONFLICT (batch_id) DO NOTHING"
).format(
    sql.SQL(", ").join(map(sql.Identifier, BATCH_COLUMNS)),
    sql.SQL(", ").join(
        sql.SQL("{}::{}").format(sql.Placeholder(), column_type(BATCH_DEFINITIONS, column))
        for column in BATCH_COLUMNS
    ),
)
_READ_SNAPSHOT = sql.SQL("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")


def display_url(url: str) -> str:
    """A PostgreSQL URL's target without its user and password, for messages and logs."""
    params = conninfo_to_dict(url)
    host, port = params.get("host", ""), params.get("port", 5432)
    return f"postgresql://{host}:{port}/{params.get('dbname', '')}"


class PostgresTaskStore:
    """A TaskStore in the PostgreSQL database at `url` (a libpq URL or conninfo string).

    The database must exist; the tables appear on first use. Connections are opened on first use
    too, so a store can be built before the event loop runs.
    """

    def __init__(self, url: str, *, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        self.url = url
        self._max_connections = max_connections
        self._pool: Pool | None = None
        self._opening = asyncio.Lock()
        self._closed = False

    @property
    def display_url(self) -> str:
        """The URL's target without its password, for messages and logs."""
        return display_url(self.url)

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
        specs = unique_specs(request.tasks)
        if not specs:
            return
        async with (await self._ready()).connection() as conn, conn.transaction():
            # Registrations of one batch take turns: each numbers its tasks after the last, and
            # the ids found below stay the ids the batch has until this one commits.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                (_BATCH_LOCK_CLASS, request.batch_id),
            )
            cursor = await conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM tasks WHERE batch_id = %s", (request.batch_id,)
            )
            (last_seq,) = await _one(cursor)
            if last_seq:
                cursor = await conn.execute(
                    "SELECT task_id FROM tasks WHERE batch_id = %s AND task_id = ANY(%s::text[])",
                    (request.batch_id, [spec.id for spec in specs]),
                )
                existing = {task_id for (task_id,) in await cursor.fetchall()}
                specs = [spec for spec in specs if spec.id not in existing]
            if not specs:
                return
            task_rows, event_rows = registration_rows(request, specs, last_seq + 1)
            # Only new tasks and their first events are written, so nothing can conflict and
            # COPY, several times quicker than INSERT for tens of thousands of rows, can do it.
            await _copy(conn, "tasks", TASK_COLUMNS, task_rows)
            await _copy(conn, "events", EVENT_COLUMNS, event_rows)

    async def apply(self, updates: Sequence[TaskRecordUpdate]) -> None:
        if not updates:
            return
        now = datetime.now(UTC)
        plain = [update for update in updates if not update.only_if_current]
        events = [
            event_row(update.batch_id, update.task_id, event)
            for update in plain
            for event in update.events
        ]
        async with (await self._ready()).connection() as conn, conn.transaction():
            # One round trip for the whole list; row counts are checked before the commit.
            async with conn.pipeline() as pipeline:
                updated = []
                for update in plain:
                    values = update_assignments(update, now)
                    cursor = conn.cursor()
                    await cursor.execute(
                        _update_statement(values),
                        (*_assigned(values), update.batch_id, update.task_id),
                    )
                    updated.append((update, cursor))
                if events:
                    await conn.execute(_INSERT_EVENTS, _columns(events, len(EVENT_COLUMNS)))
                await pipeline.sync()
            for update, cursor in updated:
                if cursor.rowcount == 0:
                    raise UnknownTaskError(update.batch_id, update.task_id)
            # Whether a conditional update's events land depends on its row count: one at a time.
            for update in updates:
                if update.only_if_current:
                    await _apply_if_current(conn, update, now)

    async def save_turn(self, turn: TurnRecord) -> None:
        async with (await self._ready()).connection() as conn:
            await conn.execute(_SAVE_TURN, turn_row(turn))

    async def conversation(
        self,
        batch_id: str,
        task_id: str,
        attempt: int,
        *,
        before_turn: int,
        after_applying: TaskRecordUpdate | None = None,
    ) -> TaskConversation | None:
        if after_applying is not None:
            await self.apply([after_applying])
        async with self._snapshot() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                sql.SQL("{} WHERE batch_id = %s AND task_id = %s").format(_TASKS),
                (batch_id, task_id),
            )
            row = await cursor.fetchone()
            if row is None:
                return None
            await cursor.execute(
                sql.SQL(
                    "{} WHERE batch_id = %s AND task_id = %s AND attempt = %s AND turn < %s "
                    "ORDER BY turn"
                ).format(_TURNS),
                (batch_id, task_id, attempt, before_turn),
            )
            turns = [turn_from_row(turn) for turn in await cursor.fetchall()]
        return TaskConversation(record=record_from_row(row), turns=turns)

    async def get_task(
        self, batch_id: str, task_id: str, *, with_events: bool = False
    ) -> TaskRecord | None:
        async with self._snapshot() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                sql.SQL("{} WHERE batch_id = %s AND task_id = %s").format(_TASKS),
                (batch_id, task_id),
            )
            row = await cursor.fetchone()
            if row is None:
                return None
            events: list[TaskEvent] = []
            if with_events:
                await cursor.execute(
                    sql.SQL("{} WHERE e.batch_id = %s AND e.task_id = %s ORDER BY e.seq").format(
                        _EVENTS
                    ),
                    (batch_id, task_id),
                )
                events = [event_from_row(event) for event in await cursor.fetchall()]
        return record_from_row(row, events)

    async def list_tasks(
        self, batch_id: str, *, status: TaskStatus | None = None, with_events: bool = False
    ) -> list[TaskRecord]:
        task_query = sql.SQL("{} WHERE batch_id = %s ORDER BY seq").format(_TASKS)
        params: tuple[Any, ...] = (batch_id,)
        event_query = sql.SQL("{} WHERE e.batch_id = %s ORDER BY e.seq").format(_EVENTS)
        if status is not None:
            task_query = sql.SQL("{} WHERE batch_id = %s AND status = %s ORDER BY seq").format(
                _TASKS
            )
            params = (batch_id, status.value)
            event_query = sql.SQL(
                "{} JOIN tasks AS t ON t.batch_id = e.batch_id AND t.task_id = e.task_id "
                "WHERE e.batch_id = %s AND t.status = %s ORDER BY e.seq"
            ).format(_EVENTS)
        async with self._snapshot() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(task_query, params)
            rows = await cursor.fetchall()
            events: dict[str, list[TaskEvent]] = {}
            if with_events and rows:
                await cursor.execute(event_query, params)
                for event in await cursor.fetchall():
                    events.setdefault(event["task_id"], []).append(event_from_row(event))
        return [record_from_row(row, events.get(row["task_id"], ())) for row in rows]

    async def has_batch(self, batch_id: str) -> bool:
        async with (await self._ready()).connection() as conn:
            cursor = await conn.execute(
                "SELECT 1 FROM tasks WHERE batch_id = %s LIMIT 1", (batch_id,)
            )
            return await cursor.fetchone() is not None

    async def count_by_status(self, batch_id: str) -> dict[str, int]:
        async with (await self._ready()).connection() as conn:
            cursor = await conn.execute(
                "SELECT status, COUNT(*) FROM tasks WHERE batch_id = %s GROUP BY status",
                (batch_id,),
            )
            return {str(status): int(count) for status, count in await cursor.fetchall()}

    async def claim_batch(
        self, record: BatchRecord, *, replacing: str | None = None
    ) -> BatchRecord:
        async with (await self._ready()).connection() as conn, conn.transaction():
            if replacing is not None:
                gone = await conn.execute(
                    "DELETE FROM batches WHERE batch_id = %s AND fingerprint = %s "
                    "AND started_at IS NULL",
                    (record.batch_id, replacing),
                )
                if gone.rowcount:
                    for table in ("tasks", "events", "turns"):
                        await conn.execute(
                            sql.SQL("DELETE FROM {} WHERE batch_id = %s").format(
                                sql.Identifier(table)
                            ),
                            (record.batch_id,),
                        )
            await conn.execute(_CLAIM_BATCH, batch_row(record))
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(_BATCH, (record.batch_id,))
            row = await cursor.fetchone()
        if row is None:
            raise RuntimeError(f"the record of batch {record.batch_id} vanished as it was claimed")
        return batch_from_row(row)

    async def batch_record(self, batch_id: str) -> BatchRecord | None:
        async with (await self._ready()).connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(_BATCH, (batch_id,))
            row = await cursor.fetchone()
        return None if row is None else batch_from_row(row)

    async def mark_batch_started(self, batch_id: str, at: datetime) -> None:
        async with (await self._ready()).connection() as conn:
            await conn.execute(
                "UPDATE batches SET started_at = %s::timestamptz "
                "WHERE batch_id = %s AND started_at IS NULL",
                (encode_time(at), batch_id),
            )

    async def batches(self) -> list[BatchSummary]:
        """Every batch in the store with its task counts per status, oldest first."""
        async with (await self._ready()).connection() as conn:
            cursor = await conn.execute(
                "SELECT batch_id, status, COUNT(*), MIN(created_at), MAX(updated_at) "
                "FROM tasks GROUP BY batch_id, status"
            )
            rows = await cursor.fetchall()
        return summarize_batches((row[0], row[1], row[2], row[3], row[4]) for row in rows)

    async def close(self) -> None:
        async with self._opening:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # --- Connections -------------------------------------------------------------------------

    async def _ready(self) -> Pool:
        """The open pool, opening it and creating the schema on first use."""
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._closed:
                raise RuntimeError(f"task store {self.display_url} is closed")
            if self._pool is None:
                self._pool = await _open_pool(self.url, self._max_connections)
            return self._pool

    @contextlib.asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[Connection]:
        """A connection in a read-only REPEATABLE READ transaction: its queries see one snapshot."""
        async with (await self._ready()).connection() as conn, conn.transaction():
            await conn.execute(_READ_SNAPSHOT)
            yield conn


async def _open_pool(url: str, max_connections: int) -> Pool:
    # The schema is made on a connection of its own, first: a database that is down or misnamed
    # fails now with libpq's reason instead of a pool timeout later.
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        await _create_schema(conn)
    pool = Pool(
        url,
        min_size=1,
        max_size=max_connections,
        open=False,
        # Transactions are always explicit (conn.transaction()), never begun behind our back.
        kwargs={"autocommit": True},
        configure=_configure,
        name="taskpool-store",
    )
    try:
        await pool.open(wait=True, timeout=OPEN_TIMEOUT_SECONDS)
    except BaseException:
        await pool.close()
        raise
    return pool


async def _configure(conn: Connection) -> None:
    # json columns come back as their text, the canonical form taskpool.infra.store.common decodes.
    conn.adapters.register_loader("json", TextLoader)


async def _create_schema(conn: Connection) -> None:
    async with conn.transaction():
        # Workers starting together would otherwise race on CREATE TABLE IF NOT EXISTS, which is
        # not atomic: one of them fails on the catalog's unique index.
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        # "already exists, skipping" notices on every start say nothing useful.
        await conn.execute("SET LOCAL client_min_messages = warning")
        for statement in SCHEMA:
            await conn.execute(statement)
        (version,) = await _one(await conn.execute("SELECT MAX(version) FROM schema_version"))
        if version is None:
            await conn.execute(
                "INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,)
            )
        elif version > SCHEMA_VERSION:
            raise StoreSchemaError(
                f"task store schema version {version} is newer than this taskpool understands "
                f"({SCHEMA_VERSION}); upgrade taskpool"
            )


async def _copy(
    conn: Connection, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    async with conn.cursor().copy(statement) as copy:
        for row in rows:
            await copy.write_row(row)


def _update_statement(values: Mapping[str, Any], *, current_only: bool = False) -> sql.Composed:
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(name), _RESULT_OF_TURN)
        if isinstance(value, FromTurn)
        else sql.SQL("{} = {}::{}").format(
            sql.Identifier(name), sql.Placeholder(), column_type(TASK_DEFINITIONS, name)
        )
        for name, value in values.items()
    )
    statement = sql.SQL("UPDATE tasks SET {} WHERE batch_id = %s AND task_id = %s").format(
        assignments
    )
    if current_only:
        statement += sql.SQL(" AND ") + sql.SQL(current_attempt_condition("%s"))
    return statement


def _assigned(values: Mapping[str, Any]) -> list[Any]:
    """The parameters of _update_statement's assignments, in order."""
    params: list[Any] = []
    for value in values.values():
        if isinstance(value, FromTurn):
            params.extend(value)
        else:
            params.append(value)
    return params


async def _apply_if_current(
    conn: AsyncConnection[TupleRow], update: TaskRecordUpdate, now: datetime
) -> None:
    values = update_assignments(update, now)
    cursor = await conn.execute(
        _update_statement(values, current_only=True),
        (*_assigned(values), update.batch_id, update.task_id, *current_attempt_params(update)),
    )
    if cursor.rowcount == 0:
        return
    events = [event_row(update.batch_id, update.task_id, event) for event in update.events]
    if events:
        await conn.execute(_INSERT_EVENTS, _columns(events, len(EVENT_COLUMNS)))


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows turned into one list per column, the shape unnest() takes."""
    return [[row[index] for row in rows] for index in range(width)]


async def _one(cursor: AsyncCursor[TupleRow]) -> TupleRow:
    row = await cursor.fetchone()
    if row is None:
        raise RuntimeError("an aggregate query returned no row")
    return row
