"""What the scripted server sends back for one request: a reply, or a fault."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


@dataclass(frozen=True)
class ToolCallSpec:
    """One tool call in a reply, e.g. `ToolCallSpec("complete_task", {"result": "done"})`."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    # Sent verbatim instead of `arguments`, so tests can feed a client arguments that are not JSON.
    raw_arguments: str | None = None

    def arguments_json(self) -> str:
        if self.raw_arguments is not None:
            return self.raw_arguments
        return json.dumps(dict(self.arguments))


@dataclass(frozen=True)
class Reply:
    """A successful chat completion.

    `usage` is `(prompt_tokens, completion_tokens)`; when None the server estimates it from the
    request and the reply. `latency` overrides the server's default delay for this reply only.
    """

    content: str | None = None
    tool_calls: Sequence[ToolCallSpec] = ()
    usage: tuple[int, int] | None = None
    latency: float | None = None
    finish_reason: str | None = None

    def __post_init__(self) -> None:
        # Callers pass lists; a tuple keeps a frozen reply really immutable once queued.
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))

    @property
    def effective_finish_reason(self) -> str:
        if self.finish_reason is not None:
            return self.finish_reason
        return "tool_calls" if self.tool_calls else "stop"


# A malformed reply by default: JSON cut off in the middle.
CUT_OFF_JSON = b'{"id": "chatcmpl-malformed", "object": "chat.completion", "choices": [{'


class FaultKind(StrEnum):
    STATUS = "status"
    HANG = "hang"
    MALFORMED = "malformed"


@dataclass(frozen=True)
class Fault:
    """A request that goes wrong. Build one with the class methods.

    Faults answer at once (a real provider rejects fast); give `latency` to delay one anyway.
    """

    kind: FaultKind
    http_status: int = 500
    error_type: str = "server_error"
    error_code: str | None = None
    message: str = "scripted fault"
    retry_after: float | None = None
    seconds: float = 0.0
    latency: float | None = None
    body: bytes = b""

    @classmethod
    def rate_limit(
        cls,
        retry_after: float | None = 1.0,
        message: str = "Rate limit reached (scripted)",
        latency: float | None = None,
    ) -> Fault:
        """429 with a `retry-after` header (seconds) unless `retry_after` is None."""
        return cls(
            FaultKind.STATUS,
            http_status=429,
            error_type="requests",
            error_code="rate_limit_exceeded",
            message=message,
            retry_after=retry_after,
            latency=latency,
        )

    @classmethod
    def server_error(
        cls,
        status: int = 500,
        message: str = "The server had an error (scripted)",
        latency: float | None = None,
    ) -> Fault:
        return cls(
            FaultKind.STATUS,
            http_status=status,
            error_type="server_error",
            message=message,
            latency=latency,
        )

    @classmethod
    def status(
        cls,
        code: int,
        error_code: str | None = None,
        message: str = "Scripted error",
        retry_after: float | None = None,
        latency: float | None = None,
    ) -> Fault:
        """Any HTTP error, e.g. `Fault.status(400, "context_length_exceeded")`."""
        error_type = "invalid_request_error" if code < 500 else "server_error"
        return cls(
            FaultKind.STATUS,
            http_status=code,
            error_type=error_type,
            error_code=error_code,
            message=message,
            retry_after=retry_after,
            latency=latency,
        )

    @classmethod
    def hang(cls, seconds: float) -> Fault:
        """Accept the request, say nothing for `seconds`, then close the connection."""
        return cls(FaultKind.HANG, seconds=seconds)

    @classmethod
    def malformed(cls, body: bytes | None = None) -> Fault:
        """200 with a JSON content type and a body that is not JSON (or `body`, if given).

        The openai SDK (3.x) lets the parser's json.JSONDecodeError escape rather than wrapping
        it in an openai error, so a client must catch that too.
        """
        return cls(FaultKind.MALFORMED, http_status=200, body=body or CUT_OFF_JSON)


Step = Reply | Fault
