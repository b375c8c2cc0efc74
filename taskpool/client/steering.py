"""Steering a running batch: pause, resume, cancel it or some of its tasks, add tasks, retry
failed ones, decide results in review, change its concurrency or the priority of waiting tasks.

Signals (pause, resume, cancel) are recorded and acted on when a worker next runs the batch;
updates are checked by the batch's validators first and answer with its status. A batch that
has ended takes neither: BatchFinishedError.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from temporalio.client import Client
from temporalio.service import RPCError

from taskpool.client import batches
from taskpool.client.errors import (
    UPDATE_ERRORS,
    BatchFinishedError,
    InvalidRequestError,
    signal_error,
    update_error,
)
from taskpool.client.info import BatchInfo
from taskpool.client.reading import find_batch, read_tasks
from taskpool.domain import names
from taskpool.domain.batch import BatchStatus
from taskpool.domain.requests import FEEDBACK_LIMIT, ReviewDecision, SetPriorityRequest
from taskpool.domain.tasks import Priority, TaskInput, TaskSpec, TaskStatus


@dataclass(frozen=True)
class Changed:
    """The tasks a request changed, and the batch's status right after."""

    task_ids: tuple[str, ...]
    status: BatchStatus


def check_feedback(decision: ReviewDecision, feedback: str | None) -> str | None:
    """The feedback (or note) as it goes with a review decision, stripped; None for none.
    InvalidRequestError when a rejection says nothing or the text is too long for a task."""
    feedback = feedback.strip() if feedback is not None else None
    if decision == "reject" and not feedback:
        raise InvalidRequestError("the feedback is empty: say what the next attempt should change")
    if feedback is not None and len(feedback) > FEEDBACK_LIMIT:
        raise InvalidRequestError(
            f"the feedback is {len(feedback):,} characters; at most {FEEDBACK_LIMIT:,} go with "
            "a task (put long guidance in the task's input: see `retry --input`)"
        )
    return feedback or None


class RunningBatch:
    """A batch that was running when found. Every method raises a ClientError: BatchFinishedError
    once it has ended, BatchRefusedError when its validator refuses an update, NoWorkerError when
    no worker answers one."""

    def __init__(self, client: Client, info: BatchInfo) -> None:
        self._client = client
        self.info = info

    @classmethod
    async def find(cls, client: Client, batch_id: str) -> RunningBatch:
        info = await find_batch(client, batch_id)
        if info.closed:
            raise BatchFinishedError.of(info)
        return cls(client, info)

    @property
    def batch_id(self) -> str:
        return self.info.batch_id

    async def pause(self, reason: str | None = None) -> None:
        """No new task or model call starts; calls already running finish."""
        try:
            await batches.pause_batch(self._client, self.batch_id, reason)
        except RPCError as err:
            raise signal_error(err, self.info, self._client) from None

    async def resume(self) -> None:
        try:
            await batches.resume_batch(self._client, self.batch_id)
        except RPCError as err:
            raise signal_error(err, self.info, self._client) from None

    async def cancel(self, reason: str | None = None) -> None:
        """End the batch: waiting tasks are cancelled, running ones stopped. Final."""
        try:
            await batches.cancel_batch(self._client, self.batch_id, reason)
        except RPCError as err:
            raise signal_error(err, self.info, self._client) from None

    async def cancel_tasks(self, task_ids: Sequence[str], reason: str | None = None) -> Changed:
        """Cancel only these tasks; the batch goes on."""
        try:
            status = await batches.cancel_tasks(self._client, self.batch_id, task_ids, reason)
        except UPDATE_ERRORS as err:
            raise update_error(err, self.info, self._client) from None
        return Changed(tuple(task_ids), status)

    async def task_ids(self, status: TaskStatus | None = None) -> list[str]:
        """The ids of the batch's tasks (with `status`, when given)."""
        return [view.id for view in await read_tasks(self._client, self.info, status)]

    async def add(self, tasks: Sequence[TaskSpec]) -> BatchStatus:
        """Add tasks, whose ids are new to the batch; they may depend on tasks already in it."""
        try:
            return await batches.add_tasks(self._client, self.batch_id, tasks)
        except UPDATE_ERRORS as err:
            raise update_error(err, self.info, self._client) from None

    async def retry(
        self,
        *,
        task_ids: Sequence[str] = (),
        all_failed: bool = False,
        inputs: Mapping[str, TaskInput] | None = None,
    ) -> Changed:
        """Run failed tasks again: those named in `task_ids` or `inputs`, or every failed task.
        A task in `inputs` runs with its new input, which replaces the one in the task store."""
        inputs = dict(inputs or {})
        if all_failed:
            retried = await self.task_ids(TaskStatus.FAILED)
        else:
            retried = list(dict.fromkeys([*task_ids, *inputs]))
        try:
            status = await batches.retry_tasks(
                self._client, self.batch_id, task_ids=retried, all_failed=all_failed, inputs=inputs
            )
        except UPDATE_ERRORS as err:
            raise update_error(err, self.info, self._client) from None
        return Changed(tuple(retried), status)

    async def review(
        self,
        decision: ReviewDecision,
        *,
        task_ids: Sequence[str] = (),
        all_in_review: bool = False,
        feedback: str | None = None,
    ) -> Changed:
        """Approve results waiting in review (their tasks complete), or send them back with
        `feedback`, which each task's next attempt is shown beside its result."""
        feedback = check_feedback(decision, feedback)
        if all_in_review:
            decided = await self.task_ids(TaskStatus.REVIEW)
            if not decided:
                raise InvalidRequestError(f"no task of batch {self.batch_id} is waiting in review")
        else:
            decided = list(dict.fromkeys(task_ids))
        try:
            status = await batches.review_tasks(
                self._client, self.batch_id, decision, task_ids=decided, feedback=feedback
            )
        except UPDATE_ERRORS as err:
            raise update_error(err, self.info, self._client) from None
        return Changed(tuple(decided), status)

    async def set_concurrency(self, concurrency: int) -> BatchStatus:
        """How many tasks run at once from now on, 1-1000."""
        try:
            return await batches.set_concurrency(self._client, self.batch_id, concurrency)
        except UPDATE_ERRORS as err:
            raise update_error(err, self.info, self._client) from None

    async def set_priority(self, task_ids: Sequence[str], priority: Priority) -> Changed:
        """Give tasks that have not started `priority`: the next free slot goes to the task of
        highest priority. The batch refuses the whole request (BatchRefusedError) when a task
        named is unknown, running, in review or finished."""
        named = list(dict.fromkeys(task_ids))
        if not named:
            raise InvalidRequestError("name the tasks whose priority changes")
        request = SetPriorityRequest(task_ids=named, priority=priority)
        try:
            status: BatchStatus = await batches.batch_handle(
                self._client, self.batch_id
            ).execute_update(names.SET_PRIORITY, request, result_type=BatchStatus)
        except UPDATE_ERRORS as err:
            raise update_error(err, self.info, self._client) from None
        return Changed(tuple(named), status)
