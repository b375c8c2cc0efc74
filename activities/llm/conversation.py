"""A task's turn as the model sees it: the conversation rebuilt from the task store, the request
body (native tools, or tools emulated in JSON for models without them), and the reply read back.

Pure functions and a small builder: no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from openai.types.chat import ChatCompletion
from openai.types.chat.chat_completion_message_tool_call import ChatCompletionMessageToolCallUnion
from pydantic import JsonValue
from temporalio.exceptions import ApplicationError

from taskpool.domain import agents
from taskpool.domain.tasks import TokenUsage
from taskpool.domain.turns import ChatMessage, TaskConversation, ToolCall, TurnRequest
from taskpool.infra.tool_emulation import (
    emulated_messages,
    emulation_instructions,
    parse_emulated_reply,
    response_format_for,
)

ToolMode = Literal["native", "json"]


def conversation_for(stored: TaskConversation, request: TurnRequest) -> list[ChatMessage]:
    """The messages of the turn: the opening built from the task's definition (and a result sent
    back from review), each earlier turn of the attempt as stored, then the follow-ups the
    workflow sends with this turn."""
    record = stored.record
    messages = agents.first_messages(record.definition())
    if request.rework_feedback is not None:
        # The store keeps the result that was sent back until this attempt replaces it.
        messages.append(agents.rework_message(record.result, request.rework_feedback))
    for turn in stored.turns:
        messages.extend(turn.messages)
    messages.extend(request.follow_ups)
    return messages


@dataclass(frozen=True)
class ModelReply:
    """The model's answer as the activity reads it: the assistant message to store, and what the
    workflow is told about it."""

    message: ChatMessage
    finish_reason: str | None
    usage: TokenUsage
    model: str

    def given_result(self) -> JsonValue:
        """The result of the reply's first complete_task call that gives one: the call the
        workflow's ledger applies, if it applies any."""
        for call in self.message.tool_calls:
            result = agents.given_result(call)
            if result is not None:
                return result
        return None


@dataclass(frozen=True)
class RequestBuilder:
    """The worker's way of asking its model: tool mode, temperature, JSON string caps."""

    tool_mode: ToolMode = "native"
    temperature: float | None = None
    json_max_string_length: int | None = None

    def body(self, messages: list[ChatMessage], model: str) -> dict[str, Any]:
        """The request body, as the chat-completions API takes it, with the lifecycle tools."""
        body: dict[str, Any] = {"model": model}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        tools = agents.LIFECYCLE_TOOLS
        if self.tool_mode == "native":
            body["messages"] = [_to_openai_message(m) for m in messages]
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in tools
            ]
            return body
        # Models without tool calling answer in a JSON shape that lists the calls; earlier calls
        # and tool replies go back to them as plain text. Small models copy a sample reply far
        # more reliably than they follow prose, so the instructions show a complete_task call.
        instructions = emulation_instructions(tools, example=agents.COMPLETE_TASK)
        rendered = emulated_messages(messages)
        for message in rendered:
            if message["role"] == "system":
                message["content"] = f"{message['content']}\n\n{instructions}"
                break
        else:
            rendered.insert(0, {"role": "system", "content": instructions})
        body["messages"] = rendered
        body["response_format"] = response_format_for(
            tools, max_string_length=self.json_max_string_length
        )
        return body

    def read(self, completion: ChatCompletion, turn: int, model: str) -> ModelReply:
        """The reply in `completion`, or an ApplicationError when there is none to use."""
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
        prefix = f"t{turn}"
        if self.tool_mode == "json":
            calls = parse_emulated_reply(message.content or "", agents.LIFECYCLE_TOOLS, prefix)
            content = None if calls else message.content
        else:
            calls = [
                _tool_call(call, f"{prefix}-{n}") for n, call in enumerate(message.tool_calls or [])
            ]
            content = message.content
        return ModelReply(
            message=ChatMessage(role="assistant", content=content, tool_calls=calls),
            finish_reason=choice.finish_reason,
            usage=usage,
            model=completion.model or model,
        )


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


def _tool_call(call: ChatCompletionMessageToolCallUnion, fallback_id: str) -> ToolCall:
    # The client builds replies without validating them: a field may be missing or None.
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
