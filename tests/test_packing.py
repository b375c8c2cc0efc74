"""The batch's packed task state: exact round trips, a million tasks in one payload, the start
size check, and clear errors for damaged state. Pure computation, no Temporal server."""

from __future__ import annotations

import base64
import dataclasses
import json
import lzma
import random
import re
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter

from taskpool.client.batches import MAX_START_BYTES, BatchTooLargeError, batch_run
from taskpool.domain.batch import BatchRun, PackedTasks
from taskpool.domain.packing import DETAILS_IN_STORE, PackingError, pack, unpack
from taskpool.domain.scheduling import MAX_TASKS_PER_BATCH, TaskTable
from taskpool.domain.task_columns import TaskEntry
from taskpool.domain.tasks import Priority, TaskError, TaskSpec, TaskStatus

S = TaskStatus
T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
# Temporal refuses payloads over 2 MB; the state must start within half of that, so it has room
# to grow while the batch runs (errors, reasons).
PAYLOAD_MARGIN = 1_000_000
KEEPS_DUE_TIME = frozenset({S.PENDING, S.SCHEDULED})
KEEPS_START_TIME = frozenset({S.ASSIGNED, S.IN_PROGRESS})


def start_payload(run: BatchRun) -> Payload:
    """The payload Temporal would receive, through the data converter the project uses."""
    (payload,) = pydantic_data_converter.payload_converter.to_payloads([run])
    return payload


def from_payload(payload: Payload) -> BatchRun:
    (run,) = pydantic_data_converter.payload_converter.from_payloads([payload], [BatchRun])
    assert isinstance(run, BatchRun)
    return run


# --- round trip ----------------------------------------------------------------------------------


def every_kind_of_entry() -> list[TaskEntry]:
    error = TaskError(
        code="llm_error", message="the model call failed: 500 upstream", retryable=True
    )
    return [
        TaskEntry(id="pending-due", priority=Priority.LOW, scheduled_for=T0 + timedelta(hours=2)),
        TaskEntry(
            id="scheduled",
            priority=Priority.NORMAL,
            status=S.SCHEDULED,
            # Microseconds and a non-UTC offset must survive as they are.
            scheduled_for=datetime(
                2026, 3, 2, 8, 0, 0, 123456, tzinfo=timezone(timedelta(hours=-5))
            ),
        ),
        TaskEntry(
            id="queued-was-due",
            priority=Priority.HIGH,
            status=S.QUEUED,
            # Released from its schedule: the due time is no longer state worth carrying.
            scheduled_for=T0 - timedelta(minutes=5),
            retry_count=2,
            attempts=2,
        ),
        TaskEntry(
            id="assigned",
            priority=Priority.URGENT,
            status=S.ASSIGNED,
            attempts=1,
            started_at=T0 + timedelta(seconds=1, microseconds=7),
        ),
        TaskEntry(
            id="in-progress",
            priority=Priority.CRITICAL,
            status=S.IN_PROGRESS,
            attempts=4,
            retry_count=3,
            depends_on=("assigned", "done"),
            started_at=T0 + timedelta(seconds=2),
        ),
        TaskEntry(
            id="blocked",
            status=S.BLOCKED,
            # A forward reference, and an id the table does not have (yet).
            depends_on=("failed", "not-in-this-table"),
        ),
        TaskEntry(id="review", priority=Priority.HIGH, status=S.REVIEW, attempts=1),
        TaskEntry(
            id="done",
            priority=Priority.LOW,
            status=S.COMPLETED,
            attempts=1,
            # A finished task's start time is the store's business, not the batch's.
            started_at=T0,
        ),
        TaskEntry(
            id="failed",
            priority=Priority.CRITICAL,
            status=S.FAILED,
            attempts=3,
            retry_count=2,
            error=error,
            started_at=T0,
        ),
        TaskEntry(
            id="cancelled-ünïcode",
            priority=Priority.URGENT,
            status=S.CANCELLED,
            status_reason="dependency failed was cancelled — «by request»",
            depends_on=("failed",),
            scheduled_for=T0,
        ),
    ]


def test_every_field_survives_a_round_trip_except_what_the_status_makes_stale() -> None:
    entries = every_kind_of_entry()
    assert {e.status for e in entries} == set(TaskStatus)
    assert {e.priority for e in entries} == set(Priority)

    packed = pack(entries)
    assert packed.count == len(entries)
    # Through the real converter, as it crosses continue-as-new.
    restored = unpack(from_payload(start_payload(BatchRun(tasks=packed))).tasks).entries()

    expected = [
        dataclasses.replace(
            entry,
            scheduled_for=entry.scheduled_for if entry.status in KEEPS_DUE_TIME else None,
            started_at=entry.started_at if entry.status in KEEPS_START_TIME else None,
        )
        for entry in entries
    ]
    assert restored == expected
    # The rules above dropped something real, so the comparison covers them.
    assert entries[2].scheduled_for is not None
    assert restored[2].scheduled_for is None
    assert entries[7].started_at is not None
    assert restored[7].started_at is None
    assert restored[1].scheduled_for == entries[1].scheduled_for
    assert restored[1].scheduled_for is not None
    assert restored[1].scheduled_for.utcoffset() == timedelta(hours=-5)
    assert restored[5].depends_on == ("failed", "not-in-this-table")
    assert restored[8].error == entries[8].error


def test_an_empty_table_round_trips() -> None:
    assert unpack(pack([])).entries() == []
    assert unpack(PackedTasks()).entries() == []


# --- a million tasks -----------------------------------------------------------------------------

MILLION = 1_000_000
IN_FLIGHT_FROM, IN_FLIGHT_TO = 940_000, 941_000
QUEUED_TO = 990_000
SCHEDULED_TO = 993_000
BLOCKED_TO = 996_000


def priority_of(i: int) -> Priority:
    if i % 97 == 0:
        return Priority.CRITICAL
    if i % 31 == 0:
        return Priority.URGENT
    if i % 10 == 0:
        return Priority.HIGH
    if i % 13 == 0:
        return Priority.LOW
    return Priority.NORMAL


def a_running_batch_of_a_million() -> list[TaskEntry]:
    """A batch well into its run: mostly completed, ~1% failed with its own message, some
    cancelled, a full window in flight, a queue, and a few thousand scheduled or waiting on
    dependencies."""
    entries: list[TaskEntry] = []
    append = entries.append
    deps: tuple[str, ...]
    due: datetime | None
    for i in range(MILLION):
        task_id = f"doc-{i + 1:07d}"
        priority = priority_of(i)
        if i < IN_FLIGHT_FROM:
            if i % 100 == 37:
                error = TaskError(
                    code="llm_error" if i % 3 else "agent_failed",
                    message=(
                        f"the model call failed: Error code: 500 - upstream timed out after "
                        f"{60 + i % 61}.{i % 10} s on {task_id} (attempt {1 + i % 3})"
                        if i % 3
                        else f"the agent gave up on {task_id}: page {i % 250} is unreadable"
                    ),
                    retryable=bool(i % 3),
                )
                append(
                    TaskEntry(task_id, priority, status=S.FAILED, attempts=1 + i % 3, error=error)
                )
            elif i % 500 == 250:
                reason = f"cancelled by request: duplicate of doc-{i - 249:07d}"
                append(TaskEntry(task_id, priority, status=S.CANCELLED, status_reason=reason))
            elif i % 200 == 0:
                # A retried task that then completed, with a dependency on an earlier one.
                deps = (f"doc-{i:07d}",) if i % 400 == 0 else ()
                append(
                    TaskEntry(
                        task_id,
                        priority,
                        depends_on=deps,
                        status=S.COMPLETED,
                        attempts=2,
                        retry_count=1,
                    )
                )
            else:
                append(TaskEntry(task_id, priority, status=S.COMPLETED, attempts=1))
        elif i < IN_FLIGHT_TO:
            status = S.IN_PROGRESS if i % 4 else S.ASSIGNED
            started = T0 + timedelta(milliseconds=37 * (i - IN_FLIGHT_FROM))
            append(TaskEntry(task_id, priority, status=status, attempts=1, started_at=started))
        elif i < QUEUED_TO:
            append(TaskEntry(task_id, priority, status=S.QUEUED))
        elif i < SCHEDULED_TO:
            due = T0 + timedelta(hours=1 + i % 48, minutes=i % 60)
            append(TaskEntry(task_id, priority, status=S.SCHEDULED, scheduled_for=due))
        elif i < BLOCKED_TO:
            deps = (f"doc-{i - 10_000:07d}", f"doc-{i - 20_000:07d}")
            append(TaskEntry(task_id, priority, depends_on=deps, status=S.BLOCKED))
        else:
            # Added by an update a moment ago and not yet settled.
            due = T0 + timedelta(days=1, seconds=i % 3600) if i % 2 else None
            append(TaskEntry(task_id, priority, scheduled_for=due))
    return entries


def test_a_million_tasks_fit_in_half_a_payload_and_come_back() -> None:
    entries = a_running_batch_of_a_million()
    expected_counts = Counter(entry.status for entry in entries)
    assert expected_counts[S.COMPLETED] > 900_000
    assert 9_000 < expected_counts[S.FAILED] < 11_000
    assert len({e.error.message for e in entries if e.error is not None}) > 9_000
    assert sum(1 for e in entries if e.depends_on) > 2_000
    assert sum(1 for e in entries if e.scheduled_for is not None) > 2_000

    payload = start_payload(BatchRun(tasks=pack(entries)))

    size = payload.ByteSize()
    assert size < PAYLOAD_MARGIN, f"a million tasks pack to {size:,} bytes"
    columns = unpack(from_payload(payload).tasks)
    restored = columns.entries()
    assert len(restored) == MILLION
    assert [e.status for e in restored] == [e.status for e in entries]
    assert [e.id for e in restored] == [e.id for e in entries]
    assert [e.priority for e in restored] == [e.priority for e in entries]
    # Spot checks of the sparse columns, one of each kind.
    for i in (37, 250, 400, IN_FLIGHT_FROM + 5, QUEUED_TO + 1, SCHEDULED_TO + 3, BLOCKED_TO + 1):
        assert restored[i] == entries[i], entries[i].id
    table = TaskTable(columns)
    assert table.counts.as_map() == {status.value: expected_counts[status] for status in TaskStatus}
    assert table.in_flight == IN_FLIGHT_TO - IN_FLIGHT_FROM


# --- the start size check ------------------------------------------------------------------------


def test_a_batch_of_random_ids_is_refused_with_the_number_that_would_fit() -> None:
    rng = random.Random(20260301)
    # Two uuid4 hex strings end to end: random ids are what compresses worst.
    specs = [
        TaskSpec(id=f"{rng.getrandbits(128):032x}{rng.getrandbits(128):032x}", input="x")
        for _ in range(100_000)
    ]
    with pytest.raises(BatchTooLargeError) as raised:
        batch_run(specs)

    message = str(raised.value)
    assert "100000 tasks" in message
    found = re.search(r"at most about (\d+) tasks", message)
    assert found is not None, message
    fits = int(found.group(1))
    assert 1_000 < fits < 100_000
    # The advice is a real estimate: a little under it starts, a little over it does not.
    batch_run(specs[: int(fits * 0.9)])
    with pytest.raises(BatchTooLargeError):
        batch_run(specs[: int(fits * 1.1)])


def test_definitions_do_not_count_towards_the_start_payload() -> None:
    words = ("contract", "clause", "party", "liability", "payment", "notice", "term", "annex")
    specs = []
    for i in range(10_000):
        # 5,000 characters per document, different in every one.
        body = " ".join(words[(i * 7 + k * k) % len(words)] for k in range(700))
        text = f"Document {i}: {body}"[:5_000].ljust(5_000, ".")
        specs.append(
            TaskSpec(
                id=f"doc-{i:05d}",
                input=text,
                label=f"Contract {i} of the 2025 archive",
                kind="classify" if i % 5 == 0 else "summarize",
                priority=priority_of(i),
                metadata={"source": f"s3://archive/2025/{i:05d}.txt", "pages": 1 + i % 40},
            )
        )
    assert sum(len(s.input) for s in specs if isinstance(s.input, str)) == 50_000_000

    run = batch_run(specs)

    size = start_payload(run).ByteSize()
    assert size < MAX_START_BYTES // 10, f"10,000 typical tasks start with {size:,} bytes"
    restored = unpack(run.tasks).entries()
    assert [e.id for e in restored] == [s.id for s in specs]
    assert [e.priority for e in restored] == [s.priority for s in specs]
    assert all(e.status is S.PENDING for e in restored)


# --- damaged state -------------------------------------------------------------------------------


def sample() -> PackedTasks:
    return pack(
        [
            TaskEntry("a", status=S.COMPLETED, attempts=1),
            TaskEntry("b", depends_on=("a",), status=S.FAILED, attempts=1),
            TaskEntry("c", status=S.BLOCKED, depends_on=("b",)),
        ]
    )


def rewritten(change: Callable[[dict[str, Any]], object]) -> PackedTasks:
    """The sample with its document changed in place, re-encoded the way pack encodes it."""
    return reencoded(lambda document: (change(document), document)[1])


def reencoded(replace: Callable[[dict[str, Any]], object]) -> PackedTasks:
    """The sample with its document replaced by what `replace` makes of it."""
    packed = sample()
    document = json.loads(lzma.decompress(base64.b64decode(packed.data)))
    raw = json.dumps(replace(document)).encode()
    data = base64.b64encode(lzma.compress(raw)).decode("ascii")
    return packed.model_copy(update={"data": data})


def flipped_byte(packed: PackedTasks) -> PackedTasks:
    raw = bytearray(base64.b64decode(packed.data))
    raw[len(raw) // 2] ^= 0xFF
    return packed.model_copy(update={"data": base64.b64encode(bytes(raw)).decode("ascii")})


def encoded(raw: bytes) -> PackedTasks:
    return sample().model_copy(update={"data": base64.b64encode(raw).decode("ascii")})


DAMAGED: dict[str, Callable[[], PackedTasks]] = {
    "not base64": lambda: sample().model_copy(update={"data": "this is not base64!"}),
    "cut short": lambda: sample().model_copy(update={"data": sample().data[:-12]}),
    "empty data": lambda: sample().model_copy(update={"data": ""}),
    "a flipped byte": lambda: flipped_byte(sample()),
    "not compressed": lambda: encoded(b'{"ids": ["a"]}'),
    "not json": lambda: encoded(lzma.compress(b"\x00\x01 certainly not json")),
    "a missing column": lambda: rewritten(lambda d: d.pop("attempts")),
    "columns of different lengths": lambda: rewritten(lambda d: d.update(status="cb")),
    "a count that disagrees": lambda: sample().model_copy(update={"count": 4}),
}
# Documents that decompress and parse but say something impossible.
INCONSISTENT: dict[str, Callable[[], PackedTasks]] = {
    "not an object": lambda: reencoded(lambda d: [d]),
    "an unknown status code": lambda: rewritten(lambda d: d.update(status="cZb")),
    "an unknown priority code": lambda: rewritten(lambda d: d.update(priority="292")),
    "a dependency past the end": lambda: rewritten(lambda d: d.update(depends_on={"2": [9]})),
    "a malformed error": lambda: rewritten(lambda d: d.update(errors={"1": {"code": 5}})),
    "a malformed due time": lambda: rewritten(lambda d: d.update(due={"0": "next tuesday"})),
}
DAMAGE_CASES = [
    *(pytest.param(make, id=name) for name, make in DAMAGED.items()),
    *(pytest.param(make, id=name) for name, make in INCONSISTENT.items()),
]


def test_the_sample_itself_unpacks() -> None:
    # Otherwise every damaged case below would pass for the wrong reason.
    assert [e.id for e in unpack(sample()).entries()] == ["a", "b", "c"]
    assert [e.id for e in unpack(rewritten(lambda d: None)).entries()] == ["a", "b", "c"]


@pytest.mark.parametrize("damaged", DAMAGE_CASES)
def test_damaged_state_is_a_packing_error(damaged: Callable[[], PackedTasks]) -> None:
    with pytest.raises(PackingError) as raised:
        unpack(damaged())
    assert "packed task state" in str(raised.value)


def test_an_unknown_encoding_is_named_in_the_error() -> None:
    packed = sample().model_copy(update={"encoding": "json+zstd+base64/2"})
    with pytest.raises(PackingError, match=r"unknown task state encoding 'json\+zstd\+base64/2'"):
        unpack(packed)


def test_a_batch_over_the_task_count_limit_is_refused_with_the_limit() -> None:
    specs = [TaskSpec(id=f"t{i}", input="x") for i in range(MAX_TASKS_PER_BATCH + 1)]

    with pytest.raises(BatchTooLargeError) as raised:
        batch_run(specs)

    assert str(raised.value) == (
        f"the file has {MAX_TASKS_PER_BATCH + 1} tasks; one batch holds at most "
        f"{MAX_TASKS_PER_BATCH}: split the file into several batches"
    )
    assert batch_run(specs[:-1]).tasks.count == MAX_TASKS_PER_BATCH


def test_a_state_over_the_limit_drops_error_details_not_tasks() -> None:
    rng = random.Random(7)
    entries = [
        TaskEntry(
            id=f"t{i}",
            status=TaskStatus.FAILED,
            attempts=1,
            error=TaskError(code="model_error", message=f"{rng.getrandbits(1200):x}"),
            status_reason=f"reason {rng.getrandbits(64):x}",
        )
        for i in range(4_000)
    ]
    full = pack(entries)
    limit = len(full.data) // 4

    trimmed = pack(entries, limit_bytes=limit)

    assert len(trimmed.data) <= limit
    restored = unpack(trimmed).entries()
    assert [e.id for e in restored] == [e.id for e in entries]
    assert {e.status for e in restored} == {TaskStatus.FAILED}
    assert {e.error.code for e in restored if e.error} == {"model_error"}
    assert {e.error.message for e in restored if e.error} == {DETAILS_IN_STORE}
    assert all(e.status_reason is None for e in restored)
    # Under the limit nothing is dropped.
    assert unpack(pack(entries, limit_bytes=len(full.data))).entries() == unpack(full).entries()
