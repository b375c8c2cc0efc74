"""The PostgreSQL task store's tables: column types, in the order of
taskpool.infra.store.common's column lists, and the statements that create them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from psycopg import sql

from taskpool.infra.store.batch_records import BATCH_COLUMNS
from taskpool.infra.store.common import EVENT_COLUMNS, TASK_COLUMNS, TURN_COLUMNS

TASK_DEFINITIONS: Mapping[str, str] = {
    "batch_id": "text NOT NULL",
    "task_id": "text NOT NULL",
    "seq": "bigint NOT NULL",
    "label": "text NOT NULL",
    "kind": "text NOT NULL",
    "priority": "text NOT NULL",
    "input": "json NOT NULL",
    "metadata": "json NOT NULL",
    "status": "text NOT NULL",
    "attempt": "integer NOT NULL DEFAULT 0",
    "retry_count": "integer NOT NULL DEFAULT 0",
    "progress": "json NOT NULL",
    "result": "json",
    "error": "json",
    "prompt_tokens": "bigint NOT NULL DEFAULT 0",
    "completion_tokens": "bigint NOT NULL DEFAULT 0",
    "llm_calls": "integer NOT NULL DEFAULT 0",
    "created_at": "timestamptz NOT NULL",
    "started_at": "timestamptz",
    "completed_at": "timestamptz",
    "updated_at": "timestamptz NOT NULL",
}
EVENT_DEFINITIONS: Mapping[str, str] = {
    "batch_id": "text NOT NULL",
    "task_id": "text NOT NULL",
    "key": "text NOT NULL",
    "type": "text NOT NULL",
    "at": "timestamptz NOT NULL",
    "message": "text",
    "data": "json NOT NULL",
}
TURN_DEFINITIONS: Mapping[str, str] = {
    "batch_id": "text NOT NULL",
    "task_id": "text NOT NULL",
    "attempt": "integer NOT NULL",
    "turn": "integer NOT NULL",
    "messages": "json NOT NULL",
    "result": "json",
    "at": "timestamptz NOT NULL",
}
BATCH_DEFINITIONS: Mapping[str, str] = {
    "batch_id": "text PRIMARY KEY",
    "fingerprint": "text NOT NULL",
    "options": "json NOT NULL",
    "task_count": "bigint NOT NULL",
    "task_groups": "json NOT NULL",
    "created_at": "timestamptz NOT NULL",
    "started_at": "timestamptz",
}
if (
    tuple(TASK_DEFINITIONS) != TASK_COLUMNS
    or tuple(BATCH_DEFINITIONS) != BATCH_COLUMNS
    or tuple(EVENT_DEFINITIONS) != EVENT_COLUMNS
    or tuple(TURN_DEFINITIONS) != TURN_COLUMNS
):
    raise ImportError("the PostgreSQL column definitions disagree with taskpool.infra.store.common")


def column_type(definitions: Mapping[str, str], name: str) -> sql.SQL:
    return sql.SQL(definitions[name].split()[0])  # a type from the constants above


def _table(name: str, definitions: Mapping[str, str], extra: Sequence[str]) -> sql.Composed:
    lines: list[sql.Composable] = [
        sql.SQL("{} {}").format(sql.Identifier(column), sql.SQL(definition))
        for column, definition in definitions.items()
    ]
    lines += [sql.SQL(line) for line in extra]
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
        sql.Identifier(name), sql.SQL(", ").join(lines)
    )


SCHEMA: tuple[sql.SQL | sql.Composed, ...] = (
    sql.SQL("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)"),
    _table("tasks", TASK_DEFINITIONS, ["PRIMARY KEY (batch_id, task_id)"]),
    sql.SQL("CREATE INDEX IF NOT EXISTS tasks_in_order ON tasks (batch_id, seq)"),
    sql.SQL("CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (batch_id, status, seq)"),
    _table(
        "events",
        {"seq": "bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY", **EVENT_DEFINITIONS},
        ["UNIQUE (batch_id, task_id, key)"],
    ),
    _table("turns", TURN_DEFINITIONS, ["PRIMARY KEY (batch_id, task_id, attempt, turn)"]),
    _table("batches", BATCH_DEFINITIONS, []),
)
