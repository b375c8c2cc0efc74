"""What the command line says when something goes wrong, and the exit code that goes with it.

Temporal answers with RPC status codes and SDK exceptions; people need one line that names the
batch, what happened and what to do. Everything a user can cause (a typo in a batch id, a
finished batch, no worker running, no server) ends here as a CliError, never as a traceback.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from taskpool.domain import names
from taskpool.infra.temporal_connection import address_of, connect, status_text

OK = 0
# The operation failed, or the batch ended with failed or cancelled tasks.
FAILED = 1
# The request itself is wrong: usage, input file, unknown batch, a request the batch refused.
USAGE = 2
INTERRUPTED = 130

CONNECT_TIMEOUT_SECONDS = 20.0

QueryError = RPCError | WorkflowQueryFailedError | WorkflowQueryRejectedError
QUERY_ERRORS = (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError)
UpdateError = RPCError | WorkflowUpdateFailedError | WorkflowUpdateRPCTimeoutOrCancelledError
UPDATE_ERRORS = (RPCError, WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError)


class CliError(Exception):
    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class BatchInfo:
    """A batch as Temporal describes it: enough to word errors and to know if it still runs."""

    batch_id: str
    task_queue: str
    status: WorkflowExecutionStatus | None

    @property
    def closed(self) -> bool:
        return self.status is not WorkflowExecutionStatus.RUNNING

    @property
    def ended_as(self) -> str:
        return status_text(self.status)


async def connect_client() -> Client:
    try:
        address = address_of()
    except Exception as err:  # the SDK's config loader raises several kinds for a bad profile
        raise CliError(f"cannot read the Temporal connection settings: {err}", USAGE) from None
    hint = "start one (temporal server start-dev) or set TEMPORAL_ADDRESS"
    try:
        return await asyncio.wait_for(connect(), CONNECT_TIMEOUT_SECONDS)
    except TimeoutError:
        raise CliError(
            f"cannot reach Temporal at {address}: no answer within "
            f"{CONNECT_TIMEOUT_SECONDS:.0f} s; {hint}"
        ) from None
    except (RuntimeError, RPCError) as err:
        raise CliError(
            f"cannot reach Temporal at {address}: {_connect_reason(err)}; {hint}"
        ) from None


def _connect_reason(err: Exception) -> str:
    # The core's message is a nested Rust debug dump; its innermost `message: "..."` says it best.
    text = str(err)
    found: list[str] = re.findall(r'message: "([^"]+)"', text)
    if found:
        return found[-1].lower()
    return text.removeprefix("Failed client connect: ").splitlines()[0][:200]


async def find_batch(client: Client, batch_id: str) -> BatchInfo:
    """The batch named `batch_id`, or a CliError saying there is none."""
    try:
        description = await client.get_workflow_handle(batch_id).describe()
    except RPCError as err:
        raise rpc_problem(err, batch_id, client) from None
    if description.workflow_type != names.BATCH_WORKFLOW:
        raise CliError(
            f"{batch_id} is a {description.workflow_type} workflow, not a taskpool batch", USAGE
        )
    return BatchInfo(batch_id, description.task_queue, description.status)


def rpc_problem(err: RPCError, batch_id: str, client: Client) -> CliError:
    if err.status is RPCStatusCode.NOT_FOUND:
        if "namespace" in err.message.lower():
            return CliError(
                f"Temporal has no namespace {client.namespace!r}: check TEMPORAL_NAMESPACE", USAGE
            )
        if "already completed" in err.message:
            return CliError(f"batch {batch_id} has finished")
        return CliError(f"no batch named {batch_id}", USAGE)
    if err.status in (RPCStatusCode.UNAUTHENTICATED, RPCStatusCode.PERMISSION_DENIED):
        return CliError(f"Temporal refused the request: {err.message}")
    if err.status is RPCStatusCode.UNAVAILABLE:
        return CliError(f"lost the connection to Temporal: {err.message}")
    return CliError(f"Temporal could not do it: {err.message}")


def finished_problem(info: BatchInfo, consequence: str) -> CliError:
    # `info` may predate the end: a batch can finish between the describe and the request. A
    # workflow that completed says nothing the batch's own state would not say better.
    ended = (
        f" ({info.ended_as})"
        if info.closed and info.status is not WorkflowExecutionStatus.COMPLETED
        else ""
    )
    return CliError(f"batch {info.batch_id} has finished{ended}; {consequence}")


def _no_worker(info: BatchInfo) -> str:
    return (
        f"no worker is answering for batch {info.batch_id}: is a worker running on task queue "
        f"{info.task_queue!r}? (TASKPOOL_TASK_QUEUE={info.task_queue} python worker.py)"
    )


def is_no_answer(err: BaseException) -> bool:
    """Whether a query or update failed because no worker picked it up in time."""
    if isinstance(err, WorkflowUpdateRPCTimeoutOrCancelledError):
        return True
    if not isinstance(err, RPCError):
        return False
    if err.status is RPCStatusCode.FAILED_PRECONDITION and "poller" in err.message:
        return True
    # The server gives up on an unanswered query with a timeout or cancellation of its own.
    return err.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED)


def query_problem(err: QueryError, info: BatchInfo, client: Client) -> CliError:
    if is_no_answer(err):
        message = _no_worker(info)
        if info.closed:
            message += f" A finished batch ({info.ended_as}) answers queries only while one runs."
        return CliError(message)
    if isinstance(err, RPCError):
        return rpc_problem(err, info.batch_id, client)
    return CliError(f"batch {info.batch_id} could not answer: {err}")


def update_problem(err: UpdateError, info: BatchInfo, client: Client, consequence: str) -> CliError:
    if isinstance(err, WorkflowUpdateFailedError):
        cause = err.cause
        reason = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
        return CliError(f"batch {info.batch_id} refused the request: {reason}", USAGE)
    if is_no_answer(err) or not isinstance(err, RPCError):
        return CliError(_no_worker(info))
    problem = rpc_problem(err, info.batch_id, client)
    if "has finished" in problem.message:
        return finished_problem(info, consequence)
    return problem


def signal_problem(err: RPCError, info: BatchInfo, client: Client, consequence: str) -> CliError:
    problem = rpc_problem(err, info.batch_id, client)
    if "has finished" in problem.message:
        return finished_problem(info, consequence)
    return problem
