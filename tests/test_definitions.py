"""Task definitions live in the task store, not in history: the starter writes them before the
batch starts, each model turn reads its task's, and a missing one fails its task, not the batch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

from taskpool.client.batches import batch_run
from taskpool.domain import agents, names
from taskpool.domain.batch import BatchResult, BatchState, TaskOutcome, TaskView
from taskpool.domain.requests import TaskQuery
from taskpool.domain.tasks import EventType as StoreEventType
from taskpool.domain.tasks import Priority, TaskSpec, TaskStatus
from taskpool.infra.settings import Settings
from taskpool.infra.store import TaskStore
from taskpool.testing.scripted import Reply, ScriptedModelServer, ToolCallSpec
from tests.support import result_in_time, running_worker, start_test_batch

# Long enough that carrying it anywhere in a payload would show in the payload's size.
INPUT_CHARS = 20_000


def long_input(marker: str) -> str:
    sentence = f"{marker} is the paragraph only this document has. "
    return (sentence * (INPUT_CHARS // len(sentence) + 1))[:INPUT_CHARS]


def definitions() -> list[TaskSpec]:
    return [
        TaskSpec(
            id="contract-17",
            input=long_input("ZEBRA-CLAUSE-17"),
            label="Supplier contract 17",
            kind="summarize",
            priority=Priority.HIGH,
            metadata={"source": "s3://archive/contract-17.txt", "pages": 12},
        ),
        TaskSpec(
            id="ticket-4",
            input={"text": long_input("OKAPI-TICKET-4"), "labels": ["billing", "outage"]},
            label="Support ticket 4",
            kind="classify",
            priority=Priority.CRITICAL,
            metadata={"customer": "acme", "tags": ["eu", "priority"]},
        ),
        TaskSpec(id="note-9", input=long_input("NARWHAL-NOTE-9"), priority=Priority.LOW),
    ]


async def history_start_input(client: Client, workflow_id: str) -> bytes:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    first = history.events[0]
    assert first.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
    payloads = first.workflow_execution_started_event_attributes.input.payloads
    return b"".join(payload.data for payload in payloads)


async def test_definitions_are_stored_before_the_batch_starts_and_read_by_each_task(
    client: Client,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
) -> None:
    specs = definitions()
    # No worker yet: whatever the store holds now, the starter wrote before any workflow code ran.
    handle = await start_test_batch(client, settings, batch_id, specs)

    records = await store.list_tasks(batch_id)
    assert [r.task_id for r in records] == [s.id for s in specs]
    for spec, record in zip(specs, records, strict=True):
        assert record.input == spec.input
        assert record.label == spec.display_label
        assert record.kind == spec.kind
        assert record.priority is spec.priority
        assert record.metadata == spec.metadata
        # Registered with its first status: the batch's first run has nothing to write.
        assert record.status is TaskStatus.QUEUED

    started = await history_start_input(client, batch_id)
    assert len(started) < 2_000, f"the batch's start input is {len(started)} bytes"
    for spec in specs:
        assert spec.id.encode() not in started  # ids are packed, so not even they show
    assert b"ZEBRA-CLAUSE-17" not in started

    async with running_worker(client, settings):
        result = await result_in_time(handle)

    assert result.state is BatchState.COMPLETED
    assert result.counts["completed"] == len(specs)
    for spec in specs:
        (request,) = scripted.records_for(f"{batch_id}/{spec.id}")
        assert request.body is not None
        system, user = request.body["messages"][:2]
        assert system["content"] == agents.KINDS[spec.kind].system_prompt()
        text = spec.input if isinstance(spec.input, str) else spec.input["text"]
        assert isinstance(text, str)
        assert text in user["content"]
        assert spec.display_label in user["content"]
        # Neither does the task's own workflow carry the definition: it read it from the store.
        child_input = await history_start_input(
            client, names.task_workflow_id(batch_id, spec.id, 1)
        )
        assert text[:40].encode() not in child_input
        assert len(child_input) < 2_000
    stored = await store.list_tasks(batch_id, status=TaskStatus.COMPLETED)
    assert len(stored) == len(specs)


async def test_the_starter_registers_first_statuses_so_the_batch_starts_tasks_at_once(
    client: Client,
    settings: Settings,
    store: TaskStore,
    batch_id: str,
) -> None:
    later = datetime.now(UTC) + timedelta(seconds=3)
    specs = [
        TaskSpec(id="first", input="one"),
        TaskSpec(id="second", input="two", depends_on=["first"]),
        TaskSpec(id="later", input="three", scheduled_for=later),
    ]
    handle = await start_test_batch(client, settings, batch_id, specs)
    records = {r.task_id: r for r in await store.list_tasks(batch_id, with_events=True)}
    assert {task_id: r.status for task_id, r in records.items()} == {
        "first": TaskStatus.QUEUED,
        "second": TaskStatus.BLOCKED,
        "later": TaskStatus.SCHEDULED,
    }
    assert [e.type for e in records["second"].events] == [
        StoreEventType.CREATED,
        StoreEventType.BLOCKED,
    ]

    async with running_worker(client, settings):
        result = await result_in_time(handle)

    assert result.state is BatchState.COMPLETED
    history = await handle.fetch_history()
    kinds = [event.event_type for event in history.events]
    # The first run wrote no first statuses before starting a task: its first command is a start.
    first_start = kinds.index(EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED)
    assert EventType.EVENT_TYPE_MARKER_RECORDED not in kinds[:first_start]
    records = {r.task_id: r for r in await store.list_tasks(batch_id, with_events=True)}
    assert all(r.status is TaskStatus.COMPLETED for r in records.values())
    # The due task was queued by the batch when its time came, and the store says so.
    later_events = [e.type for e in records["later"].events]
    assert later_events[:3] == [
        StoreEventType.CREATED,
        StoreEventType.SCHEDULED,
        StoreEventType.QUEUED,
    ]
    assert records["later"].started_at is not None
    assert records["later"].started_at >= later


async def test_no_turn_of_a_task_carries_its_definition_in_history(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    batch_id: str,
) -> None:
    spec = TaskSpec(id="long", input=long_input("QUOKKA-MEMO-3"))
    scripted.script(
        "long",
        Reply(content="Let me think about it."),
        Reply(tool_calls=[ToolCallSpec("complete_task", {"result": "a memo about quokkas"})]),
    )
    handle = await start_test_batch(client, settings, batch_id, [spec])
    result = await result_in_time(handle)

    assert result.state is BatchState.COMPLETED
    first, second = scripted.records_for(f"{batch_id}/long")
    for request in (first, second):
        assert request.body is not None
        system, user = request.body["messages"][:2]
        assert system["role"] == "system"
        assert spec.input in user["content"]
        assert [tool["function"]["name"] for tool in request.body["tools"]] == [
            tool.name for tool in agents.LIFECYCLE_TOOLS
        ]
    assert second.body is not None
    assert second.body["messages"][2]["content"] == "Let me think about it."
    history = await client.get_workflow_handle(
        names.task_workflow_id(batch_id, spec.id, 1)
    ).fetch_history()
    recorded = b"".join(event.SerializeToString() for event in history.events)
    # Two turns, each read from the store: neither the input nor the tool schemas are in history.
    assert b"QUOKKA-MEMO-3" not in recorded
    assert b"report_progress" not in recorded
    assert len(recorded) < INPUT_CHARS // 2


async def test_a_task_whose_definition_is_missing_fails_and_the_batch_ends(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
) -> None:
    specs = definitions()
    # Started the way the CLI or another tool could, without registering the definitions.
    handle = await client.start_workflow(
        names.BATCH_WORKFLOW,
        batch_run(specs),
        id=batch_id,
        task_queue=settings.task_queue,
        result_type=BatchResult,
    )

    result = await result_in_time(handle)

    assert result.state is BatchState.FAILED
    assert result.counts["failed"] == len(specs)
    assert scripted.total_requests == 0
    for spec in specs:
        view: TaskView = await handle.query(
            names.TASK, TaskQuery(task_id=spec.id), result_type=TaskView
        )
        assert view.status is TaskStatus.FAILED
        assert view.error is not None
        assert view.error.code == "definition_missing"
        assert repr(spec.id) in view.error.message
        assert "task store" in view.error.message
        child = client.get_workflow_handle(
            names.task_workflow_id(batch_id, spec.id, 1), result_type=TaskOutcome
        )
        outcome = await child.result()
        assert outcome.status is TaskStatus.FAILED
        assert outcome.error == view.error
    assert await store.list_tasks(batch_id) == []
