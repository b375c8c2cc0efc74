"""Timeouts and retry policies for the activities workflows run.

Temporal owns retries: the LLM client makes one attempt, and every retry is visible in history.
Options are the SDK's own TypedDicts, so `execute_activity(..., **options)` is checked key by key
against what the call takes.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityConfig, LocalActivityConfig

from taskpool.domain.batch import AgentSettings

# Store writes are short, idempotent local activities: cheap in history, retried until the
# database answers.
STORE_WRITE_OPTIONS = LocalActivityConfig(
    start_to_close_timeout=timedelta(seconds=30),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(milliseconds=200),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=30),
    ),
)


# A webhook delivery: a request takes seconds; an endpoint that is down is tried again, less and
# less often, for a day.
WEBHOOK_DELIVERY_OPTIONS = ActivityConfig(
    start_to_close_timeout=timedelta(seconds=30),
    schedule_to_close_timeout=timedelta(days=1),
    retry_policy=RetryPolicy(
        initial_interval=timedelta(seconds=2),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=10),
    ),
)


# Bounds on a task workflow's workflow-task timeout when its model turns run locally: short
# enough that a lost worker's turn is soon retried, long enough that a busy worker is not
# taken for a lost one, and within what the server accepts.
MIN_LOCAL_TURN_TASK_TIMEOUT = timedelta(seconds=2)
MAX_LOCAL_TURN_TASK_TIMEOUT = timedelta(seconds=60)


def llm_activity_options(settings: AgentSettings) -> ActivityConfig:
    """Options for a model turn run as an activity (`model_calls="activity"`)."""
    return ActivityConfig(
        start_to_close_timeout=_llm_start_to_close(settings),
        retry_policy=_llm_retry_policy(settings),
        # The activity heartbeats while it waits for the model, so a crashed worker's turn is
        # retried within this, not after the whole start-to-close timeout.
        heartbeat_timeout=timedelta(seconds=settings.llm_heartbeat_seconds),
    )


def llm_local_activity_options(settings: AgentSettings) -> LocalActivityConfig:
    """Options for a model turn run as a local activity (`model_calls="local"`). A lost worker
    is noticed by the task workflow's workflow-task timeout instead of heartbeats (see
    task_workflow_task_timeout)."""
    return LocalActivityConfig(
        start_to_close_timeout=_llm_start_to_close(settings),
        retry_policy=_llm_retry_policy(settings),
    )


def _llm_start_to_close(settings: AgentSettings) -> timedelta:
    # A little above the HTTP timeout, so the client's own timeout is what normally fires and
    # becomes a clear, retryable error.
    return timedelta(seconds=settings.llm_timeout_seconds + 15)


def _llm_retry_policy(settings: AgentSettings) -> RetryPolicy:
    return RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=60),
        maximum_attempts=settings.llm_max_attempts,
    )


def task_workflow_task_timeout(settings: AgentSettings) -> timedelta | None:
    """The workflow-task timeout for a task workflow; None keeps Temporal's default (10 s).

    A local turn runs inside a workflow task, which the SDK keeps alive by completing it at 80 %
    of this timeout; a worker that dies mid-turn stops doing so, and the turn is retried on
    another worker once the timeout passes. So the heartbeat setting is what sets it.
    """
    if settings.model_calls != "local":
        return None
    wanted = timedelta(seconds=settings.llm_heartbeat_seconds)
    return min(max(wanted, MIN_LOCAL_TURN_TASK_TIMEOUT), MAX_LOCAL_TURN_TASK_TIMEOUT)
