"""The scripted model server, driven by the real openai client over HTTP."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageFunctionToolCall

from taskpool.testing.scripted import (
    Fault,
    Reply,
    ScriptedModelServer,
    ToolCallSpec,
    default_result_for,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

LIFECYCLE_TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} for this task",
            "parameters": {"type": "object", "properties": {}},
        },
    }
    for name in ("start_task", "report_progress", "complete_task", "fail_task")
]

DOCUMENT = "The quick brown fox jumps over the lazy dog, twice, before breakfast."


@pytest.fixture
async def server() -> AsyncIterator[ScriptedModelServer]:
    async with ScriptedModelServer() as running:
        yield running


@pytest.fixture
async def client(server: ScriptedModelServer) -> AsyncIterator[openai.AsyncOpenAI]:
    llm = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=5.0)
    yield llm
    await llm.close()


def messages_for(text: str = DOCUMENT) -> list[Any]:
    return [
        {"role": "system", "content": "You summarise documents."},
        {"role": "user", "content": text},
    ]


async def ask(
    llm: openai.AsyncOpenAI,
    task_key: str,
    turn: int = 1,
    *,
    tools: bool = True,
    **kwargs: Any,
) -> Any:
    extra: dict[str, Any] = {"tools": LIFECYCLE_TOOLS} if tools else {}
    return await llm.chat.completions.create(
        model="test-model",
        messages=messages_for(),
        extra_headers={"X-Taskpool-Task": task_key, "X-Taskpool-Turn": str(turn)},
        **extra,
        **kwargs,
    )


def function_calls(completion: Any) -> list[tuple[str, dict[str, Any]]]:
    calls = completion.choices[0].message.tool_calls or []
    assert all(isinstance(c, ChatCompletionMessageFunctionToolCall) for c in calls)
    return [(c.function.name, json.loads(c.function.arguments)) for c in calls]


async def test_default_reply_finishes_the_task_in_one_response(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    completion = await ask(client, "batch-1/doc-1", turn=1)

    expected_result = "Summary of doc-1: The quick brown fox jumps over the lazy"
    assert function_calls(completion) == [
        ("start_task", {}),
        ("report_progress", {"percent": 50, "step": "summarising"}),
        ("complete_task", {"result": expected_result}),
    ]
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.role == "assistant"
    assert choice.message.content is None
    ids = [c.id for c in choice.message.tool_calls or []]
    assert len(set(ids)) == 3
    assert completion.model == "test-model"
    assert completion.object == "chat.completion"

    prompt_chars = sum(len(m["content"]) for m in messages_for())
    reply_chars = sum(len(c.function.arguments) for c in choice.message.tool_calls or [])
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == prompt_chars // 4
    assert completion.usage.completion_tokens == reply_chars // 4
    assert completion.usage.total_tokens == prompt_chars // 4 + reply_chars // 4

    [record] = server.requests
    assert (record.task_key, record.turn, record.status, record.scripted) == (
        "batch-1/doc-1",
        1,
        200,
        False,
    )
    assert record.body is not None
    assert record.body["messages"] == messages_for()
    assert record.responded_at is not None
    assert record.received_at <= record.responded_at
    assert [c.name for c in record.tool_calls] == ["start_task", "report_progress", "complete_task"]
    assert server.completions == {"batch-1/doc-1": [expected_result]}
    assert default_result_for("batch-1/doc-1", record.body) == expected_result


async def test_without_tools_the_default_replies_with_text(client: openai.AsyncOpenAI) -> None:
    completion = await ask(client, "batch-1/doc-2", tools=False)

    message = completion.choices[0].message
    assert message.tool_calls is None
    assert message.content == "Summary of doc-2: The quick brown fox jumps over the lazy"
    assert completion.choices[0].finish_reason == "stop"


async def test_default_does_not_start_a_task_twice(client: openai.AsyncOpenAI) -> None:
    started: list[Any] = [
        *messages_for(),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "start_task", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
    ]
    completion = await client.chat.completions.create(
        model="m", messages=started, tools=LIFECYCLE_TOOLS
    )

    assert [name for name, _ in function_calls(completion)] == ["report_progress", "complete_task"]


async def test_scripted_steps_are_consumed_in_order_then_the_default_answers(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.script(
        "doc-3",
        Reply(content="Let me think."),
        Reply(
            tool_calls=[ToolCallSpec("fail_task", {"reason": "unreadable"})],
            usage=(70, 30),
            finish_reason="length",
        ),
    )

    first = await ask(client, "batch-9/doc-3", turn=1)
    other = await ask(client, "batch-9/other-doc-3", turn=1)
    second = await ask(client, "batch-9/doc-3", turn=2)
    third = await ask(client, "batch-9/doc-3", turn=3)

    assert first.choices[0].message.content == "Let me think."
    assert first.choices[0].message.tool_calls is None
    assert first.choices[0].finish_reason == "stop"
    # A task whose id merely ends with the same letters is not scripted.
    assert function_calls(other)[-1][0] == "complete_task"
    assert function_calls(second) == [("fail_task", {"reason": "unreadable"})]
    assert second.choices[0].finish_reason == "length"
    assert second.usage is not None
    assert (second.usage.prompt_tokens, second.usage.completion_tokens) == (70, 30)
    assert function_calls(third)[-1][0] == "complete_task"

    assert server.pending() == 0
    assert [(r.turn, r.scripted) for r in server.records_for("doc-3")] == [
        (1, True),
        (2, True),
        (3, False),
    ]


async def test_custom_responder_replaces_the_default() -> None:
    def refuse(body: Mapping[str, Any], task_key: str | None) -> Reply:
        return Reply(tool_calls=[ToolCallSpec("fail_task", {"reason": f"no {task_key}"})])

    async with ScriptedModelServer(responder=refuse) as custom:
        llm = openai.AsyncOpenAI(base_url=custom.base_url, api_key="x", max_retries=0)
        try:
            completion = await ask(llm, "b/doc-4")
        finally:
            await llm.close()

    assert function_calls(completion) == [("fail_task", {"reason": "no b/doc-4"})]
    assert custom.completions == {}


async def test_rate_limit_raises_with_retry_after(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.script("doc-5", Fault.rate_limit(retry_after=1.5))

    with pytest.raises(openai.RateLimitError) as caught:
        await ask(client, "b/doc-5")

    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "1.5"
    assert caught.value.code == "rate_limit_exceeded"
    assert server.requests[-1].status == 429


async def test_server_error_raises_internal_server_error(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.script("doc-6", Fault.server_error(), Fault.server_error(status=503))

    with pytest.raises(openai.InternalServerError) as first:
        await ask(client, "b/doc-6")
    with pytest.raises(openai.InternalServerError) as second:
        await ask(client, "b/doc-6")

    assert (first.value.status_code, second.value.status_code) == (500, 503)
    assert [r.status for r in server.requests] == [500, 503]


async def test_status_fault_carries_the_error_code(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.script("doc-7", Fault.status(400, "context_length_exceeded", message="too long"))

    with pytest.raises(openai.BadRequestError) as caught:
        await ask(client, "b/doc-7")

    assert caught.value.code == "context_length_exceeded"
    assert "too long" in caught.value.message


async def test_hang_times_the_client_out(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.script("doc-8", Fault.hang(5.0))

    with pytest.raises(openai.APITimeoutError):
        await ask(client, "b/doc-8", timeout=0.3)

    # The server is still sitting on the request; stopping it (the fixture) ends the hang.
    assert server.in_flight == 1
    assert server.peak_concurrency == 1
    assert server.requests[-1].status is None


async def test_hang_closes_the_connection_after_its_time(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.script("doc-9", Fault.hang(0.2))

    with pytest.raises(openai.APIConnectionError) as caught:
        await ask(client, "b/doc-9")

    assert not isinstance(caught.value, openai.APITimeoutError)
    record = server.requests[-1]
    assert record.status is None
    assert record.duration is not None
    assert record.duration >= 0.2


async def test_malformed_body_breaks_the_clients_parser(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.script("doc-10", Fault.malformed())

    # The SDK lets the JSON error escape unwrapped; the LLM activity has to expect it.
    with pytest.raises(json.JSONDecodeError):
        await ask(client, "b/doc-10")

    assert server.requests[-1].status == 200


async def test_streaming_is_refused(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="does not stream"):
        await ask(client, "b/doc-11", stream=True)


async def test_models_lists_the_server_model(client: openai.AsyncOpenAI) -> None:
    page = await client.models.list()

    assert [m.id for m in page.data] == ["scripted-model"]


async def test_peak_concurrency_counts_requests_served_at_once(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.latency = 0.3
    server.script("doc-slow-fail", Fault.server_error(latency=0.3))

    async def one(task_id: str) -> None:
        try:
            await ask(client, f"b/{task_id}")
        except openai.InternalServerError:
            assert task_id == "doc-slow-fail"

    await asyncio.gather(*(one(f"doc-c{i}") for i in range(4)), one("doc-slow-fail"))

    assert server.peak_concurrency == 5
    assert server.total_requests == 5
    assert server.in_flight == 0
    assert all(r.duration is not None and r.duration >= 0.3 for r in server.requests)

    server.reset_stats()
    assert (server.peak_concurrency, server.total_requests, server.requests) == (0, 0, [])
    assert server.completions == {}


async def test_per_step_latency_overrides_the_default(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.latency = 5.0
    server.script("doc-12", Reply(content="quick", latency=0.0))

    completion = await ask(client, "b/doc-12", timeout=2.0)

    assert completion.choices[0].message.content == "quick"


async def test_runs_as_a_subprocess_until_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "taskpool.testing.scripted",
        "--port",
        "0",
        "--latency",
        "0.05",
        "--port-file",
        str(port_file),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=10)
        base_url = line.decode().strip()
        assert base_url == f"http://127.0.0.1:{port_file.read_text().strip()}/v1"

        llm = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=5.0)
        try:
            completion = await ask(llm, "b/doc-13")
        finally:
            await llm.close()
        assert function_calls(completion)[-1] == (
            "complete_task",
            {"result": "Summary of doc-13: The quick brown fox jumps over the lazy"},
        )

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
