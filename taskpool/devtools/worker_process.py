"""A `worker.py` process for the demo, started as a user would start one.

The demo runs the production worker rather than a copy of its wiring: the same entry point, the
same environment variables, its own process (so the live view in the demo's terminal never
competes with the worker for the GIL). It is ready once it polls its task queue.
"""

from __future__ import annotations

import asyncio
import atexit
import subprocess
import sys
import time
from pathlib import Path

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from taskpool.devtools.processes import Startable, spawn_in_group, terminate_group
from taskpool.infra.settings import Settings

_LOG_TAIL_CHARS = 3000


class WorkerProcessError(RuntimeError):
    pass


class WorkerProcess(Startable):
    """`python -m worker` with `settings` as its environment, its output appended to `log_file`."""

    def __init__(
        self,
        client: Client,
        settings: Settings,
        *,
        temporal_address: str,
        log_file: Path,
        base_env: dict[str, str],
        startup_timeout: float = 60.0,
    ) -> None:
        self._client = client
        self._settings = settings
        self._env = {
            **base_env,
            **settings.to_env(),
            "TEMPORAL_ADDRESS": temporal_address,
            "TEMPORAL_NAMESPACE": client.namespace,
            # Logs go to a file: JSON, whatever the terminal.
            "TASKPOOL_LOG_FORMAT": "json",
        }
        self._log_file = log_file
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with self._log_file.open("ab") as log:
            self._proc = spawn_in_group([sys.executable, "-m", "worker"], log, env=self._env)
        atexit.register(self._kill_now)
        try:
            await self._wait_polling()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        proc = self._proc
        if proc is not None:
            # The worker finishes what it holds on SIGTERM; a demo's tasks are short.
            await asyncio.to_thread(terminate_group, proc, 15.0)
            atexit.unregister(self._kill_now)
            self._proc = None

    def _kill_now(self) -> None:
        if self._proc is not None:
            terminate_group(self._proc, 3.0)
            self._proc = None

    async def _wait_polling(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        request = DescribeTaskQueueRequest(
            namespace=self._client.namespace,
            task_queue=TaskQueue(name=self._settings.task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise WorkerProcessError(
                    f"the worker exited with status {self._proc.returncode} while starting\n"
                    f"{self._log_tail()}"
                )
            described = await self._client.workflow_service.describe_task_queue(request)
            if described.pollers:
                return
            await asyncio.sleep(0.2)
        raise WorkerProcessError(
            f"the worker did not poll {self._settings.task_queue} within "
            f"{self._startup_timeout:.0f} s\n{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        text = self._log_file.read_bytes()[-_LOG_TAIL_CHARS:].decode(errors="replace")
        return f"--- worker output ({self._log_file}) ---\n{text}"
