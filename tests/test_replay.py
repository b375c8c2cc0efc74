"""Determinism: histories recorded from real runs (scripts/record_histories.py) must replay with
today's workflow code, or running batches would break on deploy."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.batch import BatchWorkflow
from workflows.task import TaskWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))
HISTORY_TEXT = {path: path.read_text() for path in HISTORIES}


def test_histories_cover_the_batch_and_its_tasks() -> None:
    names = [path.stem for path in HISTORIES]
    assert sum(1 for n in names if "__" not in n) >= 2, "a batch that continued as new"
    assert sum(1 for n in names if "__" in n) >= 5, "task children"


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_recorded_history_replays(path: Path) -> None:
    workflow_id = path.stem.rsplit("-", 1)[0].replace("__", "/")
    history = WorkflowHistory.from_json(workflow_id, HISTORY_TEXT[path])
    replayer = Replayer(
        workflows=[BatchWorkflow, TaskWorkflow], data_converter=pydantic_data_converter
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"
