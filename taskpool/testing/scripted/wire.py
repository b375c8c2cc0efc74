"""OpenAI chat-completion JSON: the success body, the error body, and a token estimate."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from taskpool.testing.scripted.responder import message_text
from taskpool.testing.scripted.steps import Reply

CHARS_PER_TOKEN = 4


def estimate_usage(body: Mapping[str, Any], reply: Reply) -> tuple[int, int]:
    """(prompt, completion) tokens as characters // 4, at least 1 each."""
    messages = body.get("messages")
    prompt_chars = sum(_message_chars(m) for m in (messages if isinstance(messages, list) else []))
    completion_chars = len(reply.content or "") + sum(
        len(call.arguments_json()) for call in reply.tool_calls
    )
    return (
        max(1, prompt_chars // CHARS_PER_TOKEN),
        max(1, completion_chars // CHARS_PER_TOKEN),
    )


def completion_json(
    *, completion_id: str, model: str, reply: Reply, usage: tuple[int, int]
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": f"call_{completion_id}_{index}",
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json()},
            }
            for index, call in enumerate(reply.tool_calls)
        ]
    prompt_tokens, completion_tokens = usage
    return {
        "id": f"chatcmpl-{completion_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": reply.effective_finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def error_json(message: str, error_type: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def _message_chars(message: Any) -> int:
    if not isinstance(message, Mapping):
        return 0
    chars = len(message_text(message))
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            chars += len(str(function.get("name", ""))) + len(str(function.get("arguments", "")))
    return chars
