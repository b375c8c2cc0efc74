"""Task kinds: the agent behind each kind of task (its instructions) and the lifecycle tools every
agent gets, bound to its one task.

Pure data, importable from workflow code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import JsonValue

from taskpool.domain.tasks import TaskSpec
from taskpool.domain.turns import ChatMessage, ToolCall, ToolSpec

START_TASK = "start_task"
REPORT_PROGRESS = "report_progress"
COMPLETE_TASK = "complete_task"
FAIL_TASK = "fail_task"

LIFECYCLE_TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name=START_TASK,
        description="Call once when you begin working on the task.",
        parameters={"type": "object", "properties": {}, "additionalProperties": False},
    ),
    ToolSpec(
        name=REPORT_PROGRESS,
        description="Report how far along the task is.",
        parameters={
            "type": "object",
            "properties": {
                "percent": {"type": "number", "minimum": 0, "maximum": 100},
                "step": {"type": "string", "description": "What you are doing now."},
            },
            "required": ["percent"],
            "additionalProperties": False,
        },
    ),
    ToolSpec(
        name=COMPLETE_TASK,
        description="Finish the task with its result. This ends your work on the task.",
        parameters={
            "type": "object",
            "properties": {
                "result": {
                    "description": "The task's result: text, or an object for structured output.",
                    "anyOf": [{"type": "string"}, {"type": "object"}],
                }
            },
            "required": ["result"],
            "additionalProperties": False,
        },
    ),
    ToolSpec(
        name=FAIL_TASK,
        description="Give up on the task when it cannot be done, saying why.",
        parameters={
            "type": "object",
            "properties": {"reason": {"type": "string"}},
            "required": ["reason"],
            "additionalProperties": False,
        },
    ),
)

# The arguments the task workflow reads of each tool's calls; it is given no others.
_ARGUMENTS_READ: dict[str, tuple[str, ...]] = {
    START_TASK: (),
    REPORT_PROGRESS: ("percent", "step"),
    COMPLETE_TASK: (),
    FAIL_TASK: ("reason",),
}
# What the workflow keeps of a string argument: enough for the message of a store event.
MAX_ARGUMENT_CHARS = 1000


def given_result(call: ToolCall) -> JsonValue:
    """The result a complete_task call gives; None when it gives none (missing, null or empty)."""
    if call.name != COMPLETE_TASK or call.arguments_error:
        return None
    result: JsonValue = call.arguments.get("result")
    return None if result is None or result == "" else result


def for_workflow(call: ToolCall) -> ToolCall:
    """A tool call as the task workflow receives it: only the arguments it reads, as short
    scalars, and for complete_task whether a result was given instead of the result (which the
    store keeps under the turn, so no history holds it)."""
    arguments = {
        name: _short(call.arguments[name])
        for name in _ARGUMENTS_READ.get(call.name, ())
        if name in call.arguments and _is_scalar(call.arguments[name])
    }
    return call.model_copy(
        update={"arguments": arguments, "has_result": given_result(call) is not None}
    )


def _is_scalar(value: Any) -> bool:
    # The workflow reads numbers and text; anything else it would treat as missing anyway.
    return value is None or isinstance(value, str | int | float | bool)


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_ARGUMENT_CHARS:
        return value[: MAX_ARGUMENT_CHARS - 1] + "…"
    return value


_LIFECYCLE_GUIDE = (
    "You work on exactly one task and drive its lifecycle with your tools: call start_task when "
    "you begin, report_progress as you go if the work has steps, then complete_task with the "
    "result, or fail_task with a reason if the task cannot be done. You may call several tools in "
    "one reply. Your work on the task ends only with complete_task or fail_task."
)


@dataclass(frozen=True)
class AgentKind:
    name: str
    instructions: str
    description: str

    def system_prompt(self) -> str:
        return f"{self.instructions}\n\n{_LIFECYCLE_GUIDE}"


KINDS: dict[str, AgentKind] = {
    kind.name: kind
    for kind in (
        AgentKind(
            name="summarize",
            description="Summarise a text in two or three sentences.",
            instructions=(
                "You summarise documents. The result is a faithful summary of the input in two or "
                "three plain sentences."
            ),
        ),
        AgentKind(
            name="classify",
            description="Classify a text; the input may list the allowed labels.",
            instructions=(
                "You classify texts. If the input lists allowed labels, the result is exactly one "
                'of them; the result is an object {"label": ..., "confidence": 0..1}.'
            ),
        ),
        AgentKind(
            name="extract",
            description="Extract fields from a text; the input may name the fields.",
            instructions=(
                "You extract structured fields from documents. The result is a JSON object with "
                "the requested fields; use null for a field the document does not contain."
            ),
        ),
        AgentKind(
            name="generic",
            description="Do what the input asks.",
            instructions="You carry out the instruction given in the input.",
        ),
    )
}

NUDGE = (
    "You have not finished the task. Call complete_task with the result now, or fail_task with "
    "the reason it cannot be done."
)


def first_messages(spec: TaskSpec) -> list[ChatMessage]:
    kind = KINDS[spec.kind]
    body = spec.input if isinstance(spec.input, str) else json.dumps(spec.input, indent=2)
    return [
        ChatMessage(role="system", content=kind.system_prompt()),
        ChatMessage(
            role="user", content=f"Task id: {spec.id}\nTask: {spec.display_label}\n\n{body}"
        ),
    ]


def rework_message(previous_result: JsonValue, feedback: str) -> ChatMessage:
    """What the model of an attempt that redoes a result sent back from review is told."""
    if previous_result is None:
        shown = "(not kept)"
    elif isinstance(previous_result, str):
        shown = previous_result
    else:
        shown = json.dumps(previous_result, indent=2)
    return ChatMessage(
        role="user",
        content=(
            f"An earlier attempt completed this task with the result below, and the reviewer "
            f"sent it back.\n\nEarlier result:\n{shown}\n\nReviewer's feedback:\n{feedback}\n\n"
            "Do the task again with the feedback in mind, and call complete_task with the new "
            "result."
        ),
    )
