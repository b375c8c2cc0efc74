"""An OpenAI-compatible HTTP server whose answers are scripted per task.

It runs on the caller's event loop. Requests from taskpool name their task and turn in headers;
each request takes the next scripted step for its task, or the default responder's reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from taskpool.devtools.processes import Startable
from taskpool.testing.scripted.responder import Responder, default_responder
from taskpool.testing.scripted.steps import Fault, FaultKind, Reply, Step, ToolCallSpec
from taskpool.testing.scripted.wire import completion_json, error_json, estimate_usage

TASK_HEADER = "X-Taskpool-Task"
TURN_HEADER = "X-Taskpool-Turn"
# A script under this key answers requests that no task-specific script claims.
ANY_TASK = "*"
DEFAULT_MODEL = "scripted-model"

log = logging.getLogger(__name__)


@dataclass
class RequestRecord:
    """One chat-completion request as the server saw and answered it (times: time.monotonic)."""

    task_key: str | None
    turn: int | None
    received_at: float
    body: dict[str, Any] | None = None
    step: Step | None = None
    scripted: bool = False
    # None when the connection was closed without an answer (a hang).
    status: int | None = None
    responded_at: float | None = None
    content: str | None = None
    tool_calls: list[ToolCallSpec] = field(default_factory=list)
    usage: tuple[int, int] | None = None

    @property
    def duration(self) -> float | None:
        return None if self.responded_at is None else self.responded_at - self.received_at


class ScriptedModelServer(Startable):
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        *,
        responder: Responder = default_responder,
        model: str = DEFAULT_MODEL,
    ) -> None:
        self.host = host
        self.latency = latency
        self.model = model
        self._requested_port = port
        self._responder = responder
        self._scripts: dict[str, deque[Step]] = {}
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        # Set on stop so that replies waiting out a latency or a hang end at once.
        self._stopping = asyncio.Event()
        # Cleared while a test holds replies back (hold_replies), and set again on stop.
        self._released = asyncio.Event()
        self._released.set()
        self.requests: list[RequestRecord] = []
        self.completions: dict[str, list[Any]] = {}
        self.in_flight = 0
        self.peak_concurrency = 0
        self.total_requests = 0

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the scripted server is already running")
        # Prompts for long documents exceed aiohttp's 1 MiB default body limit.
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        # A client that hangs up (a cancelled or timed-out call) ends its request here too, as it
        # does at a real provider, so in_flight counts only calls someone still waits for.
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self._stopping.clear()

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping.set()
        self._released.set()
        await runner.cleanup()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the scripted server has not been started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # --- scripting and stats ---------------------------------------------------------------------

    def script(self, key: str, *steps: Step) -> None:
        """Queue steps for requests whose task key is `key` or ends with "/" + `key`."""
        self._scripts.setdefault(key, deque()).extend(steps)

    def pending(self, key: str | None = None) -> int:
        """Scripted steps not yet consumed, for one key or all."""
        if key is not None:
            return len(self._scripts.get(key, ()))
        return sum(len(queue) for queue in self._scripts.values())

    def clear_scripts(self) -> None:
        self._scripts.clear()

    def hold_replies(self) -> None:
        """Keep every reply waiting, after its latency, until `release_replies`: calls stay in
        flight for as long as a test needs them to, instead of for a latency it bets on. Faults
        still answer at once."""
        self._released.clear()

    def release_replies(self) -> None:
        self._released.set()

    def reset_stats(self) -> None:
        self.requests = []
        self.completions = {}
        self.total_requests = 0
        # Requests still being served keep counting towards the next peak.
        self.peak_concurrency = self.in_flight

    def records_for(self, key: str) -> list[RequestRecord]:
        return [r for r in self.requests if r.task_key is not None and _matches(r.task_key, key)]

    # --- HTTP ------------------------------------------------------------------------------------

    async def _models(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": self.model, "object": "model", "created": 0, "owned_by": "taskpool"}
                ],
            }
        )

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        record = RequestRecord(
            task_key=request.headers.get(TASK_HEADER),
            turn=_parse_turn(request.headers.get(TURN_HEADER)),
            received_at=time.monotonic(),
        )
        self.requests.append(record)
        self.total_requests += 1
        self.in_flight += 1
        self.peak_concurrency = max(self.peak_concurrency, self.in_flight)
        try:
            return await self._answer(request, record)
        finally:
            self.in_flight -= 1
            record.responded_at = time.monotonic()

    async def _answer(self, request: web.Request, record: RequestRecord) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return self._error(record, 400, "invalid_request_error", f"body is not JSON: {exc}")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self._error(record, 400, "invalid_request_error", "'messages' must be a list")
        record.body = body
        if body.get("stream"):
            return self._error(
                record, 400, "invalid_request_error", "the scripted server does not stream"
            )

        step = self._next_scripted_step(record.task_key)
        record.scripted = step is not None
        if step is None:
            try:
                step = self._responder(body, record.task_key)
            except Exception as exc:
                # A broken custom responder shows up as a 500 the test can see, with the cause.
                log.exception("scripted responder failed")
                return self._error(record, 500, "server_error", f"responder failed: {exc!r}")
        record.step = step
        if isinstance(step, Fault):
            return await self._fault(request, record, step)
        return await self._reply(record, body, step)

    async def _reply(
        self, record: RequestRecord, body: Mapping[str, Any], reply: Reply
    ) -> web.Response:
        await self._pause(self.latency if reply.latency is None else reply.latency)
        await self._released.wait()
        usage = reply.usage or estimate_usage(body, reply)
        model = body.get("model")
        payload = completion_json(
            completion_id=f"scripted-{next(self._ids)}",
            model=model if isinstance(model, str) and model else self.model,
            reply=reply,
            usage=usage,
        )
        record.status = 200
        record.content = reply.content
        record.tool_calls = list(reply.tool_calls)
        record.usage = usage
        for call in reply.tool_calls:
            if call.name == "complete_task" and call.raw_arguments is None:
                self.completions.setdefault(record.task_key or "", []).append(
                    call.arguments.get("result")
                )
        return web.json_response(payload)

    async def _fault(
        self, request: web.Request, record: RequestRecord, fault: Fault
    ) -> web.StreamResponse:
        await self._pause(fault.latency or 0.0)
        if fault.kind is FaultKind.HANG:
            await self._pause(fault.seconds)
            if request.transport is not None:
                request.transport.close()
            # Never written: the transport is closed, so aiohttp drops it as a disconnection.
            return web.Response(status=204)
        if fault.kind is FaultKind.MALFORMED:
            record.status = 200
            return web.Response(body=fault.body, content_type="application/json")
        headers = {}
        if fault.retry_after is not None:
            headers["retry-after"] = f"{fault.retry_after:g}"
        return self._error(
            record,
            fault.http_status,
            fault.error_type,
            fault.message,
            code=fault.error_code,
            headers=headers,
        )

    def _error(
        self,
        record: RequestRecord,
        status: int,
        error_type: str,
        message: str,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        record.status = status
        return web.json_response(
            error_json(message, error_type, code), status=status, headers=headers
        )

    async def _pause(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    def _next_scripted_step(self, task_key: str | None) -> Step | None:
        for queue in self._queues_for(task_key):
            if queue:
                return queue.popleft()
        return None

    def _queues_for(self, task_key: str | None) -> Iterator[deque[Step]]:
        """Exact key first, then task-id suffix matches, then the catch-all."""
        if task_key is not None:
            if task_key in self._scripts:
                yield self._scripts[task_key]
            for key, queue in self._scripts.items():
                if key not in (task_key, ANY_TASK) and _matches(task_key, key):
                    yield queue
        if ANY_TASK in self._scripts:
            yield self._scripts[ANY_TASK]


def _matches(task_key: str, key: str) -> bool:
    return task_key == key or task_key.endswith("/" + key)


def _parse_turn(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
