"""Record real workflow histories for the replay test (tests/test_replay.py).

Until the first tagged release, each change to the commands a workflow issues re-records this one
set (docs/design.md, "Versioning and recorded histories"), and CI then fails any later change that
would break batches running this code. Each scenario is a batch of its own, named after it, in a
folder of its own: `tests/histories/<scenario>/` holds `batch.run-<n>.json` for each run of the
batch, `<task id>.json` (`<task id>@<n>.json` for a later attempt) for each task, and
`webhook-<n>.json` for each delivery.

    .venv/bin/python scripts/record_histories.py
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

from temporalio.client import Client, WorkflowExecution
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from taskpool.client.batches import (
    batch_handle,
    batch_status,
    iter_tasks,
    pause_batch,
    resume_batch,
    retry_tasks,
    review_tasks,
    start_batch,
)
from taskpool.devtools.devserver import find_temporal_cli
from taskpool.domain import names
from taskpool.domain.batch import AgentSettings, BatchOptions, TaskView
from taskpool.domain.requests import TaskQuery
from taskpool.domain.tasks import TaskSpec, TaskStatus
from taskpool.infra.settings import Settings
from taskpool.infra.store import opened_store
from taskpool.infra.temporal_connection import ensure_search_attributes
from taskpool.testing.scripted import Fault, Reply, ScriptedModelServer, ToolCallSpec
from worker import build_openai_client, build_worker

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "histories"
# One batch for each way of running model turns, and one whose results wait for review; the
# batch id is the scenario's name, so a file's name gives its workflow id (history_workflow_id).
SCENARIOS = {
    "activity-turns": AgentSettings(),
    "local-turns": AgentSettings(model_calls="local"),
    "review": AgentSettings(review=True),
}
# In the batch with review, this task's first result is sent back; every other result is approved.
SENT_BACK = "doc-0"


async def main(out: Path) -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(find_temporal_cli()),
        data_converter=pydantic_data_converter,
    )
    async with env, ScriptedModelServer(latency=0.2) as model:
        client = env.client
        await ensure_search_attributes(client)
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(
                openai_base_url=model.base_url,
                model="scripted-model",
                task_queue=f"record-{uuid.uuid4().hex[:8]}",
                store_url=str(Path(tmp) / "tasks.db"),
            )
            llm = build_openai_client(settings)
            async with (
                opened_store(settings.store_url) as store,
                build_worker(client, settings, llm_client=llm, store=store),
            ):
                count = 0
                for scenario, agent in SCENARIOS.items():
                    folder = out / scenario
                    empty_directory(folder)
                    count += await record_batch(client, model, settings, scenario, agent, folder)
            await llm.close()
    print(f"recorded {count} histories in {out.relative_to(ROOT)}")


async def record_batch(
    client: Client,
    model: ScriptedModelServer,
    settings: Settings,
    batch_id: str,
    agent: AgentSettings,
    out: Path,
) -> int:
    """Run one batch that takes every path worth replaying, then write each of its histories."""
    model.script(f"{batch_id}/flaky", Fault.rate_limit(retry_after=0.5))
    model.script(f"{batch_id}/quiet", Reply(content="no tools"), Reply(content="still none"))
    model.script(
        f"{batch_id}/steps",
        Reply(tool_calls=[ToolCallSpec("start_task", {})]),
        Reply(tool_calls=[ToolCallSpec("report_progress", {"percent": 40})]),
    )
    # "again" fails, and is retried with a new input while "slow" keeps the batch running.
    model.script(
        f"{batch_id}/again", Reply(tool_calls=[ToolCallSpec("fail_task", {"reason": "unreadable"})])
    )
    model.script(
        f"{batch_id}/slow",
        Reply(tool_calls=[ToolCallSpec("complete_task", {"result": "slow"})], latency=5),
    )
    specs = [
        TaskSpec(id="again", input="Unreadable.", priority="urgent"),
        TaskSpec(id="slow", input="Takes a while.", priority="urgent"),
        TaskSpec(id="plain", input="A plain text."),
        TaskSpec(id="flaky", input="Rate limited once."),
        TaskSpec(id="quiet", input="The model never finishes."),
        TaskSpec(id="steps", input="Several turns.", priority="high"),
        TaskSpec(id="after", input="Runs after plain.", depends_on=["plain"]),
        *(TaskSpec(id=f"doc-{i}", input=f"Document {i}.") for i in range(5)),
    ]
    handle = await start_batch(
        client,
        batch_id,
        specs,
        task_queue=settings.task_queue,
        store=settings.store_url,
        options=BatchOptions(concurrency=3, continue_as_new_after=4, agent=agent),
    )
    await pause_batch(client, batch_id, reason="recording")
    await asyncio.sleep(0.5)
    await resume_batch(client, batch_id)
    await retry_when_failed(client, batch_id, "again", "Readable now.")
    if agent.review:
        await review_until_done(client, batch_id)
    await handle.result()
    expected = {batch_id} | {f"{batch_id}/{spec.id}" for spec in specs}
    executions = await listed_when_visible(client, batch_id, expected)
    batch_runs = sorted((e for e in executions if e.id == batch_id), key=lambda e: e.start_time)
    for execution in executions:
        history = await client.get_workflow_handle(
            execution.id, run_id=execution.run_id
        ).fetch_history()
        if execution.id == batch_id:
            name = f"batch.run-{batch_runs.index(execution) + 1}"
        else:
            name = execution.id.removeprefix(batch_id).lstrip("/#")
        (out / f"{name}.json").write_text(json.dumps(json.loads(history.to_json()), indent=1))
    return len(executions)


async def retry_when_failed(client: Client, batch_id: str, task_id: str, new_input: str) -> None:
    handle = batch_handle(client, batch_id)
    deadline = time.monotonic() + 30
    while True:
        view = await handle.query(names.TASK, TaskQuery(task_id=task_id), result_type=TaskView)
        if view.status is TaskStatus.FAILED:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"task {task_id} never failed")
        await asyncio.sleep(0.2)
    await retry_tasks(client, batch_id, task_ids=[task_id], inputs={task_id: new_input})


async def review_until_done(client: Client, batch_id: str) -> None:
    """Send SENT_BACK's first result back with feedback and approve every other result as it
    comes, until the batch ends."""
    sent_back = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = await batch_status(client, batch_id)
        if status.state.value in ("completed", "failed", "cancelled"):
            return
        waiting = [view.id async for view in iter_tasks(client, batch_id, status=TaskStatus.REVIEW)]
        if not sent_back and SENT_BACK in waiting:
            await review_tasks(
                client, batch_id, "reject", task_ids=[SENT_BACK], feedback="Say more."
            )
            sent_back = True
            waiting.remove(SENT_BACK)
        if waiting:
            await review_tasks(client, batch_id, "approve", task_ids=waiting)
        await asyncio.sleep(0.2)
    raise RuntimeError(f"batch {batch_id} did not finish its reviews")


async def listed_when_visible(
    client: Client, batch_id: str, expected: set[str]
) -> list[WorkflowExecution]:
    """Every run of every workflow of the batch, once visibility (eventually consistent) lists
    each expected workflow id."""
    deadline = time.monotonic() + 30
    while True:
        query = f"WorkflowId STARTS_WITH '{batch_id}'"
        executions = [execution async for execution in client.list_workflows(query)]
        if expected <= {execution.id for execution in executions}:
            return executions
        if time.monotonic() > deadline:
            missing = sorted(expected - {execution.id for execution in executions})
            raise RuntimeError(f"visibility never listed {missing}")
        await asyncio.sleep(0.5)


def empty_directory(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.json"):
        old.unlink()


if __name__ == "__main__":
    asyncio.run(main(OUT))
