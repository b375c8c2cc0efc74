"""Results held for review: a batch started with review waits for a person to approve each result
or send it back with feedback, which the task's next attempt is shown with the result to revise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.worker import Worker

from taskpool.client import batches
from taskpool.client.batches import batch_status
from taskpool.domain.batch import AgentSettings, BatchOptions, BatchState
from taskpool.domain.tasks import EventType, TaskStatus
from taskpool.infra.settings import Settings
from taskpool.infra.store import TaskStore
from taskpool.testing.scripted import ScriptedModelServer
from tests.support import (
    documents,
    eventually,
    start_test_batch,
    starter,
    update,
    worker_environment,
    write_jsonl,
)


def last_request_messages(scripted: ScriptedModelServer, task_id: str) -> list[dict[str, Any]]:
    body = scripted.records_for(task_id)[-1].body
    assert body is not None
    messages: list[dict[str, Any]] = body["messages"]
    return messages


async def test_results_wait_in_review_until_approved_or_sent_back_with_feedback(
    client: Client,
    worker: Worker,
    settings: Settings,
    temporal_address: str,
    scripted: ScriptedModelServer,
    store: TaskStore,
    batch_id: str,
    tmp_path: Path,
) -> None:
    env = worker_environment(settings, temporal_address)
    source = write_jsonl(
        tmp_path / "tasks.jsonl",
        {"id": "draft", "input": "The draft of a report."},
        {"id": "other", "input": "Another text by an author."},
        {"id": "publish", "input": "Publish the report.", "depends_on": ["draft"]},
    )
    started = await starter(env, "start", str(source), "--batch-id", batch_id, "--review")
    assert started.code == 0, started.err
    assert f"approve:    python starter.py approve {batch_id} --task ID ..." in started.out

    async def settled(state: BatchState, **expected: int) -> None:
        status = await batch_status(client, batch_id)
        assert status.state is state
        assert {name: status.counts[name] for name in expected} == expected

    await eventually(lambda: settled(BatchState.AWAITING_REVIEW, review=2, blocked=1))
    shown = await starter(env, "status", batch_id)
    assert "awaiting review: 2 tasks to approve or send back" in shown.out
    assert f"see them:   python starter.py results {batch_id} --status review" in shown.out
    waiting = await starter(env, "results", batch_id, "--status", "review", "--json")
    first_results = {row["id"]: row["result"] for row in waiting.json_lines()}
    assert set(first_results) == {"draft", "other"}
    assert first_results["other"].startswith("Summary of other: ")

    blocked, empty, without = (
        await starter(env, "approve", batch_id, "--task", "publish"),
        await starter(env, "reject", batch_id, "--task", "other", "--feedback", "  "),
        await starter(env, "reject", batch_id, "--task", "other"),
    )
    assert blocked.code == 2
    assert "task 'publish' is blocked; only a task in review can be approved" in blocked.err
    assert empty.code == 2
    assert "the feedback is empty" in empty.err
    assert without.code == 2
    assert "one of the arguments --feedback --feedback-file is required" in without.err

    approved = await starter(env, "approve", batch_id, "--task", "draft", "--note", "Good.")
    assert approved.code == 0, approved.err
    assert f"approved 1 task of batch {batch_id}: draft" in approved.out
    sent_back = await starter(
        env, "reject", batch_id, "--task", "other", "--feedback", "Name the author."
    )
    assert sent_back.code == 0, sent_back.err
    assert f"sent 1 task of batch {batch_id} back for another attempt: other" in sent_back.out

    # The approval released the dependent task; the redo ran and waits in review again.
    await eventually(lambda: settled(BatchState.AWAITING_REVIEW, review=2, completed=1))
    redo = last_request_messages(scripted, "other")[-1]
    assert redo["role"] == "user"
    assert f"Earlier result:\n{first_results['other']}" in redo["content"]
    assert "Reviewer's feedback:\nName the author." in redo["content"]
    other = await store.get_task(batch_id, "other", with_events=True)
    draft = await store.get_task(batch_id, "draft", with_events=True)
    assert other is not None
    assert draft is not None
    assert (other.status, other.attempt) == (TaskStatus.REVIEW, 2)
    assert other.result != first_results["other"]
    assert (EventType.QUEUED, "sent back from review: Name the author.") in [
        (e.type, e.message) for e in other.events
    ]
    assert (draft.status, draft.result) == (TaskStatus.COMPLETED, first_results["draft"])
    assert (draft.events[-1].type, draft.events[-1].message) == (
        EventType.COMPLETED,
        "approved in review: Good.",
    )

    everything = await starter(env, "approve", batch_id, "--all")
    assert everything.code == 0, everything.err
    assert "approved 2 tasks" in everything.out
    followed = await starter(env, "watch", batch_id)
    assert followed.code == 0, followed.err
    # One model call per attempt: the redo was the only call made twice.
    assert {t: len(scripted.records_for(t)) for t in ("draft", "other", "publish")} == {
        "draft": 1,
        "other": 2,
        "publish": 1,
    }
    late = await starter(env, "approve", batch_id, "--all")
    assert late.code == 1
    assert "a finished batch has no results waiting in review" in late.err


@pytest.mark.parametrize("model_calls", ["activity", "local"])
async def test_review_holds_across_continue_as_new_and_takes_json_from_the_temporal_cli(
    client: Client,
    worker: Worker,
    settings: Settings,
    scripted: ScriptedModelServer,
    temporal_address: str,
    store: TaskStore,
    batch_id: str,
    model_calls: str,
) -> None:
    agent = AgentSettings.model_validate({"review": True, "model_calls": model_calls})
    options = BatchOptions(concurrency=3, continue_as_new_after=2, agent=agent)
    handle = await start_test_batch(client, settings, batch_id, documents(6), options)

    async def in_review(count: int) -> None:
        status = await batch_status(client, batch_id)
        assert status.counts["review"] == count
        assert status.state is BatchState.AWAITING_REVIEW

    await eventually(lambda: in_review(6))
    assert (await batch_status(client, batch_id)).run_number > 1

    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await batches.review_tasks(client, batch_id, "reject", task_ids=["doc-2"])
    assert "a result sent back needs feedback" in str(refused.value.cause)
    request = {"task_ids": ["doc-0"], "decision": "reject", "feedback": "More detail."}
    answer = await update(temporal_address, batch_id, "review_tasks", request)
    assert answer["counts"]["review"] == 5
    await batches.cancel_tasks(client, batch_id, ["doc-1"], reason="not needed")

    async def redone() -> None:
        view = await batches.batch_handle(client, batch_id).query(
            "task", {"task_id": "doc-0"}, result_type=dict
        )
        assert (view["status"], view["attempts"]) == ("review", 2)

    await eventually(redone)
    await batches.review_tasks(client, batch_id, "approve", all_in_review=True)

    result = await handle.result()
    assert result.state is BatchState.COMPLETED
    assert (result.counts["completed"], result.counts["cancelled"]) == (5, 1)
    assert [len(scripted.records_for(f"doc-{i}")) for i in range(6)] == [2, 1, 1, 1, 1, 1]
    assert "More detail." in last_request_messages(scripted, "doc-0")[-1]["content"]
    # A result cancelled in review was never approved, but is not thrown away either.
    cancelled = await store.get_task(batch_id, "doc-1")
    assert cancelled is not None
    assert cancelled.status is TaskStatus.CANCELLED
    assert cancelled.result == scripted.completions[f"{batch_id}/doc-1"][0]
