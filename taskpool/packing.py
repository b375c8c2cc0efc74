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

from taskpool.models import PackedTasks, Priority, TaskError, TaskStatus
from taskpool.scheduling import IN_FLIGHT_STATUSES, TaskEntry

ENCODING = "json+lzma+base64/1"
# The fastest preset: packing runs inside a workflow task, where seconds matter more than bytes.
LZMA_PRESET = 0

_STATUS_CODES = {
    TaskStatus.PENDING: "p",
    TaskStatus.SCHEDULED: "s",
    TaskStatus.QUEUED: "q",
    TaskStatus.ASSIGNED: "a",
    TaskStatus.IN_PROGRESS: "i",
    TaskStatus.BLOCKED: "b",
    TaskStatus.REVIEW: "r",
    TaskStatus.COMPLETED: "c",
    TaskStatus.FAILED: "f",
    TaskStatus.CANCELLED: "x",
}
_STATUS_BY_CODE = {code: status for status, code in _STATUS_CODES.items()}
_PRIORITY_BY_CODE = {str(priority.rank): priority for priority in Priority}


class PackingError(ValueError):
    """The packed state is damaged or written by an unknown version."""


# What a failed task's error says once the batch has had to drop the details (the store has them).
DETAILS_IN_STORE = "details are in the task store"


def pack(entries: Sequence[TaskEntry], *, limit_bytes: int | None = None) -> PackedTasks:
    """The packed state. Over `limit_bytes` (many failures with long, varied messages), it is
    packed again without error messages and reasons, which the task store keeps anyway: a state
    too large to carry would stop the batch at its next continue-as-new."""
    packed = _pack(entries, details=True)
    if limit_bytes is not None and len(packed.data) > limit_bytes:
        packed = _pack(entries, details=False)
    return packed


def _pack(entries: Sequence[TaskEntry], *, details: bool) -> PackedTasks:
    ordinal = {entry.id: index for index, entry in enumerate(entries)}
    retries: dict[int, int] = {}
    depends_on: dict[int, list[int | str]] = {}
    due: dict[int, str] = {}
    errors: dict[int, dict[str, Any]] = {}
    reasons: dict[int, str] = {}
    started: dict[int, str] = {}
    for index, entry in enumerate(entries):
        if entry.retry_count:
            retries[index] = entry.retry_count
        if entry.depends_on:
            # An id the batch does not know (yet) stays an id.
            depends_on[index] = [ordinal.get(dep, dep) for dep in entry.depends_on]
        if entry.scheduled_for is not None and entry.status in (
            TaskStatus.PENDING,
            TaskStatus.SCHEDULED,
        ):
            due[index] = entry.scheduled_for.isoformat()
        if entry.error is not None:
            error = (
                entry.error
                if details
                else entry.error.model_copy(update={"message": DETAILS_IN_STORE})
            )
            errors[index] = error.model_dump()
        if entry.status_reason is not None and details:
            reasons[index] = entry.status_reason
        if entry.started_at is not None and entry.status in IN_FLIGHT_STATUSES:
            started[index] = entry.started_at.isoformat()
    document = {
        "ids": [entry.id for entry in entries],
        "status": "".join(_STATUS_CODES[entry.status] for entry in entries),
        "priority": "".join(str(entry.priority.rank) for entry in entries),
        "attempts": [entry.attempts for entry in entries],
        "retries": retries,
        "depends_on": depends_on,
        "due": due,
        "errors": errors,
        "reasons": reasons,
        "started": started,
    }
    raw = json.dumps(document, separators=(",", ":")).encode()
    data = base64.b64encode(lzma.compress(raw, preset=LZMA_PRESET)).decode("ascii")
    return PackedTasks(encoding=ENCODING, count=len(entries), data=data)


def unpack(packed: PackedTasks) -> list[TaskEntry]:
    if packed.count == 0 and not packed.data:
        return []
    if packed.encoding != ENCODING:
        raise PackingError(f"unknown task state encoding {packed.encoding!r}")
    try:
        return _entries(json.loads(lzma.decompress(base64.b64decode(packed.data))), packed.count)
    except PackingError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, lzma.LZMAError) as err:
        raise PackingError(f"the packed task state cannot be read: {err!r}") from err


def _entries(document: dict[str, Any], count: int) -> list[TaskEntry]:
    ids: list[str] = document["ids"]
    statuses: str = document["status"]
    priorities: str = document["priority"]
    attempts: list[int] = document["attempts"]
    if not len(ids) == len(statuses) == len(priorities) == len(attempts) == count:
        raise PackingError("the packed task state's columns disagree in length")
    # The dense columns first, in one pass; the sparse maps touch only the tasks they name. A new
    # run rebuilds its table inside one workflow task, so this is on the clock.
    status_by_code, priority_by_code = _STATUS_BY_CODE, _PRIORITY_BY_CODE
    entries = [
        TaskEntry(task_id, priority_by_code[priority], (), None, status_by_code[status], tries)
        for task_id, priority, status, tries in zip(
            ids, priorities, statuses, attempts, strict=True
        )
    ]
    for index, retry_count in _sparse(document, "retries").items():
        entries[index].retry_count = retry_count
    for index, deps in _sparse(document, "depends_on").items():
        entries[index].depends_on = tuple(dep if isinstance(dep, str) else ids[dep] for dep in deps)
    for index, due in _sparse(document, "due").items():
        entries[index].scheduled_for = datetime.fromisoformat(due)
    for index, error in _sparse(document, "errors").items():
        entries[index].error = TaskError.model_validate(error)
    for index, reason in _sparse(document, "reasons").items():
        entries[index].status_reason = reason
    for index, started_at in _sparse(document, "started").items():
        entries[index].started_at = datetime.fromisoformat(started_at)
    return entries


def _sparse(document: dict[str, Any], name: str) -> dict[int, Any]:
    # JSON object keys are strings; the ordinals were ints.
    return {int(key): value for key, value in document.get(name, {}).items()}
