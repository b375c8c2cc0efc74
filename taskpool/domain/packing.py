"""The batch's per-task state as one compact payload, and back.

A batch carries its task table across continue-as-new in a single payload, which Temporal caps at
2 MB. Columns (one character of status and of priority per task, attempts as small numbers) and
sparse maps (only tasks that have dependencies, a due time, a retry, an error or a reason) are
written as JSON and compressed with LZMA: the columns are long runs, and ids made by people and
programs share long prefixes, so a million tasks with ids like `doc-0000001` pack to a few hundred
kilobytes. Everything here is pure computation, deterministic and safe in workflow code.
"""

from __future__ import annotations

import base64
import json
import lzma
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from taskpool.domain.batch import PackedTasks
from taskpool.domain.task_columns import (
    PRIORITY_BY_CODE,
    STATUS_BY_CODE,
    STATUS_CODES,
    TaskColumns,
    TaskEntry,
)
from taskpool.domain.task_counts import IN_FLIGHT_STATUSES
from taskpool.domain.tasks import TaskError, TaskStatus

ENCODING = "json+lzma+base64/1"
# The fastest preset: packing runs inside a workflow task, where seconds matter more than bytes.
LZMA_PRESET = 0

_KEEPS_DUE_TIME = bytes(STATUS_CODES[s] for s in (TaskStatus.PENDING, TaskStatus.SCHEDULED))
_KEEPS_START_TIME = bytes(STATUS_CODES[s] for s in IN_FLIGHT_STATUSES)
_STATUS_CHARACTERS = bytes(STATUS_BY_CODE)
_PRIORITY_CHARACTERS = bytes(PRIORITY_BY_CODE)


class PackingError(ValueError):
    """The packed state is damaged or written by an unknown version."""


# What a failed task's error says once the batch has had to drop the details (the store has them).
DETAILS_IN_STORE = "details are in the task store"


def pack(
    tasks: TaskColumns | Sequence[TaskEntry], *, limit_bytes: int | None = None
) -> PackedTasks:
    """The packed state. Over `limit_bytes` (many failures with long, varied messages), it is
    packed again without error messages and reasons, which the task store keeps anyway: a state
    too large to carry would stop the batch at its next continue-as-new."""
    columns = tasks if isinstance(tasks, TaskColumns) else TaskColumns.from_entries(tasks)
    packed = _pack(columns, details=True)
    if limit_bytes is not None and len(packed.data) > limit_bytes:
        packed = _pack(columns, details=False)
    return packed


def _pack(columns: TaskColumns, *, details: bool) -> PackedTasks:
    status = columns.status
    # Dependencies are written as positions; without any, packing needs no id index.
    position = columns.position if columns.depends_on else {}
    due = {
        index: at.isoformat()
        for index, at in sorted(columns.scheduled_for.items())
        if status[index] in _KEEPS_DUE_TIME
    }
    started = {
        index: at.isoformat()
        for index, at in sorted(columns.started_at.items())
        if status[index] in _KEEPS_START_TIME
    }
    errors = {
        index: (
            error if details else error.model_copy(update={"message": DETAILS_IN_STORE})
        ).model_dump()
        for index, error in sorted(columns.errors.items())
    }
    document = {
        "ids": columns.ids,
        "status": status.decode("ascii"),
        "priority": columns.priority.decode("ascii"),
        "attempts": columns.attempts,
        "retries": dict(sorted(columns.retries.items())),
        # An id the batch does not know (yet) stays an id.
        "depends_on": {
            index: [position.get(dep, dep) for dep in deps]
            for index, deps in sorted(columns.depends_on.items())
        },
        "due": due,
        "errors": errors,
        "reasons": dict(sorted(columns.reasons.items())) if details else {},
        "started": started,
    }
    raw = json.dumps(document, separators=(",", ":")).encode()
    data = base64.b64encode(lzma.compress(raw, preset=LZMA_PRESET)).decode("ascii")
    return PackedTasks(encoding=ENCODING, count=len(columns), data=data)


def unpack(packed: PackedTasks) -> TaskColumns:
    if packed.count == 0 and not packed.data:
        return TaskColumns()
    if packed.encoding != ENCODING:
        raise PackingError(f"unknown task state encoding {packed.encoding!r}")
    try:
        document = json.loads(lzma.decompress(base64.b64decode(packed.data)))
        return _columns(document, packed.count)
    except PackingError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, lzma.LZMAError) as err:
        raise PackingError(f"the packed task state cannot be read: {err!r}") from err


def _columns(document: dict[str, Any], count: int) -> TaskColumns:
    ids: list[str] = document["ids"]
    status = bytearray(document["status"], "ascii")
    priority = bytearray(document["priority"], "ascii")
    attempts: list[int] = document["attempts"]
    if not len(ids) == len(status) == len(priority) == len(attempts) == count:
        raise PackingError("the packed task state's columns disagree in length")
    # Columns are checked and converted in C: this runs inside a workflow task, on the clock.
    if status.translate(None, _STATUS_CHARACTERS) or priority.translate(None, _PRIORITY_CHARACTERS):
        raise PackingError("the packed task state has an unknown status or priority code")
    due = _sparse(document, "due", count)
    errors = _sparse(document, "errors", count)
    started = _sparse(document, "started", count)
    return TaskColumns(
        ids=ids,
        status=status,
        priority=priority,
        attempts=attempts,
        retries=_sparse(document, "retries", count),
        depends_on={
            index: tuple(dep if isinstance(dep, str) else ids[dep] for dep in deps)
            for index, deps in _sparse(document, "depends_on", count).items()
        },
        scheduled_for={index: datetime.fromisoformat(at) for index, at in due.items()},
        errors={index: TaskError.model_validate(error) for index, error in errors.items()},
        reasons=_sparse(document, "reasons", count),
        started_at={index: datetime.fromisoformat(at) for index, at in started.items()},
    )


def _sparse(document: dict[str, Any], name: str, count: int) -> dict[int, Any]:
    # JSON object keys are strings; the positions were ints.
    sparse = {int(key): value for key, value in document.get(name, {}).items()}
    if any(not 0 <= index < count for index in sparse):
        raise PackingError(f"the packed task state's {name} name a task past the end")
    return sparse
