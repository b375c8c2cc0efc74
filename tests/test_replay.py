"""Determinism: histories recorded from real runs (scripts/record_histories.py) must replay with
today's workflow code, or running batches would break on deploy (docs/design.md, "Versioning and
recorded histories")."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.batch import BatchWorkflow
from workflows.task import TaskWorkflow
from workflows.webhook import WebhookWorkflow

ROOT = Path(__file__).parent / "histories"
SCENARIOS = ("activity-turns", "local-turns", "review")
HISTORIES = sorted(ROOT.glob("*/*.json"))


def workflow_id(path: Path) -> str:
    """The workflow id a recorded file's name stands for (see scripts/record_histories.py)."""
    batch_id, name = path.parent.name, path.stem
    if name.startswith("batch.run-"):
        return batch_id
    if name.startswith("webhook-"):
        return f"{batch_id}#{name}"
    return f"{batch_id}/{name}"


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(workflow_id(path), path.read_text())


def event_types(path: Path) -> list[EventType.ValueType]:
    return [event.event_type for event in load(path).events]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_each_scenario_recorded_the_paths_it_stands_for(scenario: str) -> None:
    folder = ROOT / scenario
    runs = sorted(folder.glob("batch.run-*.json"))
    assert len(runs) >= 2, "the batch continued as new at least once"
    assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW in event_types(runs[0])
    assert any(
        EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED in event_types(run)
        for run in runs
    )
    # A retry with a new input leaves a second attempt of "again".
    assert (folder / "again.json").exists()
    assert (folder / "again@2.json").exists()
    for task in ("plain", "flaky", "quiet", "steps", "after", *(f"doc-{i}" for i in range(5))):
        assert (folder / f"{task}.json").exists(), task
    assert list(folder.glob("webhook-*.json")), "the batch announced its end"
    if scenario == "review":
        # doc-0's first result was sent back, so it ran a second attempt.
        assert (folder / "doc-0@2.json").exists()


@pytest.mark.parametrize("path", HISTORIES, ids=[f"{p.parent.name}/{p.stem}" for p in HISTORIES])
async def test_recorded_history_replays(path: Path) -> None:
    replayer = Replayer(
        workflows=[BatchWorkflow, TaskWorkflow, WebhookWorkflow],
        data_converter=pydantic_data_converter,
    )
    result = await replayer.replay_workflow(load(path), raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path}: {result.replay_failure}"
