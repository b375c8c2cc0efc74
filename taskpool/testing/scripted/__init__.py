"""A scripted OpenAI-compatible model server for tests, benchmarks and the offline demo."""

from taskpool.testing.scripted.responder import (
    Responder,
    default_responder,
    default_result_for,
    numbered,
)
from taskpool.testing.scripted.server import (
    ANY_TASK,
    TASK_HEADER,
    TURN_HEADER,
    RequestRecord,
    ScriptedModelServer,
)
from taskpool.testing.scripted.steps import Fault, FaultKind, Reply, Step, ToolCallSpec

__all__ = [
    "ANY_TASK",
    "TASK_HEADER",
    "TURN_HEADER",
    "Fault",
    "FaultKind",
    "Reply",
    "RequestRecord",
    "Responder",
    "ScriptedModelServer",
    "Step",
    "ToolCallSpec",
    "default_responder",
    "default_result_for",
    "numbered",
]
