"""Lifecycle activities: write task definitions, transitions, results and events to the store.

Workflows run these as local activities; both are idempotent (see taskpool.infra.store), because an
activity can run more than once.
"""

from __future__ import annotations

from temporalio import activity

from taskpool.domain import names
from taskpool.domain.records import RecordTasksRequest, RegisterTasksRequest
from taskpool.infra.store import TaskStore
from taskpool.infra.store.common import UnknownTaskError


class LifecycleActivities:
    def __init__(self, store: TaskStore) -> None:
        self._store = store

    @activity.defn(name=names.REGISTER_TASKS)
    async def register_tasks(self, request: RegisterTasksRequest) -> None:
        await self._store.register_tasks(request)

    @activity.defn(name=names.RECORD_TASKS)
    async def record_tasks(self, request: RecordTasksRequest) -> None:
        updates = list(request.updates)
        while updates:
            try:
                await self._store.apply(updates)
            except UnknownTaskError as err:
                # A task the store never had (a batch started without registering, or a worker
                # on another store): retrying cannot help, and the other tasks' writes must land.
                activity.logger.warning("Store write skipped: %s", err)
                updates = [
                    u for u in updates if (u.batch_id, u.task_id) != (err.batch_id, err.task_id)
                ]
            else:
                return
