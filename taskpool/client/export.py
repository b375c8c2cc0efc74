"""A batch's results as JSON Lines: one flat, self-describing object per task, read from the store.

The row is a public format (people load it with pandas and jq), so fields are only ever added.
The tasks themselves can be written too, as a task file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from taskpool.client.errors import ExportError
from taskpool.domain.records import TaskRecord

Row = Callable[[TaskRecord], dict[str, Any]]


def result_row(record: TaskRecord) -> dict[str, Any]:
    return {
        "id": record.task_id,
        "label": record.label,
        "kind": record.kind,
        "status": record.status.value,
        "result": record.result,
        "error": record.error.model_dump(mode="json") if record.error else None,
        "attempt": record.attempt,
        "retry_count": record.retry_count,
        "tokens": {
            "prompt": record.usage.prompt_tokens,
            "completion": record.usage.completion_tokens,
            "total": record.usage.total_tokens,
        },
        "llm_calls": record.llm_calls,
        "created_at": _time(record.created_at),
        "started_at": _time(record.started_at),
        "completed_at": _time(record.completed_at),
        "duration_seconds": record.duration_seconds,
        "metadata": record.metadata,
    }


def task_row(record: TaskRecord) -> dict[str, Any]:
    """The task as a task file gives it, for a new batch (`start`) or new inputs (`retry
    --inputs`). Dependencies are left out: they name tasks of the old batch."""
    spec = record.definition()
    row: dict[str, Any] = {"id": spec.id, "input": spec.input}
    if spec.label is not None:
        row["label"] = spec.label
    row |= {"kind": spec.kind, "priority": spec.priority.value}
    if spec.metadata:
        row["metadata"] = spec.metadata
    return row


def write_jsonl(records: Iterable[TaskRecord], out: TextIO, row: Row = result_row) -> int:
    """Write one line per record (a result row, or what `row` makes of it); returns how many."""
    count = 0
    for record in records:
        out.write(json.dumps(row(record), ensure_ascii=False) + "\n")
        count += 1
    return count


def export_jsonl(records: Iterable[TaskRecord], path: Path, row: Row = result_row) -> int:
    """write_jsonl to the file at `path`; ExportError when it cannot be written."""
    try:
        with path.open("w", encoding="utf-8") as out:
            return write_jsonl(records, out, row)
    except OSError as err:
        raise ExportError(f"cannot write {path}: {err.strerror or err}") from None


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
