"""The LLM activity: one chat-completion turn against an OpenAI-compatible endpoint.

A task's turn names the task instead of carrying its opening messages and tools: the activity reads
the definition from the task store and builds them, so a task needs no separate step (and no extra
workflow round) to load its definition, and its history does not repeat the input on every turn.

The client is built once per worker with `max_retries=0`: Temporal owns retries, so every attempt
is in the workflow's history. Provider errors become retryable or non-retryable ApplicationErrors,
with the provider's own retry delay when it gives one.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import openai
import structlog
from openai.types.chat import ChatCompletion
from taskpool.infra.store.common import UnknownTaskError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from taskpool.domain import agents, names
from taskpool.domain.ledger import TaskLedger, turn_event_prefix
from taskpool.domain.tasks import TokenUsage
from taskpool.domain.turns import (
    ChatMessage,
    ChatTurnRequest,
    ChatTurnResult,
    DefinitionRef,
    RecordedTurn,
    ToolCall,
    TurnLifecycle,
)
from taskpool.infra.ratelimit import (
    DEFAULT_COMPLETION_ALLOWANCE,
    BudgetWaitTimeout,
    TokenBudget,
    estimate_tokens,
    spending,
)
from taskpool.infra.store import TaskStore
from taskpool.infra.tool_emulation import (
    emulated_messages,
    emulation_instructions,
    parse_emulated_reply,
    response_format_for,
)

log = structlog.get_logger(__name__)

ToolMode = Literal["native", "json"]

# Statuses a later attempt may get past: rate limits, timeouts, conflicts and server trouble.
RETRYABLE_STATUSES = frozenset({408, 409, 429})
NON_RETRYABLE_CODES = frozenset({"context_length_exceeded", "content_filter", "invalid_api_key"})
# Waiting for the token budget stops while this much of the attempt's start-to-close time is
# left for the call (less when the call's own timeout is shorter), plus a margin, so an attempt
# ends with a clear error of its own rather than Temporal's timeout.
MIN_CALL_SECONDS = 30.0
ATTEMPT_MARGIN_SECONDS = 5.0


class LlmActivities:
    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        default_model: str,
        tool_mode: ToolMode = "native",
        heartbeat_every: float = 2.0,
        budget: TokenBudget | None = None,
        completion_allowance: int = DEFAULT_COMPLETION_ALLOWANCE,
        temperature: float | None = None,
        json_max_string_length: int | None = None,
        store: TaskStore | None = None,
        local_turns_refused_because: str | None = None,
    ) -> None:
        self._client = client
        self._local_turns_refused_because = local_turns_refused_because
        self._store = store
        self._temperature = temperature
        self._json_max_string_length = json_max_string_length
        self._default_model = default_model
        self._tool_mode = tool_mode
        self._heartbeat_every = heartbeat_every
        self._budget = budget
        self._completion_allowance = completion_allowance

    @activity.defn(name=names.CHAT_TURN)
    async def chat_turn(self, request: ChatTurnRequest) -> ChatTurnResult:
        info = activity.info()
        if info.is_local and self._local_turns_refused_because is not None:
            raise ApplicationError(
                f"this worker does not run model calls as local activities: "
                f"{self._local_turns_refused_because}",
                type=names.LOCAL_TURN_REFUSED,
                non_retryable=True,
            )
        model = request.model or self._default_model
        structlog.contextvars.bind_contextvars(
            task_key=request.task_key, turn=request.turn, attempt=info.attempt, model=model
        )
        started = time.monotonic()
        if request.definition is not None:
            request = await self._task_turn(request, request.definition)
        try:
            # Waiting for the token budget happens in here too: it heartbeats all the while.
            async with self._heartbeating():
                completion = await self._call_model(request, model)
        except BudgetWaitTimeout as err:
            raise ApplicationError(
                f"{err}; lower the batch's concurrency or raise TASKPOOL_TPM", type="token_budget"
            ) from err
        except openai.APIError as err:
            raise provider_error(err) from err
        except ValueError as err:
            # The client raises the JSON decoder's error for a reply body that is not JSON.
            raise ApplicationError(
                f"unreadable reply from the model: {err}", type="bad_reply"
            ) from err
        finally:
            structlog.contextvars.unbind_contextvars("task_key", "turn", "attempt", "model")
        result = self._to_result(completion, request, model)
        if request.definition is not None and request.lifecycle is not None:
            result = await self._record_turn(
                request.definition, request.lifecycle, request.turn, result
            )
        log.info(
            "llm turn done",
            task_key=request.task_key,
            turn=request.turn,
            seconds=round(time.monotonic() - started, 3),
            tool_calls=[call.name for call in result.tool_calls],
            tokens=result.usage.total_tokens,
        )
        return result

    async def _record_turn(
        self, where: DefinitionRef, lifecycle: TurnLifecycle, turn: int, result: ChatTurnResult
    ) -> ChatTurnResult:
        """Apply the reply's lifecycle tool calls to the attempt and record them in the store.

        Doing it here, not in a store write of the workflow's own after the turn, saves every task
        a local activity and a round of its workflow task. The code is the workflow's
        (TaskLedger), so the outcome is the same; only event times come from this clock.
        """
        prefix = turn_event_prefix(lifecycle.attempt, turn)
        ledger = TaskLedger(
            where.batch_id,
            where.task_id,
            lifecycle.attempt,
            lifecycle.state.model_copy(deep=True),
            clock=lambda: datetime.now(UTC),
            event_prefix=prefix,
            unrecorded=lifecycle.unrecorded.model_copy(deep=True),
            review=lifecycle.review,
        )
        ledger.count_call(result.usage)
        replies = ledger.apply_calls(result.tool_calls)
        update = ledger.take_update()
        update.replaces_events = prefix
        update.only_if_current = True
        try:
            # A turn with a definition has a store: the definition was read from it.
            await self._require_store().apply([update])
        except UnknownTaskError as err:
            # The definition was read from this store moments ago; a task gone since then has
            # nobody left to record it for.
            activity.logger.warning("Store write skipped: %s", err)
        return result.model_copy(
            update={"recorded": RecordedTurn(state=ledger.state, tool_replies=replies)}
        )

    async def _task_turn(self, request: ChatTurnRequest, where: DefinitionRef) -> ChatTurnRequest:
        opening = await self._opening_messages(where, request.rework_feedback)
        return request.model_copy(
            update={
                "messages": [*opening, *request.messages],
                "tools": list(agents.LIFECYCLE_TOOLS),
                "emulation_example": agents.COMPLETE_TASK,
            }
        )

    def _require_store(self) -> TaskStore:
        if self._store is None:
            raise ApplicationError(
                "this worker has no task store, and a task's turn needs one",
                type=names.DEFINITION_MISSING,
                non_retryable=True,
            )
        return self._store

    async def _opening_messages(
        self, where: DefinitionRef, rework_feedback: str | None
    ) -> list[ChatMessage]:
        record = await self._require_store().get_task(where.batch_id, where.task_id)
        if record is None:
            raise ApplicationError(
                f"task {where.task_id!r} of batch {where.batch_id} is not in the task store "
                "(is the worker using the store the batch was started with?)",
                type=names.DEFINITION_MISSING,
                non_retryable=True,
            )
        opening = agents.first_messages(record.definition())
        if rework_feedback is not None:
            # The store keeps the result that was sent back until this attempt replaces it.
            opening.append(agents.rework_message(record.result, rework_feedback))
        return opening

    async def _call_model(self, request: ChatTurnRequest, model: str) -> Any:
        arguments = self._request_arguments(request, model)
        if self._budget is None:
            return await self._create(arguments, request, request.timeout_seconds)
        started = time.monotonic()
        estimate = estimate_tokens(arguments, self._completion_allowance)
        limit = activity.info().start_to_close_timeout
        attempt_seconds = None if limit is None else limit.total_seconds() - ATTEMPT_MARGIN_SECONDS
        wait_limit = None
        if attempt_seconds is not None:
            wait_limit = attempt_seconds - min(request.timeout_seconds, MIN_CALL_SECONDS)
        async with spending(self._budget, model, estimate, wait_limit=wait_limit) as charge:
            timeout = request.timeout_seconds
            if attempt_seconds is not None:
                left = attempt_seconds - (time.monotonic() - started)
                timeout = max(min(timeout, left), 1.0)
            completion = await self._create(arguments, request, timeout)
            usage = getattr(completion, "usage", None)
            total = getattr(usage, "total_tokens", None)
            charge.tokens = total if isinstance(total, int) else estimate
            return completion

    async def _create(
        self, arguments: dict[str, Any], request: ChatTurnRequest, seconds: float
    ) -> ChatCompletion:
        # The client's own request method, not chat.completions.create: `create` walks every
        # message through the SDK's typed-parameter transform (aliases, file encodings), which
        # these bodies never need since they are built as the API's JSON here. That walk cost
        # about 1.5 ms of CPU per call, a twentieth of a task's worker time (bench/NOTES-
        # throughput.md). Errors, retries, timeouts and the typed reply are the same.
        return await self._client.post(
            "/chat/completions",
            body=arguments,
            cast_to=ChatCompletion,
            options={
                "timeout": seconds,
                "headers": {
                    "X-Taskpool-Task": request.task_key,
                    "X-Taskpool-Turn": str(request.turn),
                },
            },
        )

    def _request_arguments(self, request: ChatTurnRequest, model: str) -> dict[str, Any]:
        arguments = self._base_arguments(request, model)
        if not request.tools:
            return arguments
        if self._tool_mode == "native":
            tools = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in request.tools
            ]
            return {**arguments, "tools": tools}
        # Models without tool calling answer in a JSON shape that lists the calls; earlier
        # calls and tool replies go back to them as plain text.
        instructions = emulation_instructions(
            request.tools, example=request.emulation_example or ()
        )
        messages = emulated_messages(request.messages)
        for message in messages:
            if message["role"] == "system":
                message["content"] = f"{message['content']}\n\n{instructions}"
                break
        else:
            messages.insert(0, {"role": "system", "content": instructions})
        return {
            **arguments,
            "messages": messages,
            "response_format": response_format_for(
                request.tools, max_string_length=self._json_max_string_length
            ),
        }

    def _base_arguments(self, request: ChatTurnRequest, model: str) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "model": model,
            "messages": [_to_openai_message(m) for m in request.messages],
        }
        if self._temperature is not None:
            arguments["temperature"] = self._temperature
        return arguments

    def _to_result(self, completion: Any, request: ChatTurnRequest, model: str) -> ChatTurnResult:
        if not completion.choices:
            raise ApplicationError("the model returned no choices", type="bad_reply")
        choice = completion.choices[0]
        message = choice.message
        usage = TokenUsage()
        if completion.usage is not None:
            usage = TokenUsage(
                prompt_tokens=completion.usage.prompt_tokens or 0,
                completion_tokens=completion.usage.completion_tokens or 0,
            )
        if choice.finish_reason == "content_filter":
            raise ApplicationError(
                "the provider's content filter stopped the reply",
                type="content_filter",
                non_retryable=True,
            )
        prefix = f"t{request.turn}"
        if self._tool_mode == "json" and request.tools:
            calls = parse_emulated_reply(message.content or "", request.tools, prefix)
            content = None if calls else message.content
        else:
            calls = [
                _tool_call(call, f"{prefix}-{n}") for n, call in enumerate(message.tool_calls or [])
            ]
            content = message.content
        return ChatTurnResult(
            content=content,
            tool_calls=calls,
            finish_reason=choice.finish_reason,
            usage=usage,
            model=completion.model or model,
        )

    @contextlib.asynccontextmanager
    async def _heartbeating(self) -> AsyncIterator[None]:
        """Heartbeat while the model thinks, so a lost worker is noticed within the heartbeat
        timeout and a cancelled task stops waiting."""

        info = activity.info()
        if info.is_local:
            # A local activity has no heartbeats: the SDK keeps the workflow task that runs it
            # alive instead.
            yield
            return
        timeout = info.heartbeat_timeout
        every = self._heartbeat_every
        if timeout is not None:
            every = min(every, timeout.total_seconds() / 4)

        async def beat() -> None:
            # The activity's start counts as its first sign of life, and a heartbeat is a write on
            # the server: a call that returns within `every` sends none.
            while True:
                await asyncio.sleep(every)
                activity.heartbeat()

        beating = asyncio.create_task(beat())
        try:
            yield
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating


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


def retry_after(headers: Any) -> timedelta | None:
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


def _to_openai_message(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _tool_call(call: Any, fallback_id: str) -> ToolCall:
    function = getattr(call, "function", None)
    name = getattr(function, "name", None) or "unknown"
    raw = getattr(function, "arguments", None) or "{}"
    call_id = getattr(call, "id", None) or fallback_id
    try:
        arguments = json.loads(raw)
    except json.JSONDecodeError as err:
        return ToolCall(id=call_id, name=name, arguments_error=f"not JSON ({err.msg})")
    if not isinstance(arguments, dict):
        return ToolCall(id=call_id, name=name, arguments_error="not a JSON object")
    return ToolCall(id=call_id, name=name, arguments=arguments)
