"""Names shared by workflows, activities, the worker and the starter.

Handler names are a public API: people type them in the Temporal UI and CLI (docs/design.md
section 4).
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

BATCH_WORKFLOW = "BatchWorkflow"
TASK_WORKFLOW = "TaskWorkflow"
WEBHOOK_WORKFLOW = "WebhookWorkflow"

# Batch signals, queries and updates.
PAUSE = "pause"
RESUME = "resume"
CANCEL = "cancel"
STATUS = "status"
TASKS = "tasks"
TASK = "task"
ADD_TASKS = "add_tasks"
RETRY_TASKS = "retry_tasks"
CANCEL_TASKS = "cancel_tasks"
REVIEW_TASKS = "review_tasks"
SET_CONCURRENCY = "set_concurrency"
SET_PRIORITY = "set_priority"
# Internal: a task child adopted from an earlier run reports its outcome to the batch, and
# confirms it will (see workflows/batch.py, "hand-over").
TASK_FINISHED = "task_finished"
TASK_HANDED_OVER = "task_handed_over"

# Task child signal and query.
CONTROL = "control"
TASK_STATE = "state"
TASK_PROGRESS = "progress"

# Activities.
CHAT_TURN = "chat_turn"
REGISTER_TASKS = "register_tasks"
RECORD_TASKS = "record_tasks"
DELIVER_WEBHOOK = "deliver_webhook"

# The error type a task fails with when the store does not have its definition.
DEFINITION_MISSING = "definition_missing"
# A worker that limits requests per minute through its task queue, which local activities bypass.
LOCAL_TURN_REFUSED = "local_turn_refused"

BATCH_STATE_ATTRIBUTE = SearchAttributeKey.for_keyword("TaskpoolBatchState")
BATCH_PROGRESS_ATTRIBUTE = SearchAttributeKey.for_int("TaskpoolProgress")
SEARCH_ATTRIBUTES = (BATCH_STATE_ATTRIBUTE, BATCH_PROGRESS_ATTRIBUTE)


def webhook_workflow_id(batch_id: str, number: int) -> str:
    """`<batch>#webhook-<n>`: apart from every task's `<batch>/<task>`."""
    return f"{batch_id}#webhook-{number}"


def task_workflow_id(batch_id: str, task_id: str, attempt: int) -> str:
    """`<batch>/<task>` for the first run; retries get their own id so a retry can never collide
    with a previous run that is still closing."""
    base = f"{batch_id}/{task_id}"
    return base if attempt <= 1 else f"{base}@{attempt}"
