"""Timeouts and retry policies for the activities workflows run.

Temporal owns retries: the LLM client makes one attempt, and every retry is visible in history.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy

from taskpool.models import AgentSettings

# Store writes are short, idempotent local activities: cheap in history, retried until the
# database answers.
STORE_WRITE_OPTIONS: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(milliseconds=200),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=30),
    ),
}


def llm_activity_options(settings: AgentSettings) -> dict[str, Any]:
    return {
        # A little above the HTTP timeout, so the client's own timeout is what normally fires
        # and becomes a clear, retryable error.
        "start_to_close_timeout": timedelta(seconds=settings.llm_timeout_seconds + 15),
        # The activity heartbeats while it waits for the model, so a crashed worker's turn is
        # retried within this, not after the whole start-to-close timeout.
        "heartbeat_timeout": timedelta(seconds=settings.llm_heartbeat_seconds),
        "retry_policy": RetryPolicy(
            initial_interval=timedelta(seconds=1),
            backoff_coefficient=2.0,
            maximum_interval=timedelta(seconds=60),
            maximum_attempts=settings.llm_max_attempts,
        ),
    }
