"""One look at a batch: its status, its running tasks' own progress, and its pace.

A look never fails: when no worker answers, the snapshot holds what the batch last published and
the task store's counts (marked not live); when even those cannot be read, it says why, so a live
view can keep going while a worker restarts. The command line's `watch` shows snapshots; a console
can too.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from temporalio.client import Client

from taskpool.client.batches import QUERY_TIMEOUT, task_page
from taskpool.client.errors import QUERY_ERRORS, ClientError
from taskpool.client.info import BatchInfo
from taskpool.client.published import StatusAnswer
from taskpool.client.reading import status_answer
from taskpool.domain import names
from taskpool.domain.batch import BatchState, BatchStatus, TaskView
from taskpool.domain.tasks import TaskProgress, TaskStatus

RUNNING_SHOWN = 10
# Each running task is asked for its own progress; a slow answer just leaves its step blank.
PROGRESS_TIMEOUT = timedelta(seconds=3)
RATE_WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class RunningTask:
    id: str
    label: str
    started_at: datetime | None
    progress: TaskProgress | None


@dataclass(frozen=True)
class Snapshot:
    """What one look at the batch found; `status` is None when nothing could be read, and
    `answer` says where it came from (None: from the batch itself)."""

    batch_id: str
    status: BatchStatus | None
    at: datetime
    running: tuple[RunningTask, ...] = ()
    rate: float | None = None
    eta_seconds: float | None = None
    problem: str | None = None
    answer: StatusAnswer | None = None

    @property
    def live(self) -> bool:
        return self.answer is None or self.answer.live


class RateMeter:
    """Tasks finished per second over the last minute of samples: the batch's current pace, not
    its average since a start that may include a pause."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS) -> None:
        self._window = window
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, at: float, finished: int) -> None:
        self._samples.append((at, finished))
        while len(self._samples) > 2 and at - self._samples[1][0] >= self._window:
            self._samples.popleft()

    def rate(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (first_at, first), (last_at, last) = self._samples[0], self._samples[-1]
        span = last_at - first_at
        # A second of samples is too short to tell a pace from the noise of polling.
        if span < 1.0 or last < first:
            return None
        return (last - first) / span


def pace(status: BatchStatus, meter: RateMeter, now: datetime) -> tuple[float | None, float | None]:
    """(tasks per second, seconds to go); the average since the start stands in until the meter
    has seen enough, and there is no ETA while nothing moves."""
    finished = finished_count(status.counts)
    rate = meter.rate()
    if rate is None and status.started_at is not None and finished:
        elapsed = (now - status.started_at).total_seconds()
        rate = finished / elapsed if elapsed > 0 else None
    remaining = status.total - finished
    if status.state is not BatchState.RUNNING or not rate:
        return rate, None if remaining else 0.0
    return rate, remaining / rate


async def take_snapshot(
    client: Client,
    info: BatchInfo,
    meter: RateMeter,
    *,
    with_running: bool,
    store_url: str | None = None,
) -> Snapshot:
    """One look; without a worker, the counts come from the task store at `store_url` (when
    given) or as the batch last published them."""
    now = datetime.now(UTC)
    try:
        answer = await status_answer(client, info, store_url)
    except ClientError as err:
        return Snapshot(info.batch_id, None, now, problem=str(err))
    status = answer.status
    meter.add(time.monotonic(), finished_count(status.counts))
    rate, eta = pace(status, meter, now)
    running: tuple[RunningTask, ...] = ()
    # Running tasks answer through a worker too: without one, each would only time out.
    if with_running and answer.live and status.in_flight:
        running = await _running_tasks(client, info.batch_id)
    return Snapshot(info.batch_id, status, now, running, rate, eta, answer=answer)


async def _running_tasks(client: Client, batch_id: str) -> tuple[RunningTask, ...]:
    views: list[TaskView] = []
    # The batch marks a task assigned when it starts its child; the agent may move it on.
    for status in (TaskStatus.IN_PROGRESS, TaskStatus.ASSIGNED):
        room = RUNNING_SHOWN - len(views)
        if room <= 0:
            break
        try:
            page = await task_page(client, batch_id, status=status, limit=room)
        except QUERY_ERRORS:
            break
        views += page.items

    async def progress_of(task_id: str, attempt: int) -> TaskProgress | None:
        try:
            return await task_progress(
                client, batch_id, task_id, attempt, rpc_timeout=PROGRESS_TIMEOUT
            )
        except QUERY_ERRORS:
            # The task may have ended since the batch's answer; its row just shows no step.
            return None

    progress = await asyncio.gather(*(progress_of(v.id, v.attempts) for v in views))
    return tuple(
        RunningTask(v.id, v.display_label, v.started_at, p)
        for v, p in zip(views, progress, strict=True)
    )


async def task_progress(
    client: Client,
    batch_id: str,
    task_id: str,
    attempt: int,
    *,
    rpc_timeout: timedelta | None = QUERY_TIMEOUT,
) -> TaskProgress:
    """The progress a running task's agent last reported, asked of its own workflow."""
    handle = client.get_workflow_handle(names.task_workflow_id(batch_id, task_id, attempt))
    answer: TaskProgress = await handle.query(
        names.TASK_PROGRESS, result_type=TaskProgress, rpc_timeout=rpc_timeout
    )
    return answer


def finished_count(counts: Mapping[str, int]) -> int:
    return sum(counts.get(s.value, 0) for s in TaskStatus if s.is_terminal)
