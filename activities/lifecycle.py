"""Lifecycle activities: write task definitions, transitions, results and events to the store.

Workflows run these as local activities; both are idempotent (see taskpool.store), because an
activity can run more than once.
"""

from __future__ import annotations

from temporalio import activity

from taskpool import names
from taskpool.models import RecordTasksRequest, RegisterTasksRequest
from taskpool.store import TaskStore


class LifecycleActivities:
    def __init__(self, store: TaskStore) -> None:
        self._store = store

    @activity.defn(name=names.REGISTER_TASKS)
    async def register_tasks(self, request: RegisterTasksRequest) -> None:
        await self._store.register_tasks(request)

    @activity.defn(name=names.RECORD_TASKS)
    async def record_tasks(self, request: RecordTasksRequest) -> None:
        await self._store.apply(request.updates)
