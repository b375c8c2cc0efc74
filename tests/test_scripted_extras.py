"""The scripted server's aids for tests that must not race a clock: replies held until released,
and results numbered per call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from taskpool.testing.scripted import Fault, Reply, ScriptedModelServer, numbered
from tests.support import eventually

TOOLS: list[Any] = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("start_task", "complete_task")
]


@pytest.fixture
async def server() -> AsyncIterator[ScriptedModelServer]:
    async with ScriptedModelServer(responder=numbered()) as running:
        yield running


@pytest.fixture
async def llm(server: ScriptedModelServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=10)
    yield client
    await client.close()


async def ask(llm: openai.AsyncOpenAI, task_key: str) -> Any:
    return await llm.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "Summarise this."}],
        tools=TOOLS,
        extra_headers={"X-Taskpool-Task": task_key},
    )


async def test_held_replies_wait_for_the_release_and_faults_do_not(
    server: ScriptedModelServer, llm: openai.AsyncOpenAI
) -> None:
    server.hold_replies()
    server.script("b/fails", Fault.server_error())
    waiting = [asyncio.create_task(ask(llm, f"b/doc-{i}")) for i in range(3)]

    async def all_in_flight() -> None:
        assert server.in_flight == 3

    await eventually(all_in_flight)
    with pytest.raises(openai.InternalServerError):
        await ask(llm, "b/fails")
    assert not any(task.done() for task in waiting)

    server.release_replies()
    answers = await asyncio.wait_for(asyncio.gather(*waiting), timeout=10)
    assert [a.choices[0].finish_reason for a in answers] == ["tool_calls"] * 3
    assert server.in_flight == 0


async def test_a_stop_lets_held_replies_go(server: ScriptedModelServer) -> None:
    server.hold_replies()
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=10)
    try:
        waiting = asyncio.create_task(ask(client, "b/doc-1"))

        async def held() -> None:
            assert server.in_flight == 1

        await eventually(held)
        # A server stopping lets held replies go (they are answered, not cut off at its
        # shutdown timeout).
        await asyncio.wait_for(server.stop(), timeout=5)
        answer = await asyncio.wait_for(waiting, timeout=5)
        assert answer.choices[0].finish_reason == "tool_calls"
    finally:
        await client.close()


async def test_numbered_results_differ_per_call_and_keep_everything_else(
    server: ScriptedModelServer, llm: openai.AsyncOpenAI
) -> None:
    server.script("b/scripted", Reply(content="as scripted"))
    first, second, scripted = [await ask(llm, key) for key in ("b/doc", "b/doc", "b/scripted")]

    one, two = server.completions["b/doc"]
    assert one.endswith(" #1")
    assert two.endswith(" #2")
    assert one.removesuffix(" #1") == two.removesuffix(" #2")
    for answer in (first, second):
        assert [call.function.name for call in answer.choices[0].message.tool_calls] == [
            "start_task",
            "complete_task",
        ]
    # Scripted steps are sent as written.
    assert scripted.choices[0].message.content == "as scripted"
