"""A batch's own record in the task store: what identifies the batch a starter wrote definitions
for, so a second start under the same id can tell the same batch from another one.

The starter claims the record before it writes the batch's definitions and marks it started once
the batch's workflow is there; backends keep it in a `batches` table, one row per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import JsonValue

from taskpool.infra.store.common import (
    Row,
    decode_json,
    decode_optional_time,
    decode_time,
    encode_json,
    encode_optional_time,
    encode_time,
)

BATCH_COLUMNS: tuple[str, ...] = (
    "batch_id",
    "fingerprint",
    "options",
    "task_count",
    "task_groups",
    "created_at",
    "started_at",
)


@dataclass(frozen=True)
class BatchRecord:
    """`fingerprint` covers the tasks and the options; `options` describes the options (name to
    value) and `task_groups` holds a digest per group of tasks in order, so a difference can be
    named without reading every definition back."""

    batch_id: str
    fingerprint: str
    options: dict[str, JsonValue]
    task_count: int
    task_groups: list[str]
    created_at: datetime
    started_at: datetime | None = None


def batch_row(record: BatchRecord) -> tuple[Any, ...]:
    """The record as a row in BATCH_COLUMNS order."""
    return (
        record.batch_id,
        record.fingerprint,
        encode_json(record.options),
        record.task_count,
        encode_json(list(record.task_groups)),
        encode_time(record.created_at),
        encode_optional_time(record.started_at),
    )


def batch_from_row(row: Row) -> BatchRecord:
    return BatchRecord(
        batch_id=row["batch_id"],
        fingerprint=row["fingerprint"],
        options=decode_json(row["options"]),
        task_count=row["task_count"],
        task_groups=decode_json(row["task_groups"]),
        created_at=decode_time(row["created_at"]),
        started_at=decode_optional_time(row["started_at"]),
    )
