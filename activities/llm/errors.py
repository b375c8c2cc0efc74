"""Provider errors as Temporal should treat them: retryable or not, after the provider's delay.

The client makes one HTTP attempt per activity attempt (`max_retries=0`): Temporal owns retries, so
every attempt is in the workflow's history.
"""

from __future__ import annotations

import contextlib
import email.utils
import time
from collections.abc import Mapping
from datetime import timedelta

import openai
from temporalio.exceptions import ApplicationError

# Statuses a later attempt may get past: rate limits, timeouts, conflicts and server trouble.
RETRYABLE_STATUSES = frozenset({408, 409, 429})
NON_RETRYABLE_CODES = frozenset({"context_length_exceeded", "content_filter", "invalid_api_key"})


def provider_error(err: openai.APIError) -> ApplicationError:
    """Turn a provider error into what Temporal should do about it."""
    if isinstance(err, openai.APITimeoutError):
        return ApplicationError(f"the model did not answer in time: {err}", type="timeout")
    if isinstance(err, openai.APIConnectionError):
        return ApplicationError(f"could not reach the model: {err}", type="connection")
    if isinstance(err, openai.APIStatusError):
        status = err.status_code
        code = _error_code(err)
        message = f"HTTP {status} from the model provider: {_error_message(err)}"
        if code in NON_RETRYABLE_CODES:
            return ApplicationError(message, type=code, non_retryable=True)
        if status in RETRYABLE_STATUSES or status >= 500:
            return ApplicationError(
                message,
                type=f"http_{status}",
                next_retry_delay=retry_after(err.response.headers),
            )
        return ApplicationError(message, type=f"http_{status}", non_retryable=True)
    # A reply the client could not read (not JSON, wrong shape): a later attempt may do better.
    return ApplicationError(f"unreadable reply from the model: {err}", type="bad_reply")


def retry_after(headers: Mapping[str, str]) -> timedelta | None:
    """The server's requested delay: `retry-after-ms`, or `retry-after` in seconds or as a date."""
    millis = headers.get("retry-after-ms")
    if millis:
        with contextlib.suppress(ValueError):
            return timedelta(milliseconds=max(float(millis), 0))
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return timedelta(seconds=max(float(value), 0))
    except ValueError:
        pass
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return timedelta(seconds=max(when.timestamp() - time.time(), 0))
    return None


def _error_code(err: openai.APIStatusError) -> str | None:
    code = getattr(err, "code", None)
    if isinstance(code, str):
        return code
    body = err.body if isinstance(err.body, dict) else {}
    nested = body.get("error", body)
    value = nested.get("code") if isinstance(nested, dict) else None
    return value if isinstance(value, str) else None


def _error_message(err: openai.APIStatusError) -> str:
    body = err.body if isinstance(err.body, dict) else {}
    nested = body.get("error", body)
    message = nested.get("message") if isinstance(nested, dict) else None
    return message if isinstance(message, str) else str(err)
