"""The default responder: a well-behaved agent that finishes its task in one response."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping
from typing import Any

from taskpool.testing.scripted.steps import Fault, Reply, ToolCallSpec

# Takes the parsed request body and the task key (None without an X-Taskpool-Task header).
Responder = Callable[[Mapping[str, Any], str | None], Reply | Fault]

RESULT_WORDS = 8


def task_id_of(task_key: str | None) -> str:
    if not task_key:
        return "unknown-task"
    return task_key.rsplit("/", 1)[-1]


def message_text(message: Mapping[str, Any]) -> str:
    """The text of one message, whether `content` is a string or a list of content parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


def default_result_for(task_key: str | None, body: Mapping[str, Any]) -> str:
    """The result the default responder completes a task with, for tests to compare against."""
    last_user = next(
        (
            message_text(m)
            for m in reversed(_messages(body))
            if isinstance(m, Mapping) and m.get("role") == "user"
        ),
        "",
    )
    words = " ".join(last_user.split()[:RESULT_WORDS])
    return f"Summary of {task_id_of(task_key)}: {words}"


def default_responder(body: Mapping[str, Any], task_key: str | None) -> Reply:
    """Start, report 50 %, complete: all in one response, using only the tools offered.

    `start_task` is left out once the conversation shows it was called, so a task whose earlier
    turns were scripted can still be finished by the default.
    """
    result = default_result_for(task_key, body)
    offered = _offered_tools(body)
    calls: list[ToolCallSpec] = []
    if "start_task" in offered and "start_task" not in _called_tools(body):
        calls.append(ToolCallSpec("start_task", {}))
    if "report_progress" in offered:
        calls.append(ToolCallSpec("report_progress", {"percent": 50, "step": "summarising"}))
    if "complete_task" in offered:
        calls.append(ToolCallSpec("complete_task", {"result": result}))
    if not calls:
        return Reply(content=result)
    return Reply(tool_calls=calls)


def numbered(responder: Responder = default_responder) -> Responder:
    """`responder`, with each `complete_task` result it gives ending in " #<n>", n counting its
    calls from 1: every call's result differs, so a test can tell which call's result a task
    kept, and a result kept twice or lost shows."""
    calls = itertools.count(1)

    def respond(body: Mapping[str, Any], task_key: str | None) -> Reply | Fault:
        step = responder(body, task_key)
        if isinstance(step, Fault):
            return step
        number = next(calls)
        tool_calls = [_numbered_call(call, number) for call in step.tool_calls]
        return dataclasses.replace(step, tool_calls=tool_calls)

    return respond


def _numbered_call(call: ToolCallSpec, number: int) -> ToolCallSpec:
    if call.name != "complete_task" or call.raw_arguments is not None:
        return call
    arguments = dict(call.arguments)
    arguments["result"] = f"{arguments.get('result')} #{number}"
    return dataclasses.replace(call, arguments=arguments)


def _messages(body: Mapping[str, Any]) -> list[Any]:
    messages = body.get("messages")
    return messages if isinstance(messages, list) else []


def _offered_tools(body: Mapping[str, Any]) -> set[str]:
    tools = body.get("tools")
    if not isinstance(tools, list):
        return set()
    names: set[str] = set()
    for tool in tools:
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return names


def _called_tools(body: Mapping[str, Any]) -> set[str]:
    names: set[str] = set()
    for message in _messages(body):
        calls = message.get("tool_calls") if isinstance(message, Mapping) else None
        for call in calls if isinstance(calls, list) else []:
            function = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(function, Mapping) and isinstance(function.get("name"), str):
                names.add(function["name"])
    return names
