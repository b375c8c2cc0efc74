"""taskpool worker: polls the task queue and runs batch and task workflows and their activities.

Configuration comes from the environment (see taskpool.infra.settings and README); Temporal
connection settings from the SDK's standard env config (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import AsyncIterator, Coroutine
from datetime import timedelta
from typing import Any, TypeVar

import openai
import structlog
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from activities.llm.turn import LlmActivities
from activities.store_writes import LifecycleActivities
from activities.webhooks import WebhookActivities
from taskpool.infra.log_config import configure_logging
from taskpool.infra.ratelimit import (
    InMemoryTokenBudget,
    TokenBudget,
    open_token_budget,
    task_queue_rate,
)
from taskpool.infra.settings import Settings, SettingsError
from taskpool.infra.store import TaskStore, opened_store
from taskpool.infra.temporal_connection import address_of, connect, ensure_search_attributes
from workflows.batch import BatchWorkflow
from workflows.task import TaskWorkflow
from workflows.webhook import WebhookWorkflow

log = structlog.get_logger("taskpool.worker")
T = TypeVar("T")

# Workflow-task slots beyond those local model turns may hold: the SDK's default count.
WORKFLOW_TASK_HEADROOM = 100
# How long a workflow task (and a query) waits for the worker that has its workflow cached before
# any worker may take it. A live worker polls for its cached workflows all the time; after one
# died, the SDK's 10 s default kept its batches' workflow tasks and `status` queries waiting that
# long although another worker was ready.
STICKY_QUEUE_TIMEOUT = timedelta(seconds=3)
# Waiting for a Temporal server that does not answer yet: 1, 2, 4 ... seconds between tries.
CONNECT_FIRST_WAIT = 1.0
CONNECT_MAX_WAIT = 30.0


def build_openai_client(settings: Settings) -> openai.AsyncOpenAI:
    # Temporal owns retries: one HTTP attempt per activity attempt, all visible in history.
    api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    return openai.AsyncOpenAI(
        api_key=api_key or "not-needed",
        base_url=settings.openai_base_url,
        max_retries=0,
    )


def build_worker(
    client: Client,
    settings: Settings,
    *,
    llm_client: openai.AsyncOpenAI,
    store: TaskStore,
    budget: TokenBudget | None = None,
) -> Worker:
    """The worker for these settings. With TASKPOOL_TPM set and no `budget` given, the token
    budget covers this process only (running_worker passes the one shared through a file)."""
    if budget is None and settings.tokens_per_minute is not None:
        budget = InMemoryTokenBudget(settings.tokens_per_minute)
    rpm = settings.requests_per_minute
    llm = LlmActivities(
        llm_client,
        default_model=settings.model,
        tool_mode=settings.tool_mode,
        budget=budget,
        temperature=settings.temperature,
        json_max_string_length=settings.json_max_string_length,
        store=store,
        local_turns_refused_because=(
            None
            if rpm is None
            else "TASKPOOL_RPM limits requests through the task queue, which local activities "
            "bypass; start the batch with --model-calls activity"
        ),
    )
    lifecycle = LifecycleActivities(store)
    url, secret = settings.webhook_url, settings.webhook_secret
    webhooks = WebhookActivities(
        None if url is None else url.get_secret_value(),
        None if secret is None else secret.get_secret_value(),
    )
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[BatchWorkflow, TaskWorkflow, WebhookWorkflow],
        activities=[
            llm.chat_turn,
            lifecycle.register_tasks,
            lifecycle.record_tasks,
            webhooks.deliver,
        ],
        max_concurrent_activities=settings.max_concurrent_activities,
        # A model turn run as a local activity (model_calls="local") holds a local-activity slot
        # and, for as long as it runs, its workflow's workflow-task slot: so as many of each as
        # of model calls, and room beyond them for the workflow tasks of everything else.
        max_concurrent_local_activities=settings.max_concurrent_activities,
        max_concurrent_workflow_tasks=settings.max_concurrent_activities + WORKFLOW_TASK_HEADROOM,
        max_cached_workflows=settings.max_cached_workflows,
        sticky_queue_schedule_to_start_timeout=STICKY_QUEUE_TIMEOUT,
        workflow_runner=(
            SandboxedWorkflowRunner() if settings.workflow_sandbox else UnsandboxedWorkflowRunner()
        ),
        # The server enforces this across every worker polling the queue. Store writes are local
        # activities, and a batch delivers a webhook or two in its life, so it limits model calls.
        max_task_queue_activities_per_second=None if rpm is None else task_queue_rate(rpm),
        # Eager execution hands the LLM activity to this worker in the reply to the workflow
        # task that scheduled it (one server round trip less per turn), but it bypasses the
        # task-queue rate limit, so a rate-limited worker does without.
        disable_eager_activity_execution=rpm is not None,
    )


@contextlib.asynccontextmanager
async def running_worker(client: Client, settings: Settings) -> AsyncIterator[Worker]:
    """A started worker with its clients; everything is closed on exit."""
    async with opened_store(settings.store_url) as store:
        llm_client = build_openai_client(settings)
        budget = open_token_budget(settings)
        try:
            worker = build_worker(
                client, settings, llm_client=llm_client, store=store, budget=budget
            )
            async with worker:
                yield worker
        finally:
            await llm_client.close()
            if budget is not None:
                await budget.close()


class ConnectionSettingsError(Exception):
    """The Temporal connection settings are wrong: waiting would not make them right."""


def _unreachable_reason(err: Exception) -> str | None:
    """Why Temporal cannot be reached now, when that may pass (no server yet, one starting or
    restarting); None for an error that waiting does not cure."""
    if isinstance(err, RPCError):
        passing = (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED)
        return err.message if err.status in passing else None
    text = str(err)
    if not isinstance(err, RuntimeError) or not (
        "Server connection error" in text or "code: Unavailable" in text
    ):
        return None
    # The core's message is a nested Rust debug dump; its innermost `message: "..."` says it best.
    found: list[str] = re.findall(r'message: "([^"]+)"', text)
    return found[-1] if found else text.removeprefix("Failed client connect: ")[:200]


async def _unless_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """What `work` returns, or None (`work` cancelled) as soon as `stop` is set."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return None
    return task.result()


async def _ready_client() -> Client:
    client = await connect()
    # Also the proof that the server serves the namespace, not just that it listens.
    await ensure_search_attributes(client)
    return client


async def wait_for_temporal(stop: asyncio.Event) -> Client | None:
    """A client once the Temporal server answers, trying again with backoff while it cannot be
    reached; None when `stop` is set first. ConnectionSettingsError for settings that waiting
    would not cure (a bad address or profile, a refused credential, an unknown namespace)."""
    try:
        address = address_of()
    except Exception as err:  # the SDK's config loader raises several kinds for a bad profile
        raise ConnectionSettingsError(
            f"cannot read the Temporal connection settings: {err}"
        ) from None
    wait = CONNECT_FIRST_WAIT
    attempt = 1
    while True:
        try:
            client = await _unless_stopped(_ready_client(), stop)
        except (RuntimeError, ValueError, OSError, RPCError) as err:
            reason = _unreachable_reason(err)
            if reason is None:
                detail = err.message if isinstance(err, RPCError) else err
                raise ConnectionSettingsError(f"Temporal at {address}: {detail}") from None
        else:
            if client is not None and attempt > 1:
                log.info("Temporal is reachable", address=address, attempt=attempt)
            return client  # None: stopped while trying
        log.warning(
            "Temporal is not reachable; trying again",
            address=address,
            attempt=attempt,
            next_try_in=f"{wait:g}s",
            reason=reason,
        )
        await _unless_stopped(asyncio.sleep(wait), stop)
        if stop.is_set():
            return None
        wait = min(wait * 2, CONNECT_MAX_WAIT)
        attempt += 1


async def serve(settings: Settings) -> None:
    # Signals stop the worker from the start: also while it waits for Temporal.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    client = await wait_for_temporal(stop)
    if client is None:
        log.info("worker stopped before Temporal was reachable")
        return
    async with running_worker(client, settings):
        log.info(
            "worker started",
            task_queue=settings.task_queue,
            namespace=client.namespace,
            model=settings.model,
            base_url=settings.openai_base_url or "https://api.openai.com/v1",
            store=settings.store_url,
            webhooks="on" if settings.webhook_url is not None else "off",
        )
        await stop.wait()
        log.info("worker stopping: finishing what it holds")


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as err:
        print(f"worker: {err}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except ConnectionSettingsError as err:
        print(f"worker: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        # What the SDK's core raises once running (a worker it cannot start): one clear line,
        # not a traceback.
        print(f"worker: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
