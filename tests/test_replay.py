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
from workflows.webhook import WebhookWorkflow

ROOT = Path(__file__).parent / "histories"
# One directory per recording (scripts/record_histories.py): each set is what workflows started by
# the code of its day left behind, and every set must still replay.
SETS = sorted(path for path in ROOT.iterdir() if path.is_dir())
HISTORIES = sorted(ROOT.glob("*/*.json"))
HISTORY_TEXT = {path: path.read_text() for path in HISTORIES}


@pytest.mark.parametrize("recording", SETS, ids=[s.name for s in SETS])
def test_each_recording_covers_the_batch_and_its_tasks(recording: Path) -> None:
    names = [path.stem for path in recording.glob("*.json")]
    assert sum(1 for n in names if "__" not in n) >= 2, "a batch that continued as new"
    assert sum(1 for n in names if "__" in n) >= 5, "task children"


def test_there_are_recordings_from_before_and_after_turns_recorded_themselves() -> None:
    assert len(SETS) >= 2


@pytest.mark.parametrize("path", HISTORIES, ids=[f"{p.parent.name}/{p.stem}" for p in HISTORIES])
async def test_recorded_history_replays(path: Path) -> None:
    workflow_id = path.stem.rsplit("-", 1)[0].replace("__", "/")
    history = WorkflowHistory.from_json(workflow_id, HISTORY_TEXT[path])
    replayer = Replayer(
        workflows=[BatchWorkflow, TaskWorkflow, WebhookWorkflow],
        data_converter=pydantic_data_converter,
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"
