"""The agent's four tools as tests declare them, for the tests of tool emulation and of the local
model that reads the emulated instructions."""

from __future__ import annotations

from taskpool.domain.turns import ToolSpec

AGENT_TOOLS = [
    ToolSpec(
        name="start_task",
        description="Mark the task as started.",
        parameters={"type": "object", "properties": {}},
    ),
    ToolSpec(
        name="report_progress",
        description="Report how far the task is.",
        parameters={
            "type": "object",
            "properties": {"percent": {"type": "number"}, "step": {"type": "string"}},
            "required": ["percent", "step"],
        },
    ),
    ToolSpec(
        name="complete_task",
        description="Finish the task with its result.",
        parameters={
            "type": "object",
            "properties": {"result": {"anyOf": [{"type": "string"}, {"type": "object"}]}},
            "required": ["result"],
        },
    ),
    ToolSpec(
        name="fail_task",
        description="Give up on the task, saying why.",
        parameters={
            "type": "object",
            "properties": {"reason": {"type": "string"}},
            "required": ["reason"],
        },
    ),
]
