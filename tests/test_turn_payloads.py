"""What a task's turns leave in Temporal's histories and in the store: no task input and no model
output in any history, and each store event once even when a worker dies mid-turn
(docs/design.md, "One way per turn")."""

from __future__ import annotations

from collections import Counter

from temporalio.client import Client
from temporalio.worker import Worker

from taskpool.domain import names
from taskpool.domain.batch import AgentSettings, BatchOptions, BatchState
from taskpool.domain.tasks import TaskSpec
from taskpool.infra.settings import Settings
from taskpool.infra.store import TaskStore
from taskpool.testing.scripted import Reply, ScriptedModelServer, ToolCallSpec
from tests.support import (
    SpawnWorker,
    assert_each_completed_once,
    kill_a_worker_mid_batch,
    result_in_time,
    start_test_batch,
)

INPUT_MARK = "PANGOLIN-INPUT-41"
RESULT_MARK = "AXOLOTL-RESULT-77"
STEP_MARK = "reading the pangolin memo"


async def history_bytes(client: Client, workflow_id: str) -> bytes:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return b"".join(event.SerializeToString() for event in history.events)


async def test_no_history_holds_a_tasks_input_or_the_models_result(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
) -> None:
    scripted.script(
        "memo",
        Reply(
            content=f"I will write {RESULT_MARK} soon.",
            tool_calls=[ToolCallSpec("report_progress", {"percent": 20, "step": STEP_MARK})],
        ),
        Reply(tool_calls=[ToolCallSpec("complete_task", {"result": f"{RESULT_MARK}: a memo"})]),
    )
    spec = TaskSpec(id="memo", input=f"A memo about {INPUT_MARK}, to summarise.")
    result = await result_in_time(await start_test_batch(client, settings, batch_id, [spec]))

    assert result.state is BatchState.COMPLETED
    record = await store.get_task(batch_id, "memo", with_events=True)
    assert record is not None
    assert record.result == f"{RESULT_MARK}: a memo"
    # The model saw the input, and the store has the result and the progress step ...
    (first, _) = scripted.records_for(f"{batch_id}/memo")
    assert first.body is not None
    assert INPUT_MARK in first.body["messages"][1]["content"]
    assert STEP_MARK in [e.message for e in record.events]
    # ... and neither the task's nor the batch's history holds the input or the model's words.
    for workflow_id in (names.task_workflow_id(batch_id, "memo", 1), batch_id):
        recorded = await history_bytes(client, workflow_id)
        assert INPUT_MARK.encode() not in recorded
        assert RESULT_MARK.encode() not in recorded
    # What the workflow needs to decide (the progress step it records) does cross.
    assert STEP_MARK.encode() in await history_bytes(
        client, names.task_workflow_id(batch_id, "memo", 1)
    )


async def test_a_worker_killed_mid_turn_records_each_event_once(
    client: Client,
    settings: Settings,
    scripted: ScriptedModelServer,
    store: TaskStore,
    spawn_worker: SpawnWorker,
    batch_id: str,
) -> None:
    options = BatchOptions(concurrency=4, agent=AgentSettings(llm_heartbeat_seconds=2))
    result = await kill_a_worker_mid_batch(
        client, settings, scripted, spawn_worker, batch_id, options, tasks=16
    )

    assert result.counts["completed"] == 16
    requests = Counter(r.task_key for r in scripted.requests)
    assert any(count > 1 for count in requests.values()), "no turn was interrupted"
    for record in await assert_each_completed_once(store, scripted, batch_id, 16):
        keys = [e.key for e in record.events]
        assert keys == ["created", "initial:queued", "1:1", "1:2", "1:3", "1:4"]
        # However often the turn ran, the store keeps one reply, the one the task's result is.
        stored = await store.conversation(batch_id, record.task_id, 1, before_turn=99)
        assert stored is not None
        assert [t.turn for t in stored.turns] == [1]
        assert stored.turns[0].result == record.result
