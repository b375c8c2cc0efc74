"""What client operations raise, and how Temporal's answers become those errors.

Temporal answers with RPC status codes and SDK exceptions; a caller needs to know what happened to
the batch it asked about. Every error is a ClientError whose text says it in one line for people.
A RequestError means the request itself is wrong (an unknown batch, a bad argument, a request the
batch refused): asking again the same way gets the same answer. Other errors may pass (no worker
answering, Temporal or the task store out of reach) or say how things stand (a finished batch).
"""

from __future__ import annotations

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError, CancelledError, TerminatedError, TimeoutError
from temporalio.service import RPCError, RPCStatusCode

from taskpool.client.info import BatchInfo

QueryError = RPCError | WorkflowQueryFailedError | WorkflowQueryRejectedError
QUERY_ERRORS = (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError)
UpdateError = RPCError | WorkflowUpdateFailedError | WorkflowUpdateRPCTimeoutOrCancelledError
UPDATE_ERRORS = (RPCError, WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError)


class ClientError(Exception):
    """A client operation could not be done; `str()` says why in one line."""


class RequestError(ClientError):
    """The request itself is wrong; the same request gets the same answer."""


class InvalidRequestError(RequestError):
    """An argument no batch would take: a bad batch id, empty feedback, an empty comment."""


class ConnectionSettingsError(RequestError):
    """The Temporal connection settings (TEMPORAL_* variables, config profile) cannot be read."""


class TemporalUnreachableError(ClientError):
    def __init__(self, address: str, reason: str) -> None:
        super().__init__(
            f"cannot reach Temporal at {address}: {reason}; start one (temporal server start-dev) "
            "or set TEMPORAL_ADDRESS"
        )
        self.address = address


class TemporalError(ClientError):
    """Temporal answered with an error that has no finer name here."""


class NamespaceNotFoundError(RequestError):
    def __init__(self, namespace: str) -> None:
        super().__init__(f"Temporal has no namespace {namespace!r}: check TEMPORAL_NAMESPACE")
        self.namespace = namespace


class BatchNotFoundError(RequestError):
    def __init__(self, batch_id: str) -> None:
        super().__init__(f"no batch named {batch_id}")
        self.batch_id = batch_id


class NotABatchError(RequestError):
    def __init__(self, batch_id: str, workflow_type: str) -> None:
        super().__init__(f"{batch_id} is a {workflow_type} workflow, not a taskpool batch")
        self.batch_id = batch_id


class BatchExistsError(RequestError):
    def __init__(self, batch_id: str) -> None:
        super().__init__(f"a batch named {batch_id} already exists")
        self.batch_id = batch_id


class BatchFinishedError(ClientError):
    """The batch has ended, so there is nothing left to change."""

    def __init__(self, batch_id: str, ended_as: str | None = None) -> None:
        super().__init__(f"batch {batch_id} has finished" + (f" ({ended_as})" if ended_as else ""))
        self.batch_id = batch_id
        self.ended_as = ended_as

    @classmethod
    def of(cls, info: BatchInfo) -> BatchFinishedError:
        # `info` may predate the end: a batch can finish between the describe and the request. A
        # workflow that completed says nothing the batch's own state would not say better.
        ended = info.closed and info.status is not WorkflowExecutionStatus.COMPLETED
        return cls(info.batch_id, info.ended_as if ended else None)


class BatchEndedError(ClientError):
    """The batch's workflow ended without a result: terminated, timed out, or cancelled from
    outside the batch."""


class NoWorkerError(ClientError):
    """No worker picked the query or update up in time."""

    def __init__(self, info: BatchInfo, *, queried: bool = False) -> None:
        message = (
            f"no worker is answering for batch {info.batch_id}: is a worker running on task queue "
            f"{info.task_queue!r}? (TASKPOOL_TASK_QUEUE={info.task_queue} python worker.py)"
        )
        if queried and info.closed:
            message += f" A finished batch ({info.ended_as}) answers queries only while one runs."
        super().__init__(message)
        self.batch_id = info.batch_id
        self.task_queue = info.task_queue


class BatchRefusedError(RequestError):
    """The batch's validator refused the update; nothing reached its history."""

    def __init__(self, batch_id: str, reason: str) -> None:
        super().__init__(f"batch {batch_id} refused the request: {reason}")
        self.batch_id = batch_id
        self.reason = reason


class StoreNotFoundError(RequestError):
    """A SQLite task store that does not exist (opening it would create an empty one)."""

    def __init__(self, path: str) -> None:
        super().__init__(f"no task store at {path}")
        self.path = path


class StoreUnavailableError(ClientError):
    """The task store cannot be reached, read or written; the message names it without secrets."""


class TaskNotFoundError(RequestError):
    def __init__(self, store: str, batch_id: str, task_id: str) -> None:
        super().__init__(f"the task store at {store} has no task {task_id!r} of batch {batch_id}")
        self.batch_id = batch_id
        self.task_id = task_id


class BatchNotStoredError(RequestError):
    def __init__(self, store: str, batch_id: str) -> None:
        super().__init__(f"the task store at {store} has no tasks of batch {batch_id}")
        self.batch_id = batch_id


class TaskWaitTimeoutError(ClientError):
    """The task had no outcome within the time given."""


class ExportError(RequestError):
    """The export file cannot be written."""


# --- Temporal's answers ---------------------------------------------------------------------------


def rpc_error(err: RPCError, batch_id: str, client: Client) -> ClientError:
    if err.status is RPCStatusCode.NOT_FOUND:
        if "namespace" in err.message.lower():
            return NamespaceNotFoundError(client.namespace)
        if "already completed" in err.message:
            return BatchFinishedError(batch_id)
        return BatchNotFoundError(batch_id)
    if err.status in (RPCStatusCode.UNAUTHENTICATED, RPCStatusCode.PERMISSION_DENIED):
        return TemporalError(f"Temporal refused the request: {err.message}")
    if err.status is RPCStatusCode.UNAVAILABLE:
        return TemporalError(f"lost the connection to Temporal: {err.message}")
    return TemporalError(f"Temporal could not do it: {err.message}")


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


def query_error(err: QueryError, info: BatchInfo, client: Client) -> ClientError:
    if is_no_answer(err):
        return NoWorkerError(info, queried=True)
    if isinstance(err, RPCError):
        return rpc_error(err, info.batch_id, client)
    return TemporalError(f"batch {info.batch_id} could not answer: {err}")


def update_error(err: UpdateError, info: BatchInfo, client: Client) -> ClientError:
    if isinstance(err, WorkflowUpdateFailedError):
        cause = err.cause
        reason = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
        return BatchRefusedError(info.batch_id, reason)
    if is_no_answer(err) or not isinstance(err, RPCError):
        return NoWorkerError(info)
    return signal_error(err, info, client)


def signal_error(err: RPCError, info: BatchInfo, client: Client) -> ClientError:
    problem = rpc_error(err, info.batch_id, client)
    return BatchFinishedError.of(info) if isinstance(problem, BatchFinishedError) else problem


def ended_error(err: WorkflowFailureError, batch_id: str) -> BatchEndedError:
    cause = err.cause
    if isinstance(cause, CancelledError):
        how = "was cancelled through Temporal (Request Cancellation)"
    elif isinstance(cause, TerminatedError):
        how = f"was terminated: {cause.message}" if cause.message else "was terminated"
    elif isinstance(cause, TimeoutError):
        how = "timed out"
    else:
        how = f"failed: {cause.message if isinstance(cause, ApplicationError) else cause or err}"
    return BatchEndedError(f"batch {batch_id} {how}")
