"""The model activity: one turn of a task's agent.

The turn names its task: the activity writes the attempt's due store write first, rebuilds the
conversation from the store (the definition, then the attempt's earlier turns as stored), calls
the model, and keeps the reply in the store under the task, attempt and turn. It returns only what
the workflow needs to decide (docs/design.md, "One way per turn"): the tool calls without a
complete_task's result, usage, finish reason and model. So no history holds a task's input or a
model's output, and the workflow decides every transition itself.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import openai
import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.llm.calls import ModelCaller
from activities.llm.conversation import RequestBuilder, ToolMode, conversation_for
from taskpool.domain import agents, names
from taskpool.domain.turns import TaskConversation, TurnRecord, TurnReply, TurnRequest
from taskpool.infra.ratelimit import DEFAULT_COMPLETION_ALLOWANCE, TokenBudget
from taskpool.infra.store import TaskStore

log = structlog.get_logger(__name__)


class LlmActivities:
    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        store: TaskStore,
        default_model: str,
        tool_mode: ToolMode = "native",
        heartbeat_every: float = 2.0,
        budget: TokenBudget | None = None,
        completion_allowance: int = DEFAULT_COMPLETION_ALLOWANCE,
        temperature: float | None = None,
        json_max_string_length: int | None = None,
        local_turns_refused_because: str | None = None,
    ) -> None:
        self._store = store
        self._default_model = default_model
        self._local_turns_refused_because = local_turns_refused_because
        self._builder = RequestBuilder(tool_mode, temperature, json_max_string_length)
        self._caller = ModelCaller(
            client,
            heartbeat_every=heartbeat_every,
            budget=budget,
            completion_allowance=completion_allowance,
        )

    @activity.defn(name=names.CHAT_TURN)
    async def chat_turn(self, request: TurnRequest) -> TurnReply:
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
        try:
            reply = await self._turn(request, model)
        finally:
            structlog.contextvars.unbind_contextvars("task_key", "turn", "attempt", "model")
        log.info(
            "llm turn done",
            task_key=request.task_key,
            turn=request.turn,
            seconds=round(time.monotonic() - started, 3),
            tool_calls=[call.name for call in reply.tool_calls],
            tokens=reply.usage.total_tokens,
        )
        return reply

    async def _turn(self, request: TurnRequest, model: str) -> TurnReply:
        stored = await self._conversation(request)
        body = self._builder.body(conversation_for(stored, request), model)
        completion = await self._caller.complete(
            body,
            task_key=request.task_key,
            turn=request.turn,
            timeout_seconds=request.timeout_seconds,
        )
        reply = self._builder.read(completion, request.turn, model)
        # A retried turn replaces what an earlier try kept, so each turn has one reply.
        await self._store.save_turn(
            TurnRecord(
                batch_id=request.batch_id,
                task_id=request.task_id,
                attempt=request.attempt,
                turn=request.turn,
                messages=[*request.follow_ups, reply.message],
                result=reply.given_result(),
                at=datetime.now(UTC),
            )
        )
        return TurnReply(
            tool_calls=[agents.for_workflow(call) for call in reply.message.tool_calls],
            has_content=bool(reply.message.content),
            finish_reason=reply.finish_reason,
            usage=reply.usage,
            model=reply.model,
        )

    async def _conversation(self, request: TurnRequest) -> TaskConversation:
        # The due write is idempotent, and skipped by the store if the attempt has moved on.
        stored = await self._store.conversation(
            request.batch_id,
            request.task_id,
            request.attempt,
            before_turn=request.turn,
            after_applying=request.record,
        )
        if stored is None:
            raise ApplicationError(
                f"task {request.task_id!r} of batch {request.batch_id} is not in the task store "
                "(is the worker using the store the batch was started with?)",
                type=names.DEFINITION_MISSING,
                non_retryable=True,
            )
        return stored
