"""Exit codes, and the one line the command line says when something goes wrong.

The client raises typed errors whose text already names the batch, what happened and what to do;
here they get their exit code, and the few words that only make sense on a command line (which
flag to change, what a finished batch means for the command). Everything a user can cause ends
as a CliError, never as a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from taskpool.client.errors import (
    BatchExistsError,
    BatchFinishedError,
    ClientError,
    RequestError,
    StoreNotFoundError,
)

OK = 0
# The operation failed, or the batch ended with failed or cancelled tasks.
FAILED = 1
# The request itself is wrong: usage, input file, unknown batch, a request the batch refused.
USAGE = 2
INTERRUPTED = 130


class CliError(Exception):
    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def cli_error(err: ClientError) -> CliError:
    message = str(err)
    if isinstance(err, BatchExistsError):
        message += "; choose another --batch-id"
    elif isinstance(err, StoreNotFoundError):
        message += ": set TASKPOOL_STORE or --store"
    return CliError(message, USAGE if isinstance(err, RequestError) else FAILED)


@contextmanager
def finished_means(consequence: str) -> Iterator[None]:
    """Says what a batch having finished means for the command at hand."""
    try:
        yield
    except BatchFinishedError as err:
        raise CliError(f"{err}; {consequence}") from None
